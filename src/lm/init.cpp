// A Llama config from a few sizes, and fresh weights for it.
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "mlxterp/error.hpp"
#include "mlxterp/train_lm.hpp"
#include "models/llama.hpp"

namespace mlxterp::lm {

ModelConfig make_llama_config(const LlamaSize& s, int32_t bos_id, int32_t eos_id) {
  auto positive = [](const char* opt, int64_t v) {
    MLXTERP_CHECK(v > 0, opt, ": must be > 0, got ", v);
  };
  positive("--d-model", s.d_model);
  positive("--n-layers", s.n_layers);
  positive("--n-heads", s.n_heads);
  positive("--context", s.n_ctx);
  MLXTERP_CHECK(s.d_vocab > 1, "vocabulary size: must be > 1, got ", s.d_vocab,
                " (give --tokenizer, or --vocab-size with --data-ids)");
  MLXTERP_CHECK(s.n_kv_heads >= 0, "--n-kv-heads: must be >= 0 (0 = n_heads), got ", s.n_kv_heads);
  MLXTERP_CHECK(s.d_mlp >= 0, "--d-mlp: must be >= 0 (0 = 8/3 d_model rounded up to 64), got ", s.d_mlp);
  MLXTERP_CHECK(s.d_model % s.n_heads == 0, "--d-model: d_model (", s.d_model, ") must be a multiple of n_heads (",
                s.n_heads, ")");
  const int64_t d_head = s.d_model / s.n_heads;
  MLXTERP_CHECK(d_head % 2 == 0, "--n-heads: head dimension d_model / n_heads = ", d_head,
                " must be even for rotary embeddings");
  const int64_t kv = s.n_kv_heads == 0 ? s.n_heads : s.n_kv_heads;
  MLXTERP_CHECK(s.n_heads % kv == 0, "--n-kv-heads: n_heads (", s.n_heads, ") must be a multiple of n_kv_heads (", kv,
                ")");
  const int64_t d_mlp = s.d_mlp > 0 ? s.d_mlp : (8 * s.d_model / 3 + 63) / 64 * 64;
  MLXTERP_CHECK(s.rope_theta > 0, "--rope-theta: must be > 0, got ", s.rope_theta);
  MLXTERP_CHECK(s.norm_eps > 0, "norm_eps: must be > 0, got ", s.norm_eps);
  MLXTERP_CHECK(bos_id < s.d_vocab && eos_id < s.d_vocab, "special token ids (bos ", bos_id, ", eos ", eos_id,
                ") must be below the vocabulary size ", s.d_vocab);
  // Built as the config.json we will write and parsed by the same code that reads it back, so a saved
  // model reloads with exactly this configuration.
  nlohmann::json j = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", s.d_model},
      {"intermediate_size", d_mlp},
      {"num_hidden_layers", s.n_layers},
      {"num_attention_heads", s.n_heads},
      {"num_key_value_heads", kv},
      {"head_dim", d_head},
      {"max_position_embeddings", s.n_ctx},
      {"vocab_size", s.d_vocab},
      {"rms_norm_eps", s.norm_eps},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", s.tie_embeddings},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"mlp_bias", false},
      {"rope_theta", s.rope_theta},
      {"initializer_range", 0.02},
      {"use_cache", true},
  };
  if (bos_id >= 0) j["bos_token_id"] = bos_id;
  if (eos_id >= 0) j["eos_token_id"] = eos_id;
  return parse_hf_config(j, "train-lm");
}

// splitmix64: a well-mixed 64-bit hash, used to derive independent seeds.
static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static uint64_t name_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ULL;
  return mix(seed ^ mix(h));
}

TensorMap init_llama_weights(const ModelConfig& c, uint64_t seed, double init_std) {
  MLXTERP_CHECK(init_std > 0, "--init-std: must be > 0, got ", init_std);
  // Names and shapes from the architecture itself, so init and create_model can never disagree.
  const LlamaModel shape_source(c, TensorMap{});
  const double resid_std = init_std / std::sqrt(2.0 * double(c.n_layers));
  TensorMap w;
  for (const auto& [name, shape] : shape_source.expected_weights()) {
    if (ends_with(name, "norm.weight")) {  // input_layernorm, post_attention_layernorm, model.norm, q/k_norm
      w[name] = at::ones(shape, at::kFloat);
      continue;
    }
    if (ends_with(name, ".bias")) {
      w[name] = at::zeros(shape, at::kFloat);
      continue;
    }
    const bool writes_residual = ends_with(name, "o_proj.weight") || ends_with(name, "down_proj.weight");
    // One generator per tensor, seeded by (seed, name): the init does not depend on iteration order.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(name_seed(seed, name));
    w[name] = at::normal(0.0, writes_residual ? resid_std : init_std, shape, gen, at::TensorOptions().dtype(at::kFloat));
  }
  return w;
}

int64_t count_parameters(const ModelConfig& c) {
  const LlamaModel shape_source(c, TensorMap{});
  int64_t n = 0;
  for (const auto& [name, shape] : shape_source.expected_weights()) {
    int64_t k = 1;
    for (int64_t d : shape) k *= d;
    n += k;
  }
  return n;
}

}  // namespace mlxterp::lm
