// GGUF model files -> ModelConfig + HF-named weights.
//
// Each supported llama.cpp architecture is one GGUFArch entry (kArchs below): its `general.architecture`
// name, our registry key, the tensor-name tables mapping `blk.{i}.attn_q.weight` and friends onto
// Hugging Face names, and the few flags that differ (Q/K permutation, q/k norms). Hyper-parameters come
// from the `{arch}.` metadata keys. To add an architecture, add its name table and one kArchs line (and,
// if it needs metadata the common reader does not know, an `extra` function).
//
// llama.cpp stores the Q/K rows of llama-style models permuted for its interleaved ("NORM") RoPE; we undo
// that so the weights are exactly HF's. Llama-3.1-style RoPE scaling arrives as a `rope_freqs.weight`
// tensor of per-frequency divisors (RopeParams::freq_factors).
#include "io/gguf_arch.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/model.hpp"

namespace mlxterp {

namespace {

struct NameRule {
  const char* gguf;  // GGUF name; in block tables, the suffix after "blk.{i}."
  const char* hf;    // HF name; in block tables, the suffix after "model.layers.{i}."
};

// Tensors outside the blocks, shared by the llama family.
constexpr NameRule kLlamaGlobalRules[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

// The llama-family block tensors (llama, mistral, qwen2, qwen3).
constexpr NameRule kLlamaBlockRules[] = {
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

template <size_t N>
constexpr std::pair<const NameRule*, size_t> rules(const NameRule (&r)[N]) {
  return {r, N};
}

struct GGUFArch {
  const char* gguf_arch;  // general.architecture
  const char* arch;       // our registry key (config.arch)
  std::pair<const NameRule*, size_t> global_rules, block_rules;
  bool permuted_qk;  // llama.cpp's converter permuted Q/K rows for interleaved RoPE: undo it
  bool qk_norm;      // per-head RMSNorm on q and k
  // Architecture-specific metadata beyond the common keys (nullptr if none).
  void (*extra)(const GGUFFile& g, const std::string& prefix, ModelConfig& c) = nullptr;
};

const GGUFArch kArchs[] = {
    {"llama", "llama", rules(kLlamaGlobalRules), rules(kLlamaBlockRules), true, false},
    {"mistral", "mistral", rules(kLlamaGlobalRules), rules(kLlamaBlockRules), true, false},
    {"qwen2", "qwen2", rules(kLlamaGlobalRules), rules(kLlamaBlockRules), false, false},
    {"qwen3", "qwen3", rules(kLlamaGlobalRules), rules(kLlamaBlockRules), false, true},
};

const GGUFArch* find_arch(const std::string& name) {
  for (const auto& a : kArchs)
    if (name == a.gguf_arch) return &a;
  return nullptr;
}

// Inverse of llama.cpp's convert permutation on the first n_rot rows of each head: rows grouped as
// [pair][2] (interleaved RoPE pairs) -> [2][pair] (HF rotate_half halves). Rows past n_rot are not rotated.
at::Tensor unpermute_qk(const at::Tensor& w, int64_t n_heads, int64_t n_rot) {
  const int64_t rows = w.size(0), d_head = rows / n_heads;
  std::vector<int64_t> tail(w.sizes().begin() + 1, w.sizes().end());
  auto shape = [&](std::initializer_list<int64_t> head) {
    std::vector<int64_t> s(head);
    s.insert(s.end(), tail.begin(), tail.end());
    return s;
  };
  at::Tensor h = w.reshape(shape({n_heads, d_head}));
  at::Tensor rot = h.narrow(1, 0, n_rot).reshape(shape({n_heads, n_rot / 2, 2})).transpose(1, 2).reshape(shape({n_heads, n_rot}));
  if (n_rot < d_head) rot = at::cat({rot, h.narrow(1, n_rot, d_head - n_rot)}, 1);
  return rot.reshape(w.sizes()).contiguous();
}

std::string supported_list() {
  std::string s;
  for (const auto& a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a.gguf_arch);
  return s + ", gemma, gemma2, gemma3, phi3, gpt2, gptneox, olmo2, qwen2moe, qwen3moe, olmoe, phi2, stablelm, starcoder2, gptj, bloom, starcoder, falcon, granite, command-r, olmo, mpt";
}

// A required integer hyper-parameter, with an error that names the key and the architecture.
int64_t need_int(const GGUFFile& g, const std::string& key, const std::string& arch) {
  MLXTERP_CHECK(g.has(key), g.path(), ": metadata key '", key, "' is missing; expected it in a ", arch,
                " model GGUF (a partial or hand-edited file?)");
  return g.get_int(key);
}

}  // namespace

ModelFiles read_gguf_model(const std::string& path) {
  GGUFFile g = GGUFFile::open(path);
  MLXTERP_CHECK(g.has("general.architecture"), path, ": no general.architecture metadata; expected a model GGUF "
                                                     "(vocabulary-only GGUFs can be used with --tokenizer)");
  const std::string gguf_arch = g.get_string("general.architecture");
  if (gguf_family_handles(g, gguf_arch)) return read_gguf_family_model(g, gguf_arch, path);  // src/io/gguf_arch.cpp
  const GGUFArch* spec = find_arch(gguf_arch);
  MLXTERP_CHECK(spec, path, ": unsupported GGUF architecture; expected one of ", supported_list(), ", got '", gguf_arch,
                "'");
  MLXTERP_CHECK(!g.tensor_infos().empty(), path,
                ": holds no tensors; expected model weights (a vocabulary-only GGUF? use it with --tokenizer)");
  const std::string p = gguf_arch + ".";
  ModelFiles out;
  ModelConfig& c = out.config;
  c.arch = spec->arch;
  c.model_type = c.arch;
  c.d_model = need_int(g, p + "embedding_length", gguf_arch);
  c.n_layers = need_int(g, p + "block_count", gguf_arch);
  // Every block has tensors: a block_count beyond the tensor count is corrupt (and must not drive a long loop).
  MLXTERP_CHECK(c.n_layers > 0 && c.n_layers <= int64_t(g.tensor_infos().size()), path, ": ", p,
                "block_count is out of range; expected 1 .. ", g.tensor_infos().size(), " (the number of tensors), got ",
                c.n_layers);
  c.n_heads = need_int(g, p + "attention.head_count", gguf_arch);
  c.n_kv_heads = g.get_int(p + "attention.head_count_kv", c.n_heads);
  MLXTERP_CHECK(c.n_heads > 0, path, ": ", p, "attention.head_count must be > 0; expected a positive count, got ",
                c.n_heads);
  c.d_head = g.get_int(p + "attention.key_length", c.d_model / c.n_heads);
  const int64_t v_len = g.get_int(p + "attention.value_length", c.d_head);
  MLXTERP_CHECK(v_len == c.d_head, path, ": ", p, "attention.value_length differs from key_length; expected ", c.d_head,
                ", got ", v_len, " (models with distinct value heads are not supported)");
  c.d_mlp = need_int(g, p + "feed_forward_length", gguf_arch);
  c.n_ctx = g.get_int(p + "context_length", 2048);
  c.norm_eps = g.get_float(p + "attention.layer_norm_rms_epsilon", 1e-5);
  c.hidden_act = "silu";

  RopeParams rope;
  rope.theta = g.get_float(p + "rope.freq_base", 10000.0);
  const int64_t n_rot = g.get_int(p + "rope.dimension_count", c.d_head);
  MLXTERP_CHECK(n_rot > 0 && n_rot <= c.d_head && n_rot % 2 == 0, path, ": ", p,
                "rope.dimension_count must be an even number of rotated dimensions; expected 2 .. ", c.d_head,
                " (the head size), got ", n_rot);
  if (n_rot != c.d_head) {
    // Partial rotary: make_rope computes int(d_head * factor); nudge the factor so that it lands on n_rot.
    rope.partial_rotary_factor = double(n_rot) / double(c.d_head);
    while (int64_t(c.d_head * rope.partial_rotary_factor) < n_rot)
      rope.partial_rotary_factor = std::nextafter(rope.partial_rotary_factor, 2.0);
  }
  if (g.has(p + "rope.scaling.type")) {
    std::string st = g.get_string(p + "rope.scaling.type");
    if (st == "linear" || st == "yarn") {
      rope.type = st;
      rope.factor = g.get_float(p + "rope.scaling.factor", 1.0);
      rope.original_max_position_embeddings = g.get_int(p + "rope.scaling.original_context_length", 0);
    } else {
      MLXTERP_CHECK(st == "none", path, ": unsupported ", p, "rope.scaling.type; expected none, linear or yarn, got '",
                    st, "'");
    }
  }
  std::set<std::string> used;
  if (g.tensor_info("rope_freqs.weight")) {
    at::Tensor ff = g.tensor("rope_freqs.weight").to(at::kDouble).contiguous();
    MLXTERP_CHECK(ff.dim() == 1 && ff.numel() == n_rot / 2, path,
                  ": rope_freqs.weight has the wrong size; expected one factor per rotated frequency (", n_rot / 2,
                  "), got shape ", shape_str(ff.sizes()));
    rope.freq_factors.assign(ff.data_ptr<double>(), ff.data_ptr<double>() + ff.numel());
    for (double f : rope.freq_factors)
      MLXTERP_CHECK(std::isfinite(f) && f > 0, path, ": rope_freqs.weight must hold positive factors; got ", f);
    used.insert("rope_freqs.weight");
  }
  c.rope["default"] = rope;
  if (g.has(p + "attention.sliding_window")) c.sliding_window = g.get_int(p + "attention.sliding_window");
  c.layer_types.assign(size_t(c.n_layers), c.sliding_window ? "sliding_attention" : "full_attention");
  c.qk_norm = spec->qk_norm;
  c.bos_token_id = g.get_int("tokenizer.ggml.bos_token_id", -1);
  c.eos_token_id = g.get_int("tokenizer.ggml.eos_token_id", -1);
  c.raw = nlohmann::json{{"model_type", c.model_type}, {"source", "gguf"}};
  if (spec->extra) spec->extra(g, p, c);
  const GGUFTensorInfo* embd = g.tensor_info("token_embd.weight");
  MLXTERP_CHECK(embd, path, ": missing tensor 'token_embd.weight'; expected the token embedding in every model GGUF");
  c.d_vocab = embd->shape[0];
  c.validate(path);

  // Weights, by the name tables.
  auto take = [&](const std::string& gname, const std::string& hf) {
    out.weights[hf] = g.tensor(gname);
    used.insert(gname);
  };
  for (size_t k = 0; k < spec->global_rules.second; ++k) {
    const NameRule& r = spec->global_rules.first[k];
    if (g.tensor_info(r.gguf)) take(r.gguf, r.hf);
  }
  c.tie_word_embeddings = true;
  if (out.weights.count("lm_head.weight")) {
    // Converters that always write output.weight: a bit-identical copy of the embedding is a tied head.
    const at::Tensor& emb = out.weights["model.embed_tokens.weight"];
    const at::Tensor& head = out.weights["lm_head.weight"];
    if (head.sizes() == emb.sizes() && head.scalar_type() == emb.scalar_type() && at::equal(head, emb))
      out.weights.erase("lm_head.weight");
    else
      c.tie_word_embeddings = false;
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string gb = "blk." + std::to_string(i) + ".";
    const std::string hb = "model.layers." + std::to_string(i) + ".";
    for (size_t k = 0; k < spec->block_rules.second; ++k) {
      const NameRule& r = spec->block_rules.first[k];
      if (g.tensor_info(gb + r.gguf)) take(gb + r.gguf, hb + r.hf);
    }
    if (spec->permuted_qk) {
      auto q = out.weights.find(hb + "self_attn.q_proj.weight");
      auto k = out.weights.find(hb + "self_attn.k_proj.weight");
      MLXTERP_CHECK(q != out.weights.end() && k != out.weights.end(), path, ": block ", i,
                    " is incomplete; expected tensors '", gb, "attn_q.weight' and '", gb, "attn_k.weight'");
      MLXTERP_CHECK(q->second.size(0) == c.n_heads * c.d_head && k->second.size(0) == c.n_kv_heads * c.d_head, path,
                    ": block ", i, " attention has the wrong size; expected attn_q/attn_k with ", c.n_heads * c.d_head,
                    "/", c.n_kv_heads * c.d_head, " rows (head_count x key_length), got ", q->second.size(0), "/",
                    k->second.size(0));
      q->second = unpermute_qk(q->second, c.n_heads, n_rot);
      k->second = unpermute_qk(k->second, c.n_kv_heads, n_rot);
    }
    if (out.weights.count(hb + "self_attn.q_proj.bias")) c.attention_bias = true;
  }
  for (const auto& t : g.tensor_infos()) {
    MLXTERP_CHECK(used.count(t.name), path, ": unexpected tensor '", t.name, "'; expected only the tensors of a ",
                  gguf_arch, " model with ", c.n_layers, " blocks (a newer GGUF layout, or a block_count that "
                  "disagrees with the weights?)");
  }
  out.tokenizer_path = path;  // the vocabulary lives in the metadata
  return out;
}

}  // namespace mlxterp
