// GGUF model files -> ModelConfig + HF-named weights. Each llama.cpp architecture has a metadata
// prefix ("llama.", "qwen2.", ...) and a tensor-name table mapping `blk.{i}.attn_q.weight` and friends
// onto Hugging Face names. llama.cpp stores the Q/K rows of llama-style models permuted for its
// interleaved RoPE; we undo that so the weights are exactly HF's.
#include "io/gguf_arch.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/model.hpp"

namespace mlxterp {

namespace {

// Inverse of llama.cpp's convert permutation: rows grouped as [head][pair][2] -> [head][2][pair].
at::Tensor unpermute_qk(const at::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0);
  std::vector<int64_t> shape = {n_heads, rows / n_heads / 2, 2};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

struct NameRule {
  const char* gguf;  // suffix after "blk.{i}."
  const char* hf;    // suffix after "model.layers.{i}."
};

// The llama-family block tensors (llama, mistral-as-llama, qwen2, qwen3).
constexpr NameRule kLlamaRules[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.bias", "self_attn.o_proj.bias"},
    {"attn_q_norm.weight", "self_attn.q_norm.weight"},
    {"attn_k_norm.weight", "self_attn.k_norm.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

}  // namespace

ModelFiles read_gguf_model(const std::string& path) {
  GGUFFile g = GGUFFile::open(path);
  MLXTERP_CHECK(g.has("general.architecture"), path, ": no general.architecture metadata; expected a model GGUF "
                                                     "(vocabulary-only GGUFs can be used with --tokenizer)");
  const std::string arch = g.get_string("general.architecture");
  if (gguf_family_handles(g, arch)) return read_gguf_family_model(g, arch, path);  // src/io/gguf_arch.cpp
  static const char* supported[] = {"llama", "mistral", "qwen2", "qwen3"};
  bool ok = false;
  for (const char* a : supported) ok |= arch == a;
  MLXTERP_CHECK(ok, path, ": GGUF architecture '", arch, "' is not supported yet; expected one of llama, mistral, "
                          "qwen2, qwen3, gemma, gemma2, gemma3, phi3, gpt2, gptneox, olmo2, qwen2moe, qwen3moe, olmoe");
  MLXTERP_CHECK(!g.tensor_infos().empty(), path, ": holds no tensors (a vocabulary-only GGUF? use it with --tokenizer)");
  const std::string p = arch + ".";
  ModelFiles out;
  ModelConfig& c = out.config;
  c.arch = arch == "mistral" ? "mistral" : arch;
  c.model_type = c.arch;
  c.d_model = g.get_int(p + "embedding_length");
  c.n_layers = g.get_int(p + "block_count");
  c.n_heads = g.get_int(p + "attention.head_count");
  c.n_kv_heads = g.get_int(p + "attention.head_count_kv", c.n_heads);
  c.d_head = g.get_int(p + "attention.key_length", c.n_heads > 0 ? c.d_model / c.n_heads : 0);
  c.d_mlp = g.get_int(p + "feed_forward_length");
  c.n_ctx = g.get_int(p + "context_length", 2048);
  c.norm_eps = g.get_float(p + "attention.layer_norm_rms_epsilon", 1e-5);
  c.hidden_act = "silu";
  RopeParams rope;
  rope.theta = g.get_float(p + "rope.freq_base", 10000.0);
  if (g.has(p + "rope.scaling.type")) {
    std::string st = g.get_string(p + "rope.scaling.type");
    if (st == "linear" || st == "yarn") {
      rope.type = st;
      rope.factor = g.get_float(p + "rope.scaling.factor", 1.0);
      rope.original_max_position_embeddings = g.get_int(p + "rope.scaling.original_context_length", 0);
    } else {
      MLXTERP_CHECK(st == "none", path, ": unsupported rope.scaling.type '", st, "'; expected none, linear or yarn");
    }
  }
  c.rope["default"] = rope;
  if (g.has(p + "attention.sliding_window")) c.sliding_window = g.get_int(p + "attention.sliding_window");
  c.layer_types.assign(c.n_layers, c.sliding_window ? "sliding_attention" : "full_attention");
  c.qk_norm = arch == "qwen3";
  c.bos_token_id = g.get_int("tokenizer.ggml.bos_token_id", -1);
  c.eos_token_id = g.get_int("tokenizer.ggml.eos_token_id", -1);
  c.raw = nlohmann::json{{"model_type", c.model_type}, {"source", "gguf"}};

  // Weights.
  const bool permuted = arch == "llama" || arch == "mistral";
  std::map<std::string, const GGUFTensorInfo*> infos;
  for (const auto& t : g.tensor_infos()) infos[t.name] = &t;
  std::set<std::string> used;
  auto take = [&](const std::string& gname, const std::string& hf) {
    out.weights[hf] = g.tensor(gname);
    used.insert(gname);
  };
  MLXTERP_CHECK(infos.count("token_embd.weight"), path, ": missing tensor 'token_embd.weight'");
  take("token_embd.weight", "model.embed_tokens.weight");
  c.d_vocab = out.weights["model.embed_tokens.weight"].size(0);
  if (infos.count("output_norm.weight")) take("output_norm.weight", "model.norm.weight");
  c.tie_word_embeddings = true;
  if (infos.count("output.weight")) {
    at::Tensor head = g.tensor("output.weight");
    used.insert("output.weight");
    // Converters that always write output.weight: a bit-identical copy of the embedding is a tied head.
    const at::Tensor& emb = out.weights["model.embed_tokens.weight"];
    if (!(head.sizes() == emb.sizes() && head.scalar_type() == emb.scalar_type() && at::equal(head, emb))) {
      out.weights["lm_head.weight"] = head;
      c.tie_word_embeddings = false;
    }
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string gb = "blk." + std::to_string(i) + ".";
    const std::string hb = "model.layers." + std::to_string(i) + ".";
    for (const auto& r : kLlamaRules) {
      std::string gname = gb + r.gguf;
      if (!infos.count(gname)) continue;
      take(gname, hb + r.hf);
    }
    if (permuted) {
      auto& q = out.weights[hb + "self_attn.q_proj.weight"];
      auto& k = out.weights[hb + "self_attn.k_proj.weight"];
      MLXTERP_CHECK(q.defined() && k.defined(), path, ": block ", i, " is missing attn_q/attn_k");
      q = unpermute_qk(q, c.n_heads);
      k = unpermute_qk(k, c.n_kv_heads);
    }
    if (out.weights.count(hb + "self_attn.q_proj.bias")) c.attention_bias = true;
  }
  for (const auto& t : g.tensor_infos()) {
    if (t.name == "rope_freqs.weight") {
      MLXTERP_FAIL(path, ": llama3-style 'rope_freqs.weight' frequency factors are not supported yet");
    }
    MLXTERP_CHECK(used.count(t.name), path, ": unexpected tensor '", t.name, "' for architecture ", arch,
                  " (a newer GGUF layout?)");
  }
  c.validate(path);
  out.tokenizer_path = path;  // the vocabulary lives in the metadata
  return out;
}

}  // namespace mlxterp
