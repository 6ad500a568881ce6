// mlxterp/config.hpp — a model's hyper-parameters, read from HF config.json (transformers 4.x and 5.x
// forms) or from GGUF / llama2.c headers.
//
//   auto cfg = mlxterp::parse_hf_config(nlohmann::json::parse(read_file("config.json")), "config.json");
//   cfg.arch == "llama"; cfg.d_model == 64; cfg.rope_for_layer(0).theta == 10000.0
//
// Names follow TransformerLens/SAELens: d_model, d_head, d_mlp, d_vocab, n_layers, n_heads, n_kv_heads, n_ctx.
// Architecture-specific extras stay in `raw` (the original JSON) and are read by that architecture's file.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace mlxterp {

// Rotary embedding parameters for one kind of layer.
struct RopeParams {
  std::string type = "default";  // default | linear | dynamic | llama3 | yarn | longrope
  double theta = 10000.0;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0, beta_slow = 1.0;
  std::optional<double> attention_factor;
  bool truncate = true;                          // round the correction range to whole dimensions (gpt-oss: false)
  std::optional<double> mscale, mscale_all_dim;  // DeepSeek's attention-factor terms
  // HunYuan's NTK-alpha ("dynamic" with `alpha`): the base is theta * alpha^(rot_dim / (rot_dim - 2)) at every
  // length; past max_position_embeddings the usual dynamic rule (from theta) takes over, as in HF. Only
  // hunyuan_v1_dense reads it (HF ignores `alpha` elsewhere).
  std::optional<double> alpha;
  // longrope (Phi-3)
  std::vector<double> short_factor, long_factor;
  double partial_rotary_factor = 1.0;  // fraction of d_head that is rotated (GPT-NeoX, Phi)
  // Per-frequency divisors applied after the type's own scaling: inv_freq[i] /= freq_factors[i]
  // (rot_dim / 2 entries; empty = none). llama.cpp stores Llama-3.1 scaling this way (`rope_freqs.weight`).
  std::vector<double> freq_factors;
};

struct ModelConfig {
  std::string arch;        // registry key: llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, gpt2, gpt_neox, ...
  std::string model_type;  // as written in config.json
  int64_t d_model = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, d_head = 0, d_mlp = 0, d_vocab = 0;
  int64_t n_ctx = 2048;  // max_position_embeddings
  double norm_eps = 1e-5;
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and for some archs o) projection bias
  bool mlp_bias = false;
  bool qk_norm = false;         // per-head RMSNorm on q and k (Qwen3, OLMo2 uses full-width)
  std::optional<int64_t> sliding_window;  // tokens a query may look back (Mistral, Gemma 2/3, Qwen2 opt.)
  // Per-layer attention kind: "full_attention" or "sliding_attention" (size n_layers once resolved).
  std::vector<std::string> layer_types;
  // Rotary parameters keyed by layer type ("full_attention", "sliding_attention"); "default" applies to all.
  std::map<std::string, RopeParams> rope;
  int64_t bos_token_id = -1, eos_token_id = -1, pad_token_id = -1;
  std::string torch_dtype;  // as written (informational)
  nlohmann::json raw;       // the original config (architecture extras)

  // The RoPE parameters for layer i (by its layer type, falling back to "default").
  const RopeParams& rope_for_layer(int64_t i) const;
  bool is_sliding(int64_t i) const;
  // Throws mlxterp::Error if fields are inconsistent (d_model % n_heads without head_dim, n_heads % n_kv_heads...).
  void validate(const std::string& where) const;
  // The config as HF transformers would write it (5.x layout: rope_parameters).
  nlohmann::json to_hf_json() const;
};

// Parses a Hugging Face config.json (either generation). `where` names the file in error messages.
ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& where);

// Parses the RoPE block of a config: `rope_parameters` (5.x) or `rope_theta` + `rope_scaling` (4.x).
std::map<std::string, RopeParams> parse_rope(const nlohmann::json& j, const std::string& where);

// Typed optional getters on JSON objects with clear errors ("<where>: 'key' must be an integer, got \"x\"").
int64_t json_int(const nlohmann::json& j, const char* key, int64_t fallback, const std::string& where);
double json_float(const nlohmann::json& j, const char* key, double fallback, const std::string& where);
bool json_bool(const nlohmann::json& j, const char* key, bool fallback, const std::string& where);
std::string json_string(const nlohmann::json& j, const char* key, const std::string& fallback,
                        const std::string& where);

}  // namespace mlxterp
