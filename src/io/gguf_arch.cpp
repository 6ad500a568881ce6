// GGUF -> HF config + HF-named weights for the non-Llama families (see gguf_arch.hpp). Tensor and
// metadata names are llama.cpp's (gguf-py constants / llama-arch.cpp); where llama.cpp hard-codes a value
// rather than storing it (Gemma 2/3 attention scale, Gemma 3 local RoPE base and layer pattern,
// Qwen-MoE/OLMoE top-k renormalisation) we use its rule unless the file carries the newer key
// (`attention.scale`, `rope.freq_base_swa`, `attention.sliding_window_pattern`, `expert_weights_norm`).
#include "io/gguf_arch.hpp"

#include <cmath>
#include <functional>
#include <set>

#include "mlxterp/config.hpp"
#include "mlxterp/error.hpp"

namespace mlxterp {

namespace {

using nlohmann::json;

const char* model_type_for(const std::string& arch) {
  if (arch == "gemma") return "gemma";
  if (arch == "gemma2") return "gemma2";
  if (arch == "gemma3") return "gemma3_text";
  if (arch == "phi3") return "phi3";
  if (arch == "gpt2") return "gpt2";
  if (arch == "gptneox") return "gpt_neox";
  if (arch == "olmo2") return "olmo2";
  if (arch == "phi2") return "phi";
  if (arch == "stablelm") return "stablelm";
  if (arch == "starcoder2") return "starcoder2";
  if (arch == "gptj") return "gptj";
  if (arch == "bloom") return "bloom";
  if (arch == "starcoder") return "gpt_bigcode";
  if (arch == "falcon") return "falcon";
  if (arch == "granite") return "granite";
  if (arch == "command-r") return "cohere";
  if (arch == "olmo") return "olmo";
  if (arch == "mpt") return "mpt";
  if (arch == "qwen2moe") return "qwen2_moe";
  if (arch == "qwen3moe") return "qwen3_moe";
  if (arch == "olmoe") return "olmoe";
  if (arch == "llama") return "mixtral";  // only with experts (see gguf_family_handles)
  return nullptr;
}

// Inverse of llama.cpp's Q/K permutation for its interleaved RoPE: rows [head][pair][2] -> [head][2][pair].
at::Tensor unpermute_qk(const at::Tensor& w, int64_t n_heads) {
  std::vector<int64_t> shape = {n_heads, w.size(0) / n_heads / 2, 2};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

// Inverse of llama.cpp's Falcon converter for grouped k/v heads: [q (all heads) | k (K) | v (K)] rows ->
// per key/value group [q x (H/K) | k | v] (HF's new_decoder_architecture layout).
at::Tensor falcon_regroup(const at::Tensor& w, int64_t n_heads, int64_t n_kv) {
  const int64_t hd = w.size(0) / (n_heads + 2 * n_kv);
  std::vector<int64_t> tail;
  for (int64_t d = 1; d < w.dim(); ++d) tail.push_back(w.size(d));
  auto view = [&](const at::Tensor& t, int64_t per) {
    std::vector<int64_t> shape = {n_kv, per, hd};
    shape.insert(shape.end(), tail.begin(), tail.end());
    return t.reshape(shape);
  };
  at::Tensor q = view(w.narrow(0, 0, n_heads * hd), n_heads / n_kv);
  at::Tensor k = view(w.narrow(0, n_heads * hd, n_kv * hd), 1);
  at::Tensor v = view(w.narrow(0, (n_heads + n_kv) * hd, n_kv * hd), 1);
  return at::cat({q, k, v}, 1).reshape(w.sizes()).contiguous();
}

// Inverse of the GPT-NeoX converter: [q (all heads) | k | v] -> per head [q | k | v].
at::Tensor neox_regroup(const at::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), hd = rows / 3 / n_heads;
  std::vector<int64_t> shape = {3, n_heads, hd};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(0, 1).reshape(w.sizes()).contiguous();
}

struct Loader {
  const GGUFFile& g;
  std::string arch, p, path;
  std::map<std::string, const GGUFTensorInfo*> infos;
  std::set<std::string> used;
  TensorMap weights;

  bool has(const std::string& name) const { return infos.count(name) != 0; }
  at::Tensor take(const std::string& name) {
    used.insert(name);
    return g.tensor(name);
  }
  // Moves `gname` to `hf` (through `fn`) if present.
  bool move(const std::string& gname, const std::string& hf,
            const std::function<at::Tensor(at::Tensor)>& fn = nullptr) {
    if (!has(gname)) return false;
    at::Tensor t = take(gname);
    weights[hf] = fn ? fn(t) : t;
    return true;
  }
  void require(const std::string& gname) const {
    MLXTERP_CHECK(has(gname), path, ": missing tensor '", gname, "' for architecture ", arch);
  }
  int64_t i(const std::string& key, int64_t fb) const { return g.get_int(p + key, fb); }
  double f(const std::string& key, double fb) const { return g.get_float(p + key, fb); }
};

std::string subst(std::string s, int64_t i) {
  auto at = s.find("{i}");
  if (at != std::string::npos) s.replace(at, 3, std::to_string(i));
  return s;
}

// Sliding-window layer pattern: a bool/int array per layer (true = sliding), or an int period n
// (layer i slides unless i % n == n - 1, llama.cpp's set_swa_pattern); otherwise `fallback_period`.
std::vector<std::string> layer_types_from(const Loader& L, int64_t n_layers, int64_t fallback_period) {
  std::vector<bool> sliding(n_layers);
  const std::string key = L.p + "attention.sliding_window_pattern";
  int64_t period = fallback_period;
  bool explicit_list = false;
  if (L.g.has(key)) {
    const GGUFValue& v = L.g.metadata().at(key);
    if (v.is_array()) {
      const auto& arr = *std::get<std::shared_ptr<GGUFValue::Array>>(v.v);
      MLXTERP_CHECK(int64_t(arr.size()) == n_layers, L.path, ": '", key, "' has ", arr.size(),
                    " entries; expected one per layer (", n_layers, ")");
      for (int64_t j = 0; j < n_layers; ++j) {
        const GGUFValue& e = arr[j];
        if (auto b = std::get_if<bool>(&e.v)) sliding[j] = *b;
        else if (auto u = std::get_if<uint64_t>(&e.v)) sliding[j] = *u != 0;
        else if (auto s = std::get_if<int64_t>(&e.v)) sliding[j] = *s != 0;
        else MLXTERP_FAIL(L.path, ": '", key, "' must hold bools or integers");
      }
      explicit_list = true;
    } else {
      period = L.g.get_int(key);
    }
  }
  if (!explicit_list)
    for (int64_t j = 0; j < n_layers; ++j) sliding[j] = period > 0 && (j % period < period - 1);
  std::vector<std::string> out;
  for (bool s : sliding) out.push_back(s ? "sliding_attention" : "full_attention");
  return out;
}

// Stacked experts [E, rows, cols] (or per-expert legacy tensors blk.i.ffn_x.{e}.weight) -> per-expert HF names.
void move_experts(Loader& L, int64_t blk, int64_t n_experts, const std::string& gguf_part, const std::string& hf_tmpl) {
  const std::string b = "blk." + std::to_string(blk) + ".";
  const std::string stacked = b + gguf_part + "_exps.weight";
  if (L.has(stacked)) {
    at::Tensor t = L.take(stacked);
    MLXTERP_CHECK(t.dim() == 3 && t.size(0) == n_experts, L.path, ": tensor '", stacked, "' has shape ",
                  shape_str(t.sizes()), "; expected [", n_experts, ", rows, cols] (expert_count = ", n_experts, ")");
    for (int64_t e = 0; e < n_experts; ++e) {
      std::string hf = hf_tmpl;
      hf.replace(hf.find("{e}"), 3, std::to_string(e));
      L.weights[hf] = t.select(0, e);
    }
    return;
  }
  for (int64_t e = 0; e < n_experts; ++e) {
    std::string hf = hf_tmpl;
    hf.replace(hf.find("{e}"), 3, std::to_string(e));
    const std::string legacy = b + gguf_part + "." + std::to_string(e) + ".weight";
    MLXTERP_CHECK(L.has(legacy), L.path, ": missing tensor '", stacked, "' (or the older per-expert '", legacy,
                  "') for architecture ", L.arch);
    L.move(legacy, hf);
  }
}

}  // namespace

bool gguf_family_handles(const GGUFFile& g, const std::string& arch) {
  if (arch == "llama") return g.get_int("llama.expert_count", 0) > 0;
  return model_type_for(arch) != nullptr;
}

ModelFiles read_gguf_family_model(const GGUFFile& g, const std::string& arch, const std::string& path) {
  Loader L{g, arch, arch + ".", path, {}, {}, {}};
  for (const auto& t : g.tensor_infos()) L.infos[t.name] = &t;
  MLXTERP_CHECK(!L.infos.empty(), path, ": holds no tensors (a vocabulary-only GGUF? use it with --tokenizer)");
  const std::string model_type = model_type_for(arch);
  const bool gemma = arch == "gemma" || arch == "gemma2" || arch == "gemma3";
  const bool moe = arch == "qwen2moe" || arch == "qwen3moe" || arch == "olmoe" || arch == "llama";
  // LayerNorm families whose blocks keep biased norms (phi2, stablelm, starcoder2, gptj: see below).
  const bool ln_family = arch == "phi2" || arch == "stablelm" || arch == "starcoder2" || arch == "gptj";
  const bool layer_norm = arch == "gpt2" || arch == "gptneox" || arch == "bloom" || arch == "starcoder" ||
                          arch == "falcon" || arch == "command-r" || arch == "olmo" || arch == "mpt" || ln_family;

  // ---- config (as the HF config.json would say it) ----
  json c = json::object();
  c["model_type"] = model_type;
  c["source"] = "gguf";
  const int64_t d = g.get_int(L.p + "embedding_length"), n_layers = g.get_int(L.p + "block_count");
  const int64_t n_heads = g.get_int(L.p + "attention.head_count");
  c["hidden_size"] = d;
  c["num_hidden_layers"] = n_layers;
  c["num_attention_heads"] = n_heads;
  c["num_key_value_heads"] = L.i("attention.head_count_kv", n_heads);
  const int64_t head_dim = L.i("attention.key_length", n_heads > 0 ? d / n_heads : 0);
  c["head_dim"] = head_dim;
  if (g.has(L.p + "feed_forward_length")) c["intermediate_size"] = L.i("feed_forward_length", 0);
  c["max_position_embeddings"] = L.i("context_length", 2048);
  if (layer_norm) c["layer_norm_eps"] = L.f("attention.layer_norm_epsilon", 1e-5);
  else c["rms_norm_eps"] = L.f("attention.layer_norm_rms_epsilon", 1e-6);
  c["rope_theta"] = L.f("rope.freq_base", 10000.0);
  if (g.has(L.p + "rope.scaling.type")) {
    const std::string st = g.get_string(L.p + "rope.scaling.type");
    if (st == "linear" || st == "yarn") {
      json rs = {{"rope_type", st}, {"factor", L.f("rope.scaling.factor", 1.0)}};
      if (g.has(L.p + "rope.scaling.original_context_length"))
        rs["original_max_position_embeddings"] = L.i("rope.scaling.original_context_length", 0);
      c["rope_scaling"] = rs;
    } else {
      MLXTERP_CHECK(st == "none", path, ": unsupported rope.scaling.type '", st, "'; expected none, linear or yarn");
    }
  }
  if (g.has(L.p + "rope.dimension_count") && head_dim > 0 && arch != "gptj") {
    // make_rope rotates int(head_dim * factor) dims: nudge the factor so that it lands on the stored count.
    const int64_t rot = L.i("rope.dimension_count", head_dim);
    double factor = double(rot) / double(head_dim);
    while (int64_t(double(head_dim) * factor) < rot) factor = std::nextafter(factor, 2.0);
    c["partial_rotary_factor"] = factor;
  }
  if (g.has(L.p + "attention.sliding_window")) c["sliding_window"] = L.i("attention.sliding_window", 0);
  c["bos_token_id"] = g.get_int("tokenizer.ggml.bos_token_id", -1);
  c["eos_token_id"] = g.get_int("tokenizer.ggml.eos_token_id", -1);

  if (gemma) {
    c["hidden_activation"] = "gelu_pytorch_tanh";
    if (arch != "gemma") {
      // llama.cpp: 1/sqrt(d_model/n_heads) for the 27B models (46 / 62 layers), else 1/sqrt(head_dim).
      const bool big = (arch == "gemma2" && n_layers == 46) || (arch == "gemma3" && n_layers == 62);
      double scalar = big ? double(d / n_heads) : double(head_dim);
      if (g.has(L.p + "attention.scale")) scalar = 1.0 / std::pow(L.f("attention.scale", 1.0), 2);
      c["query_pre_attn_scalar"] = scalar;
      for (const char* k : {"attn_logit_softcapping", "final_logit_softcapping"})
        if (g.has(L.p + k)) c[k] = L.f(k, 0);
      const int64_t period = arch == "gemma2" ? 2 : 6;
      if (c.contains("sliding_window")) c["layer_types"] = layer_types_from(L, n_layers, period);
      if (arch == "gemma3") {
        json full = {{"rope_type", "default"}, {"rope_theta", L.f("rope.freq_base", 1000000.0)}};
        if (c.contains("rope_scaling")) {
          for (auto& [k, v] : c["rope_scaling"].items()) full[k] = v;
          c.erase("rope_scaling");
        }
        json local = {{"rope_type", "default"}, {"rope_theta", L.f("rope.freq_base_swa", 10000.0)}};
        c["rope_parameters"] = {{"full_attention", full}, {"sliding_attention", local}};
        c.erase("rope_theta");
      }
    }
  }
  if (arch == "gpt2") {
    c["activation_function"] = "gelu_new";
    c["n_positions"] = L.i("context_length", 1024);
  }
  if (arch == "gptneox") {
    c["hidden_act"] = "gelu";
    c["use_parallel_residual"] = g.has(L.p + "use_parallel_residual") ? g.get_bool(L.p + "use_parallel_residual") : true;
    c["rotary_pct"] = c.value("partial_rotary_factor", 1.0);
  }
  if (ln_family) {
    // Each HF config names its epsilon its own way (see hf_config.cpp).
    const double eps = L.f("attention.layer_norm_epsilon", 1e-5);
    c[arch == "starcoder2" ? "norm_epsilon" : arch == "gptj" ? "layer_norm_epsilon" : "layer_norm_eps"] = eps;
    // The converters write feed_forward_length = 4 * n_embd for phi2 (and the legacy gptj script) whatever
    // the model's intermediate_size; the up projection's rows are the truth.
    if (L.has("blk.0.ffn_up.weight")) c["intermediate_size"] = L.infos.at("blk.0.ffn_up.weight")->shape.at(0);
  }
  if (arch == "phi2") {
    c["hidden_act"] = "gelu_new";
    c["qk_layernorm"] = false;
  }
  if (arch == "stablelm") {
    c["hidden_act"] = "silu";
    // llama.cpp runs the parallel residual exactly when the blocks have no ffn_norm.
    const bool parallel = !L.has("blk.0.ffn_norm.weight");
    if (g.has(L.p + "use_parallel_residual"))
      MLXTERP_CHECK(g.get_bool(L.p + "use_parallel_residual") == parallel, path, ": ", L.p,
                    "use_parallel_residual says ", !parallel ? "true" : "false", " but the blocks ",
                    parallel ? "have no" : "have an", " ffn_norm; expected them to agree");
    c["use_parallel_residual"] = parallel;
    c["use_qkv_bias"] = L.has("blk.0.attn_q.bias");
    c["qk_layernorm"] = L.has("blk.0.attn_q_norm.weight");
    if (!c.contains("partial_rotary_factor")) c["partial_rotary_factor"] = 0.25;
  }
  if (arch == "starcoder2") {
    c["hidden_act"] = "gelu_pytorch_tanh";
    c["use_bias"] = L.has("blk.0.attn_q.bias");
  }
  if (arch == "gptj") {
    // Only llama.cpp's legacy convert-gptj-hf-to-gguf.py wrote these: no head_count_kv, rotary_dim as
    // rope.dimension_count, Q/K rows left as HF has them (GPT-J's interleaved rotary).
    c["activation_function"] = "gelu_new";
    c["rotary_dim"] = L.i("rope.dimension_count", 64);
    c["n_positions"] = L.i("context_length", 2048);
  }
  if (arch == "bloom" || arch == "starcoder") {
    c["layer_norm_epsilon"] = L.f("attention.layer_norm_epsilon", 1e-5);
    if (arch == "starcoder") {
      // llama.cpp's StarCoder graph is multi-query (the converter writes head_count_kv = 1).
      c["multi_query"] = c["num_key_value_heads"].get<int64_t>() == 1;
      c["n_positions"] = L.i("context_length", 2048);
      c["activation_function"] = "gelu_pytorch_tanh";
    }
  }
  if (arch == "falcon") {
    // The converter writes head_count_kv (1 for Falcon-7B's multi-query); two LayerNorms per block
    // (attn_norm_2) or grouped k/v heads mean HF's new_decoder_architecture.
    const int64_t kv = c["num_key_value_heads"].get<int64_t>();
    const bool two_ln = L.has("blk.0.attn_norm_2.weight");
    const bool new_arch = two_ln || kv > 1;
    c["new_decoder_architecture"] = new_arch;
    c["multi_query"] = !new_arch;
    c["num_kv_heads"] = kv;
    if (new_arch) c["num_ln_in_parallel_attn"] = two_ln ? 2 : 1;
    c["parallel_attn"] = true;
    c["layer_norm_epsilon"] = L.f("attention.layer_norm_epsilon", 1e-5);
    if (c.contains("intermediate_size")) c["ffn_hidden_size"] = c["intermediate_size"];
    c["bias"] = L.has("blk.0.attn_qkv.bias");
  }
  if (arch == "granite") {
    c["embedding_multiplier"] = L.f("embedding_scale", 1.0);
    c["residual_multiplier"] = L.f("residual_scale", 1.0);
    c["attention_multiplier"] = L.f("attention.scale", head_dim > 0 ? 1.0 / std::sqrt(double(head_dim)) : 1.0);
    c["logits_scaling"] = L.f("logit_scale", 1.0);
  }
  if (arch == "command-r") {
    c["logit_scale"] = L.f("logit_scale", 1.0);
    c["layer_norm_eps"] = L.f("attention.layer_norm_epsilon", 1e-5);
  }
  if (arch == "olmo" && g.has(L.p + "attention.clamp_kqv")) c["clip_qkv"] = L.f("attention.clamp_kqv", 0.0);
  if (arch == "mpt") {
    json attn = {{"alibi", true}, {"alibi_bias_max", L.f("attention.max_alibi_bias", 8.0)}};
    if (g.has(L.p + "attention.clamp_kqv")) attn["clip_qkv"] = L.f("attention.clamp_kqv", 0.0);
    c["attn_config"] = attn;
    c["max_seq_len"] = L.i("context_length", 2048);
    c["layer_norm_epsilon"] = L.f("attention.layer_norm_epsilon", 1e-5);
  }
  int64_t n_experts = 0;
  if (moe) {
    n_experts = L.i("expert_count", 0);
    MLXTERP_CHECK(n_experts > 0, path, ": ", arch, " needs ", L.p, "expert_count > 0");
    c[arch == "llama" ? "num_local_experts" : "num_experts"] = n_experts;
    c["num_experts_per_tok"] = L.i("expert_used_count", 2);
    const int64_t d_exp = L.i("expert_feed_forward_length", c.value("intermediate_size", int64_t(0)));
    if (arch == "qwen2moe" || arch == "qwen3moe") {
      c["moe_intermediate_size"] = d_exp;
      if (!c.contains("intermediate_size")) c["intermediate_size"] = d_exp;
    } else {
      c["intermediate_size"] = d_exp;
    }
    if (arch == "qwen2moe") c["shared_expert_intermediate_size"] = L.i("expert_shared_feed_forward_length", 0);
    // llama.cpp renormalises the top-k weights for Mixtral and Qwen3-MoE, not for Qwen2-MoE / OLMoE.
    bool norm = arch == "llama" || arch == "qwen3moe";
    if (g.has(L.p + "expert_weights_norm")) norm = g.get_bool(L.p + "expert_weights_norm");
    c["norm_topk_prob"] = norm;
  }

  // ---- tensors ----
  auto shift_norm = [&](at::Tensor t) { return gemma ? (t.to(at::kFloat) - 1.0) : t; };
  L.require("token_embd.weight");
  const bool transformer_h =
      arch == "gpt2" || arch == "gptj" || arch == "starcoder" || arch == "bloom" || arch == "falcon" || arch == "mpt";
  const std::string embed_hf = arch == "bloom" || arch == "falcon" ? "transformer.word_embeddings.weight"
                               : transformer_h      ? "transformer.wte.weight"
                               : arch == "gptneox"  ? "gpt_neox.embed_in.weight"
                                                    : "model.embed_tokens.weight";
  const std::string norm_hf = arch == "mpt"         ? "transformer.norm_f"
                              : transformer_h      ? "transformer.ln_f"
                              : arch == "gptneox"  ? "gpt_neox.final_layer_norm"
                              : arch == "phi2"     ? "model.final_layernorm"
                                                   : "model.norm";
  const std::string head_hf = arch == "gptneox" ? "embed_out.weight" : "lm_head.weight";
  L.move("token_embd.weight", embed_hf);
  const at::Tensor& emb = L.weights[embed_hf];
  c["vocab_size"] = emb.size(0);
  L.move("output_norm.weight", norm_hf + ".weight", shift_norm);
  L.move("output_norm.bias", norm_hf + ".bias");
  c["tie_word_embeddings"] = true;
  if (L.has("output.weight")) {
    at::Tensor head = L.take("output.weight");
    // Converters that always write output.weight: a bit-identical copy of the embedding is a tied head.
    if (!(head.sizes() == emb.sizes() && head.scalar_type() == emb.scalar_type() && at::equal(head, emb))) {
      L.weights[head_hf] = head;
      c["tie_word_embeddings"] = false;
    }
  }
  if (arch == "phi2" || arch == "gptj") L.move("output.bias", "lm_head.bias");  // their heads carry a bias
  if (arch == "gpt2" || arch == "starcoder") {
    L.require("position_embd.weight");
    L.move("position_embd.weight", "transformer.wpe.weight");
  }
  if (arch == "bloom") {  // the LayerNorm after the token embedding
    L.require("token_embd_norm.weight");
    L.move("token_embd_norm.weight", "transformer.word_embeddings_layernorm.weight");
    L.move("token_embd_norm.bias", "transformer.word_embeddings_layernorm.bias");
  }

  // Per-block rules: gguf suffix -> HF name template ({i} = block index).
  std::vector<std::pair<std::string, std::string>> rules;
  std::function<at::Tensor(const std::string&, at::Tensor)> transform = [&](const std::string& g_suffix, at::Tensor t) {
    if (gemma && g_suffix.size() >= 11 && g_suffix.compare(g_suffix.size() - 11, 11, "norm.weight") == 0)
      return shift_norm(t);
    return t;
  };
  const int64_t n_kv = c["num_key_value_heads"].get<int64_t>();
  if (arch == "gpt2") {
    const std::string h = "transformer.h.{i}.";
    rules = {{"attn_norm.weight", h + "ln_1.weight"},     {"attn_norm.bias", h + "ln_1.bias"},
             {"attn_qkv.weight", h + "attn.c_attn.weight"}, {"attn_qkv.bias", h + "attn.c_attn.bias"},
             {"attn_output.weight", h + "attn.c_proj.weight"}, {"attn_output.bias", h + "attn.c_proj.bias"},
             {"ffn_norm.weight", h + "ln_2.weight"},      {"ffn_norm.bias", h + "ln_2.bias"},
             {"ffn_up.weight", h + "mlp.c_fc.weight"},    {"ffn_up.bias", h + "mlp.c_fc.bias"},
             {"ffn_down.weight", h + "mlp.c_proj.weight"}, {"ffn_down.bias", h + "mlp.c_proj.bias"}};
    // The converter stores Conv1D weights transposed to the usual [out, in]; HF keeps [in, out].
    transform = [](const std::string& s, at::Tensor t) { return (t.dim() == 2 && s.find(".weight") != std::string::npos) ? t.t() : t; };
  } else if (arch == "gptneox") {
    const std::string h = "gpt_neox.layers.{i}.";
    rules = {{"attn_norm.weight", h + "input_layernorm.weight"},
             {"attn_norm.bias", h + "input_layernorm.bias"},
             {"attn_qkv.weight", h + "attention.query_key_value.weight"},
             {"attn_qkv.bias", h + "attention.query_key_value.bias"},
             {"attn_output.weight", h + "attention.dense.weight"},
             {"attn_output.bias", h + "attention.dense.bias"},
             {"ffn_norm.weight", h + "post_attention_layernorm.weight"},
             {"ffn_norm.bias", h + "post_attention_layernorm.bias"},
             {"ffn_up.weight", h + "mlp.dense_h_to_4h.weight"},
             {"ffn_up.bias", h + "mlp.dense_h_to_4h.bias"},
             {"ffn_down.weight", h + "mlp.dense_4h_to_h.weight"},
             {"ffn_down.bias", h + "mlp.dense_4h_to_h.bias"}};
    transform = [n_heads](const std::string& s, at::Tensor t) {
      return s.rfind("attn_qkv.", 0) == 0 ? neox_regroup(t, n_heads) : t;
    };
  } else if (arch == "bloom") {
    const std::string h = "transformer.h.{i}.";
    const std::pair<const char*, const char*> m[] = {{"attn_norm", "input_layernorm"},
                                                     {"attn_qkv", "self_attention.query_key_value"},
                                                     {"attn_output", "self_attention.dense"},
                                                     {"ffn_norm", "post_attention_layernorm"},
                                                     {"ffn_up", "mlp.dense_h_to_4h"},
                                                     {"ffn_down", "mlp.dense_4h_to_h"}};
    for (auto [gg, hh] : m)
      for (const char* wb : {".weight", ".bias"}) rules.push_back({gg + std::string(wb), h + hh + wb});
    // The converter stacks query_key_value as [q | k | v] (as GPT-NeoX's); HF keeps it per head.
    transform = [n_heads](const std::string& s, at::Tensor t) {
      return s.rfind("attn_qkv.", 0) == 0 ? neox_regroup(t, n_heads) : t;
    };
  } else if (arch == "falcon") {
    const std::string h = "transformer.h.{i}.";
    const bool two_ln = c["new_decoder_architecture"].get<bool>() && c.value("num_ln_in_parallel_attn", 2) == 2;
    const std::pair<const char*, std::string> m[] = {{"attn_norm", two_ln ? "ln_attn" : "input_layernorm"},
                                                     {"attn_norm_2", "ln_mlp"},
                                                     {"attn_qkv", "self_attention.query_key_value"},
                                                     {"attn_output", "self_attention.dense"},
                                                     {"ffn_up", "mlp.dense_h_to_4h"},
                                                     {"ffn_down", "mlp.dense_4h_to_h"}};
    for (const auto& [gg, hh] : m)
      for (const char* wb : {".weight", ".bias"}) rules.push_back({gg + std::string(wb), h + hh + wb});
    if (c["new_decoder_architecture"].get<bool>())
      transform = [n_heads, n_kv](const std::string& s, at::Tensor t) {
        return s.rfind("attn_qkv.", 0) == 0 ? falcon_regroup(t, n_heads, n_kv) : t;
      };
  } else if (arch == "mpt") {
    const std::string h = "transformer.blocks.{i}.";
    rules = {{"attn_norm.weight", h + "norm_1.weight"},          {"attn_qkv.weight", h + "attn.Wqkv.weight"},
             {"attn_output.weight", h + "attn.out_proj.weight"}, {"ffn_norm.weight", h + "norm_2.weight"},
             {"ffn_up.weight", h + "ffn.up_proj.weight"},        {"ffn_down.weight", h + "ffn.down_proj.weight"}};
  } else if (arch == "starcoder") {
    const std::string h = "transformer.h.{i}.";
    const std::pair<const char*, const char*> m[] = {{"attn_norm", "ln_1"},      {"attn_qkv", "attn.c_attn"},
                                                     {"attn_output", "attn.c_proj"}, {"ffn_norm", "ln_2"},
                                                     {"ffn_up", "mlp.c_fc"},     {"ffn_down", "mlp.c_proj"}};
    for (auto [gg, hh] : m)
      for (const char* wb : {".weight", ".bias"}) rules.push_back({gg + std::string(wb), h + hh + wb});
    // c_attn is [q | k | v] as llama.cpp reads it; a multi-head model's HF layout is per head.
    if (n_kv != 1)
      transform = [n_heads](const std::string& s, at::Tensor t) {
        return s.rfind("attn_qkv.", 0) == 0 ? neox_regroup(t, n_heads) : t;
      };
  } else if (arch == "gptj") {
    const std::string h = "transformer.h.{i}.";
    rules = {{"attn_norm.weight", h + "ln_1.weight"},           {"attn_norm.bias", h + "ln_1.bias"},
             {"attn_q.weight", h + "attn.q_proj.weight"},       {"attn_k.weight", h + "attn.k_proj.weight"},
             {"attn_v.weight", h + "attn.v_proj.weight"},       {"attn_output.weight", h + "attn.out_proj.weight"},
             {"ffn_up.weight", h + "mlp.fc_in.weight"},         {"ffn_up.bias", h + "mlp.fc_in.bias"},
             {"ffn_down.weight", h + "mlp.fc_out.weight"},      {"ffn_down.bias", h + "mlp.fc_out.bias"}};
  } else if (ln_family) {  // phi2, stablelm, starcoder2: model.layers.{i} with biased LayerNorms
    const std::string h = "model.layers.{i}.", a = h + "self_attn.";
    rules = {{"attn_norm.weight", h + "input_layernorm.weight"}, {"attn_norm.bias", h + "input_layernorm.bias"}};
    for (const char* x : {"q", "k", "v"})
      for (const char* wb : {"weight", "bias"})
        rules.push_back({std::string("attn_") + x + "." + wb, a + x + "_proj." + wb});
    const std::string o = a + (arch == "phi2" ? "dense" : "o_proj");
    rules.push_back({"attn_output.weight", o + ".weight"});
    rules.push_back({"attn_output.bias", o + ".bias"});
    if (arch != "phi2") {
      rules.push_back({"ffn_norm.weight", h + "post_attention_layernorm.weight"});
      rules.push_back({"ffn_norm.bias", h + "post_attention_layernorm.bias"});
    }
    const std::string up = arch == "phi2" ? "mlp.fc1" : arch == "starcoder2" ? "mlp.c_fc" : "mlp.up_proj";
    const std::string down = arch == "phi2" ? "mlp.fc2" : arch == "starcoder2" ? "mlp.c_proj" : "mlp.down_proj";
    for (const char* wb : {"weight", "bias"}) {
      rules.push_back({std::string("ffn_up.") + wb, h + up + "." + wb});
      rules.push_back({std::string("ffn_down.") + wb, h + down + "." + wb});
    }
    if (arch == "stablelm") rules.push_back({"ffn_gate.weight", h + "mlp.gate_proj.weight"});
  } else {
    const std::string h = "model.layers.{i}.";
    rules = {{"attn_norm.weight", h + "input_layernorm.weight"},
             {"attn_q.weight", h + "self_attn.q_proj.weight"},
             {"attn_k.weight", h + "self_attn.k_proj.weight"},
             {"attn_v.weight", h + "self_attn.v_proj.weight"},
             {"attn_qkv.weight", h + "self_attn.qkv_proj.weight"},
             {"attn_output.weight", h + "self_attn.o_proj.weight"},
             {"attn_q.bias", h + "self_attn.q_proj.bias"},
             {"attn_k.bias", h + "self_attn.k_proj.bias"},
             {"attn_v.bias", h + "self_attn.v_proj.bias"},
             {"attn_output.bias", h + "self_attn.o_proj.bias"},
             {"attn_q_norm.weight", h + "self_attn.q_norm.weight"},
             {"attn_k_norm.weight", h + "self_attn.k_norm.weight"},
             {"post_attention_norm.weight", h + "post_attention_layernorm.weight"},
             {"post_ffw_norm.weight", h + "post_feedforward_layernorm.weight"},
             {"ffn_gate.weight", h + "mlp.gate_proj.weight"},
             {"ffn_down.weight", h + "mlp.down_proj.weight"}};
    // Gemma 2/3 name their MLP-input norm ffn_norm too (HF: pre_feedforward_layernorm).
    rules.push_back({"ffn_norm.weight", h + (arch == "gemma2" || arch == "gemma3" ? "pre_feedforward_layernorm.weight"
                                                                                  : "post_attention_layernorm.weight")});
    rules.push_back({"ffn_up.weight", h + (arch == "phi3" ? "mlp.gate_up_proj.weight" : "mlp.up_proj.weight")});
    if (arch == "llama" || arch == "granite" || arch == "olmo") {  // their converters permute q/k for ggml's RoPE
      transform = [n_heads, n_kv](const std::string& s, at::Tensor t) {
        if (s == "attn_q.weight") return unpermute_qk(t, n_heads);
        if (s == "attn_k.weight") return unpermute_qk(t, n_kv);
        return t;
      };
    }
  }
  for (int64_t b = 0; b < n_layers; ++b) {
    const std::string gb = "blk." + std::to_string(b) + ".";
    for (const auto& [gs, hf] : rules) {
      if (!L.has(gb + gs)) continue;
      L.move(gb + gs, subst(hf, b), [&, gs = gs](at::Tensor t) { return transform(gs, t); });
    }
    if (L.weights.count(subst("model.layers.{i}.self_attn.q_proj.bias", b))) c["attention_bias"] = true;
    if (arch == "phi2" && L.has(gb + "attn_qkv.weight")) {
      // Older phi2 GGUFs (from phi-msft's Wqkv) keep one fused projection: rows [q; k; v].
      const int64_t qd = n_heads * head_dim, kvd = n_kv * head_dim;
      const std::string a = "model.layers." + std::to_string(b) + ".self_attn.";
      for (const char* wb : {"weight", "bias"}) {
        const std::string gname = gb + "attn_qkv." + wb;
        if (!L.has(gname)) continue;
        at::Tensor t = L.take(gname);
        MLXTERP_CHECK(t.size(0) == qd + 2 * kvd, path, ": tensor '", gname, "' has ", t.size(0), " rows; expected ",
                      qd + 2 * kvd, " (q ", qd, " + k ", kvd, " + v ", kvd, ")");
        L.weights[a + "q_proj." + wb] = t.narrow(0, 0, qd).contiguous();
        L.weights[a + "k_proj." + wb] = t.narrow(0, qd, kvd).contiguous();
        L.weights[a + "v_proj." + wb] = t.narrow(0, qd + kvd, kvd).contiguous();
      }
    }
    if (arch == "stablelm") {
      // llama.cpp stacks StableLM's per-head q/k LayerNorm weights to [heads, head_dim]; HF keeps one per head.
      const std::string a = "model.layers." + std::to_string(b) + ".self_attn.";
      const std::pair<const char*, int64_t> norms[] = {{"q", n_heads}, {"k", n_kv}};
      for (auto [x, nh] : norms) {
        const std::string gname = gb + "attn_" + x + "_norm.weight";
        if (!L.has(gname)) continue;
        at::Tensor t = L.take(gname);
        MLXTERP_CHECK(t.numel() == nh * head_dim, path, ": tensor '", gname, "' has shape ", shape_str(t.sizes()),
                      "; expected [", nh, ", ", head_dim, "] (one LayerNorm weight per head)");
        t = t.reshape({nh, head_dim});
        for (int64_t hh = 0; hh < nh; ++hh)
          L.weights[a + x + "_layernorm.norms." + std::to_string(hh) + ".weight"] = t[hh].contiguous();
      }
    }
    if (moe) {
      const std::string m = arch == "llama" ? "model.layers." + std::to_string(b) + ".block_sparse_moe."
                                            : "model.layers." + std::to_string(b) + ".mlp.";
      L.require(gb + "ffn_gate_inp.weight");
      L.move(gb + "ffn_gate_inp.weight", m + "gate.weight");
      const bool mixtral = arch == "llama";
      move_experts(L, b, n_experts, "ffn_gate", m + "experts.{e}." + (mixtral ? "w1" : "gate_proj") + ".weight");
      move_experts(L, b, n_experts, "ffn_up", m + "experts.{e}." + (mixtral ? "w3" : "up_proj") + ".weight");
      move_experts(L, b, n_experts, "ffn_down", m + "experts.{e}." + (mixtral ? "w2" : "down_proj") + ".weight");
      L.move(gb + "ffn_gate_shexp.weight", m + "shared_expert.gate_proj.weight");
      L.move(gb + "ffn_up_shexp.weight", m + "shared_expert.up_proj.weight");
      L.move(gb + "ffn_down_shexp.weight", m + "shared_expert.down_proj.weight");
      // llama.cpp keeps the shared-expert gate as a vector [d_model]; HF's Linear weight is [1, d_model].
      L.move(gb + "ffn_gate_inp_shexp.weight", m + "shared_expert_gate.weight",
             [d](at::Tensor t) { return t.reshape({1, d}); });
    }
  }
  if (arch == "qwen2moe" && !c.contains("attention_bias")) c["attention_bias"] = false;
  for (const auto& t : g.tensor_infos()) {
    if (t.name == "rope_freqs.weight" || t.name == "rope_factors_long.weight" || t.name == "rope_factors_short.weight")
      MLXTERP_FAIL(path, ": RoPE frequency-factor tensor '", t.name, "' is not supported for ", arch, " yet");
    MLXTERP_CHECK(L.used.count(t.name), path, ": unexpected tensor '", t.name, "' for architecture ", arch,
                  " (a newer GGUF layout?)");
  }
  ModelFiles out;
  out.config = parse_hf_config(c, path);
  out.weights = std::move(L.weights);
  out.tokenizer_path = path;  // the vocabulary lives in the metadata
  return out;
}

}  // namespace mlxterp
