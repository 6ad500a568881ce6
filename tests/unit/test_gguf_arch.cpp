// GGUF loading for the non-Llama families: every HF golden model is written as the GGUF llama.cpp's
// convert_hf_to_gguf.py would make of it (its tensor names and metadata keys, and its conversions:
// Mixtral's Q/K row permutation, Gemma's norm weights stored as 1 + w, GPT-2's Conv1D weights
// transposed, GPT-NeoX's query_key_value regrouped to [q | k | v], experts stacked into [E, rows, cols],
// Qwen2-MoE's shared-expert gate as a vector). Reading it back must give the HF model's logits.
// The converter below is written from llama.cpp's conventions independently of src/io/gguf_arch.cpp.
#include <cmath>

#include "hf_golden.hpp"
#include "mlxterp/error.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

using json = nlohmann::json;

GGUFValue u32(int64_t x) {
  GGUFValue v;
  v.v = uint64_t(x);
  v.type = 4;
  return v;
}
GGUFValue f32(double x) {
  GGUFValue v;
  v.v = x;
  v.type = 6;
  return v;
}
GGUFValue boolean(bool x) {
  GGUFValue v;
  v.v = x;
  v.type = 7;
  return v;
}
GGUFValue str(const std::string& x) {
  GGUFValue v;
  v.v = x;
  v.type = 8;
  return v;
}
GGUFValue bool_array(const std::vector<bool>& xs) {
  auto arr = std::make_shared<GGUFValue::Array>();
  for (bool x : xs) arr->push_back(boolean(x));
  GGUFValue v;
  v.v = arr;
  v.type = 9;
  return v;
}

// llama.cpp's LlamaModel.permute (HF rotate_half rows -> interleaved pairs).
at::Tensor permute(const at::Tensor& w, int64_t n_head) {
  return w.reshape({n_head, 2, w.size(0) / n_head / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

struct Converted {
  std::map<std::string, GGUFValue> meta;
  TensorMap t;
};

// The llama.cpp conversion of a golden HF model.
// `weights`, when given, replaces the golden's model.safetensors (variants the goldens do not cover).
Converted convert(const hf::Golden& g, const std::string& arch, bool write_attention_scale,
                  const TensorMap* weights = nullptr) {
  const json& c = g.config.raw;
  const ModelConfig& mc = g.config;
  TensorMap hf = weights ? *weights : load_safetensors_model(g.dir);
  Converted out;
  auto& M = out.meta;
  auto& T = out.t;
  const std::string p = arch + ".";
  M["general.architecture"] = str(arch);
  M[p + "context_length"] = u32(mc.n_ctx);
  M[p + "embedding_length"] = u32(mc.d_model);
  M[p + "block_count"] = u32(mc.n_layers);
  M[p + "feed_forward_length"] = u32(mc.d_mlp);
  M[p + "attention.head_count"] = u32(mc.n_heads);
  M[p + "attention.head_count_kv"] = u32(mc.n_kv_heads);
  M[p + "attention.key_length"] = u32(mc.d_head);
  M[p + "attention.value_length"] = u32(mc.d_head);
  const bool ln = arch == "gpt2" || arch == "gptneox" || arch == "phi2" || arch == "stablelm" ||
                  arch == "starcoder2" || arch == "gptj" || arch == "bloom" || arch == "starcoder" || arch == "falcon" ||
                  arch == "command-r" || arch == "olmo" || arch == "mpt";
  M[p + (ln ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon")] = f32(mc.norm_eps);
  M[p + "rope.freq_base"] = f32(mc.rope_for_layer(mc.n_layers - 1).theta);
  M["tokenizer.ggml.bos_token_id"] = u32(1);
  M["tokenizer.ggml.eos_token_id"] = u32(2);
  const bool gemma = arch.rfind("gemma", 0) == 0;
  auto norm = [&](const at::Tensor& w) { return gemma ? (w + 1.0).contiguous() : w; };
  auto put = [&](const std::string& gg, const std::string& h, bool is_norm = false) {
    auto it = hf.find(h);
    if (it == hf.end()) return;
    T[gg] = is_norm ? norm(it->second) : it->second;
  };

  if (arch == "gpt2") {
    put("token_embd.weight", "transformer.wte.weight");
    put("output.weight", "transformer.wte.weight");  // the converter writes the tied head out
    put("position_embd.weight", "transformer.wpe.weight");
    put("output_norm.weight", "transformer.ln_f.weight");
    put("output_norm.bias", "transformer.ln_f.bias");
    for (int i = 0; i < mc.n_layers; ++i) {
      const std::string b = "blk." + std::to_string(i) + ".", h = "transformer.h." + std::to_string(i) + ".";
      const std::pair<const char*, const char*> m[] = {{"attn_norm", "ln_1"}, {"attn_qkv", "attn.c_attn"},
                                                       {"attn_output", "attn.c_proj"}, {"ffn_norm", "ln_2"},
                                                       {"ffn_up", "mlp.c_fc"}, {"ffn_down", "mlp.c_proj"}};
      for (auto [gg, hh] : m) {
        at::Tensor w = hf.at(h + hh + ".weight");
        T[b + gg + ".weight"] = w.dim() == 2 ? w.t().contiguous() : w;
        T[b + gg + ".bias"] = hf.at(h + hh + ".bias");
      }
    }
    return out;
  }
  if (arch == "bloom" || arch == "starcoder") {
    // BloomModel / StarCoderModel: feed_forward_length = 4 * n_embd, no key/value length or rope base;
    // StarCoder's head_count_kv is 1 (multi-query), BLOOM's the head count.
    for (const char* k : {"attention.key_length", "attention.value_length", "rope.freq_base"}) M.erase(p + k);
    M[p + "feed_forward_length"] = u32(4 * mc.d_model);
    const bool bloom = arch == "bloom";
    put("token_embd.weight", bloom ? "transformer.word_embeddings.weight" : "transformer.wte.weight");
    if (bloom) {
      put("output.weight", "transformer.word_embeddings.weight");  // written out although tied
      put("token_embd_norm.weight", "transformer.word_embeddings_layernorm.weight");
      put("token_embd_norm.bias", "transformer.word_embeddings_layernorm.bias");
    } else {
      put("position_embd.weight", "transformer.wpe.weight");
    }
    put("output_norm.weight", "transformer.ln_f.weight");
    put("output_norm.bias", "transformer.ln_f.bias");
    const int64_t nh = mc.n_heads, d = mc.d_model;
    for (int i = 0; i < mc.n_layers; ++i) {
      const std::string b = "blk." + std::to_string(i) + ".", h = "transformer.h." + std::to_string(i) + ".";
      std::vector<std::pair<std::string, std::string>> m;
      if (bloom)
        m = {{"attn_norm", "input_layernorm"}, {"attn_output", "self_attention.dense"},
             {"ffn_norm", "post_attention_layernorm"}, {"ffn_up", "mlp.dense_h_to_4h"}, {"ffn_down", "mlp.dense_4h_to_h"}};
      else
        m = {{"attn_norm", "ln_1"}, {"attn_qkv", "attn.c_attn"}, {"attn_output", "attn.c_proj"},
             {"ffn_norm", "ln_2"}, {"ffn_up", "mlp.c_fc"}, {"ffn_down", "mlp.c_proj"}};
      for (const auto& [gg, hh] : m) {
        put(b + gg + ".weight", h + hh + ".weight");
        put(b + gg + ".bias", h + hh + ".bias");
      }
      if (bloom) {  // per-head [q | k | v] -> all q, all k, all v
        at::Tensor w = hf.at(h + "self_attention.query_key_value.weight").reshape({nh, 3, d / nh, d});
        T[b + "attn_qkv.weight"] = at::cat({w.select(1, 0).reshape({-1, d}), w.select(1, 1).reshape({-1, d}),
                                            w.select(1, 2).reshape({-1, d})});
        at::Tensor bias = hf.at(h + "self_attention.query_key_value.bias").reshape({nh, 3, d / nh});
        T[b + "attn_qkv.bias"] =
            at::cat({bias.select(1, 0).reshape({-1}), bias.select(1, 1).reshape({-1}), bias.select(1, 2).reshape({-1})});
      }
    }
    return out;
  }
  if (arch == "mpt") {
    // MPTModel: no key/value length or rope base; alibi_bias_max and clip_qkv as attention keys; norm_f.
    for (const char* k : {"attention.key_length", "attention.value_length", "rope.freq_base"}) M.erase(p + k);
    const json& attn = c.at("attn_config");
    M[p + "attention.max_alibi_bias"] = f32(attn.value("alibi_bias_max", 8.0));
    if (attn.contains("clip_qkv") && !attn["clip_qkv"].is_null()) M[p + "attention.clamp_kqv"] = f32(attn["clip_qkv"].get<double>());
    put("token_embd.weight", "transformer.wte.weight");
    put("output_norm.weight", "transformer.norm_f.weight");
    for (int i = 0; i < mc.n_layers; ++i) {
      const std::string b = "blk." + std::to_string(i) + ".", h = "transformer.blocks." + std::to_string(i) + ".";
      const std::pair<const char*, const char*> m[] = {{"attn_norm", "norm_1"}, {"attn_qkv", "attn.Wqkv"},
                                                       {"attn_output", "attn.out_proj"}, {"ffn_norm", "norm_2"},
                                                       {"ffn_up", "ffn.up_proj"}, {"ffn_down", "ffn.down_proj"}};
      for (auto [gg, hh] : m) put(b + gg + ".weight", h + hh + ".weight");
    }
    return out;
  }
  if (arch == "falcon") {
    // FalconModel: feed_forward_length = 4 * n_embd, head_count_kv from num_kv_heads (1 for the multi-query 7B
    // configs, which do not set it), and query_key_value rearranged from per-group [q.. | k | v] to
    // [all q | all k | all v].
    for (const char* k : {"attention.key_length", "attention.value_length"}) M.erase(p + k);
    M[p + "feed_forward_length"] = u32(4 * mc.d_model);
    const int64_t nh = mc.n_heads, nk = mc.n_kv_heads, dh = mc.d_head, d = mc.d_model;
    put("token_embd.weight", "transformer.word_embeddings.weight");
    put("output.weight", "transformer.word_embeddings.weight");
    put("output_norm.weight", "transformer.ln_f.weight");
    put("output_norm.bias", "transformer.ln_f.bias");
    for (int i = 0; i < mc.n_layers; ++i) {
      const std::string b = "blk." + std::to_string(i) + ".", h = "transformer.h." + std::to_string(i) + ".";
      const std::pair<const char*, const char*> m[] = {{"attn_norm", "input_layernorm"}, {"attn_norm", "ln_attn"},
                                                       {"attn_norm_2", "ln_mlp"}, {"attn_output", "self_attention.dense"},
                                                       {"ffn_up", "mlp.dense_h_to_4h"}, {"ffn_down", "mlp.dense_4h_to_h"}};
      for (auto [gg, hh] : m) {
        put(b + gg + ".weight", h + hh + ".weight");
        put(b + gg + ".bias", h + hh + ".bias");
      }
      at::Tensor w = hf.at(h + "self_attention.query_key_value.weight").view({nk, nh / nk + 2, dh, d});
      T[b + "attn_qkv.weight"] = at::cat({w.narrow(1, 0, nh / nk).reshape({nh * dh, d}),
                                          w.narrow(1, nh / nk, 1).reshape({nk * dh, d}),
                                          w.narrow(1, nh / nk + 1, 1).reshape({nk * dh, d})});
    }
    return out;
  }
  if (arch == "gptneox") {
    M[p + "use_parallel_residual"] = boolean(c.value("use_parallel_residual", true));
    M[p + "rope.dimension_count"] = u32(int64_t(mc.rope_for_layer(0).partial_rotary_factor * mc.d_head));
    put("token_embd.weight", "gpt_neox.embed_in.weight");
    put("output.weight", "embed_out.weight");
    put("output_norm.weight", "gpt_neox.final_layer_norm.weight");
    put("output_norm.bias", "gpt_neox.final_layer_norm.bias");
    const int64_t nh = mc.n_heads, d = mc.d_model;
    for (int i = 0; i < mc.n_layers; ++i) {
      const std::string b = "blk." + std::to_string(i) + ".", h = "gpt_neox.layers." + std::to_string(i) + ".";
      const std::pair<const char*, const char*> m[] = {
          {"attn_norm", "input_layernorm"}, {"attn_output", "attention.dense"}, {"ffn_norm", "post_attention_layernorm"},
          {"ffn_up", "mlp.dense_h_to_4h"}, {"ffn_down", "mlp.dense_4h_to_h"}};
      for (auto [gg, hh] : m) {
        T[b + gg + ".weight"] = hf.at(h + hh + ".weight");
        T[b + gg + ".bias"] = hf.at(h + hh + ".bias");
      }
      // convert_hf_to_gguf: W.reshape(n_head, 3, head, d) -> cat(q rows of all heads, k rows, v rows)
      at::Tensor w = hf.at(h + "attention.query_key_value.weight").reshape({nh, 3, d / nh, d});
      T[b + "attn_qkv.weight"] = at::cat({w.select(1, 0).reshape({-1, d}), w.select(1, 1).reshape({-1, d}),
                                          w.select(1, 2).reshape({-1, d})});
      at::Tensor bias = hf.at(h + "attention.query_key_value.bias").reshape({nh, 3, d / nh});
      T[b + "attn_qkv.bias"] =
          at::cat({bias.select(1, 0).reshape({-1}), bias.select(1, 1).reshape({-1}), bias.select(1, 2).reshape({-1})});
    }
    return out;
  }

  if (arch == "phi2" || arch == "stablelm" || arch == "starcoder2" || arch == "gptj") {
    // What each converter writes (Phi2Model / StableLMModel / TextModel's defaults for StarCoder2 /
    // the legacy convert-gptj-hf-to-gguf.py): no key/value length; rope.freq_base only from the
    // default writer (starcoder2); phi2 and gptj write feed_forward_length = 4 * n_embd and the full
    // head count as head_count_kv (gptj: none at all).
    for (const char* k : {"attention.key_length", "attention.value_length"}) M.erase(p + k);
    if (arch != "starcoder2") M.erase(p + "rope.freq_base");
    const int64_t rot = int64_t(mc.rope_for_layer(0).partial_rotary_factor * mc.d_head + 1e-9);
    if (arch == "phi2") {
      M[p + "feed_forward_length"] = u32(4 * mc.d_model);
      M[p + "attention.head_count_kv"] = u32(mc.n_heads);
      M[p + "rope.dimension_count"] = u32(rot);
    }
    if (arch == "stablelm") {
      M[p + "rope.dimension_count"] = u32(rot);
      M[p + "use_parallel_residual"] = boolean(c.value("use_parallel_residual", true));
    }
    if (arch == "starcoder2" && mc.sliding_window) {
      // llama.cpp's converter does not write it (llama.cpp runs StarCoder2 without a window); a GGUF that
      // carries the generic key gets HF's windowed attention.
      M[p + "attention.sliding_window"] = u32(*mc.sliding_window);
    }
    if (arch == "gptj") {
      M[p + "feed_forward_length"] = u32(4 * mc.d_model);
      M.erase(p + "attention.head_count_kv");
      M[p + "rope.dimension_count"] = u32(c.at("rotary_dim").get<int64_t>());
    }
    const std::string top = arch == "gptj" ? "transformer." : "model.";
    put("token_embd.weight", top + (arch == "gptj" ? "wte.weight" : "embed_tokens.weight"));
    put("output.weight", "lm_head.weight");
    put("output.bias", "lm_head.bias");
    const std::string fnorm = arch == "gptj" ? "transformer.ln_f" : arch == "phi2" ? "model.final_layernorm" : "model.norm";
    put("output_norm.weight", fnorm + ".weight");
    put("output_norm.bias", fnorm + ".bias");
    for (int i = 0; i < mc.n_layers; ++i) {
      const std::string b = "blk." + std::to_string(i) + ".";
      const std::string h = (arch == "gptj" ? "transformer.h." : "model.layers.") + std::to_string(i) + ".";
      std::vector<std::pair<std::string, std::string>> m;
      if (arch == "gptj") {
        m = {{"attn_norm", "ln_1"},           {"attn_q", "attn.q_proj"},  {"attn_k", "attn.k_proj"},
             {"attn_v", "attn.v_proj"},       {"attn_output", "attn.out_proj"}, {"ffn_up", "mlp.fc_in"},
             {"ffn_down", "mlp.fc_out"}};
      } else {
        m = {{"attn_norm", "input_layernorm"}, {"attn_q", "self_attn.q_proj"}, {"attn_k", "self_attn.k_proj"},
             {"attn_v", "self_attn.v_proj"},   {"ffn_norm", "post_attention_layernorm"}};
        m.push_back({"attn_output", arch == "phi2" ? "self_attn.dense" : "self_attn.o_proj"});
        m.push_back({"ffn_up", arch == "phi2" ? "mlp.fc1" : arch == "starcoder2" ? "mlp.c_fc" : "mlp.up_proj"});
        m.push_back({"ffn_down", arch == "phi2" ? "mlp.fc2" : arch == "starcoder2" ? "mlp.c_proj" : "mlp.down_proj"});
        m.push_back({"ffn_gate", "mlp.gate_proj"});
      }
      for (const auto& [gg, hh] : m) {
        put(b + gg + ".weight", h + hh + ".weight");
        put(b + gg + ".bias", h + hh + ".bias");
      }
      // StableLMModel._stack_qk_norm: the per-head LayerNorm weights stacked to [heads, head_dim].
      for (auto [x, nh] : {std::pair<const char*, int64_t>{"q", mc.n_heads}, {"k", mc.n_kv_heads}}) {
        const std::string first = h + "self_attn." + x + "_layernorm.norms.0.weight";
        if (!hf.count(first)) continue;
        std::vector<at::Tensor> ws;
        for (int64_t j = 0; j < nh; ++j) ws.push_back(hf.at(h + "self_attn." + x + "_layernorm.norms." + std::to_string(j) + ".weight"));
        T[b + "attn_" + x + "_norm.weight"] = at::stack(ws);
      }
    }
    return out;
  }

  // Llama-style families.
  put("token_embd.weight", "model.embed_tokens.weight");
  put("output.weight", "lm_head.weight");
  put("output_norm.weight", "model.norm.weight", true);
  if (arch == "gemma2" || arch == "gemma3") {
    if (c.contains("attn_logit_softcapping") && !c["attn_logit_softcapping"].is_null())
      M[p + "attn_logit_softcapping"] = f32(c["attn_logit_softcapping"].get<double>());
    if (c.contains("final_logit_softcapping") && !c["final_logit_softcapping"].is_null())
      M[p + "final_logit_softcapping"] = f32(c["final_logit_softcapping"].get<double>());
    M[p + "attention.sliding_window"] = u32(*mc.sliding_window);
    if (write_attention_scale) M[p + "attention.scale"] = f32(1.0 / std::sqrt(c["query_pre_attn_scalar"].get<double>()));
  }
  if (arch == "gemma3") {
    std::vector<bool> pattern;
    for (const auto& lt : mc.layer_types) pattern.push_back(lt == "sliding_attention");
    M[p + "attention.sliding_window_pattern"] = bool_array(pattern);
    const RopeParams& full = mc.rope.at("full_attention");
    M[p + "rope.freq_base"] = f32(full.theta);
    M[p + "rope.scaling.type"] = str(full.type);
    M[p + "rope.scaling.factor"] = f32(full.factor);
    M[p + "rope.freq_base_swa"] = f32(mc.rope.at("sliding_attention").theta);
  }
  if (arch == "phi3") M[p + "rope.dimension_count"] = u32(mc.d_head);
  if (arch == "granite") {
    M[p + "embedding_scale"] = f32(c.at("embedding_multiplier").get<double>());
    M[p + "residual_scale"] = f32(c.at("residual_multiplier").get<double>());
    M[p + "attention.scale"] = f32(c.at("attention_multiplier").get<double>());
    M[p + "logit_scale"] = f32(c.at("logits_scaling").get<double>());
  }
  if (arch == "command-r") M[p + "logit_scale"] = f32(c.at("logit_scale").get<double>());
  if (arch == "olmo") M[p + "attention.clamp_kqv"] = f32(c.at("clip_qkv").get<double>());
  // Converters that permute Q/K rows for ggml's RoPE: Mixtral's (LlamaModel), Granite's and OLMo's.
  const bool permute_qk = arch == "granite" || arch == "olmo";
  const bool moe = c.contains("num_experts_per_tok");
  const bool mixtral = moe && arch == "llama";
  int64_t E = 0;
  if (moe) {
    E = c.value("num_local_experts", c.value("num_experts", int64_t(0)));
    M[p + "expert_count"] = u32(E);
    M[p + "expert_used_count"] = u32(c["num_experts_per_tok"].get<int64_t>());
    if (c.contains("moe_intermediate_size")) M[p + "expert_feed_forward_length"] = u32(c["moe_intermediate_size"].get<int64_t>());
    if (c.contains("shared_expert_intermediate_size"))
      M[p + "expert_shared_feed_forward_length"] = u32(c["shared_expert_intermediate_size"].get<int64_t>());
  }
  for (int i = 0; i < mc.n_layers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".", h = "model.layers." + std::to_string(i) + ".";
    put(b + "attn_norm.weight", h + "input_layernorm.weight", true);
    if (mixtral || permute_qk) {
      T[b + "attn_q.weight"] = permute(hf.at(h + "self_attn.q_proj.weight"), mc.n_heads);
      T[b + "attn_k.weight"] = permute(hf.at(h + "self_attn.k_proj.weight"), mc.n_kv_heads);
    } else {
      put(b + "attn_q.weight", h + "self_attn.q_proj.weight");
      put(b + "attn_k.weight", h + "self_attn.k_proj.weight");
    }
    put(b + "attn_v.weight", h + "self_attn.v_proj.weight");
    put(b + "attn_qkv.weight", h + "self_attn.qkv_proj.weight");
    put(b + "attn_output.weight", h + "self_attn.o_proj.weight");
    for (const char* x : {"q", "k", "v"}) put(b + "attn_" + x + ".bias", h + "self_attn." + x + "_proj.bias");
    put(b + "attn_q_norm.weight", h + "self_attn.q_norm.weight", true);
    put(b + "attn_k_norm.weight", h + "self_attn.k_norm.weight", true);
    if (arch == "gemma2" || arch == "gemma3" || arch == "olmo2") {
      put(b + "post_attention_norm.weight", h + "post_attention_layernorm.weight", true);
      put(b + "ffn_norm.weight", h + "pre_feedforward_layernorm.weight", true);
      put(b + "post_ffw_norm.weight", h + "post_feedforward_layernorm.weight", true);
    } else {
      put(b + "ffn_norm.weight", h + "post_attention_layernorm.weight", true);
    }
    put(b + "ffn_gate.weight", h + "mlp.gate_proj.weight");
    put(b + "ffn_up.weight", h + "mlp.up_proj.weight");
    put(b + "ffn_up.weight", h + "mlp.gate_up_proj.weight");  // Phi-3: fused [gate | up]
    put(b + "ffn_down.weight", h + "mlp.down_proj.weight");
    if (moe) {
      const std::string m = h + (mixtral ? "block_sparse_moe." : "mlp.");
      put(b + "ffn_gate_inp.weight", m + "gate.weight");
      const std::pair<const char*, const char*> parts[] = {{"ffn_gate_exps", mixtral ? "w1" : "gate_proj"},
                                                           {"ffn_up_exps", mixtral ? "w3" : "up_proj"},
                                                           {"ffn_down_exps", mixtral ? "w2" : "down_proj"}};
      for (auto [gg, hh] : parts) {
        std::vector<at::Tensor> xs;
        for (int64_t e = 0; e < E; ++e) xs.push_back(hf.at(m + "experts." + std::to_string(e) + "." + hh + ".weight"));
        T[b + gg + ".weight"] = at::stack(xs);
      }
      put(b + "ffn_gate_shexp.weight", m + "shared_expert.gate_proj.weight");
      put(b + "ffn_up_shexp.weight", m + "shared_expert.up_proj.weight");
      put(b + "ffn_down_shexp.weight", m + "shared_expert.down_proj.weight");
      if (hf.count(m + "shared_expert_gate.weight"))
        T[b + "ffn_gate_inp_shexp.weight"] = hf.at(m + "shared_expert_gate.weight").reshape({-1});
    }
  }
  return out;
}

struct Case {
  const char* golden;
  const char* arch;
};

// Writes `conv`, reads it back and checks it against the HF-loaded `g` (and the golden's logits).
void expect_same_model(const hf::Golden& g, const Converted& conv, const std::string& label,
                       const TensorMap* weights = nullptr) {
  TempDir tmp;
  const std::string path = tmp.file(label + ".gguf");
  save_gguf(path, conv.meta, conv.t);
  ModelFiles f = read_gguf_model(path);
  EXPECT_EQ(f.config.arch, g.config.arch);
  auto from_gguf = hf::build(f.config, std::move(f.weights));
  auto from_hf = weights ? hf::build(g.config, *weights) : hf::build(g);
  at::Tensor ids = g.ref.at("input_ids").to(test_device());
  Hooks h1(from_gguf->sites()), h2(from_hf->sites());
  h1.capture_all();
  h2.capture_all();
  at::Tensor a = from_gguf->forward(ids, {}, h1), b = from_hf->forward(ids, {}, h2);
  hf::expect_close(a, b, 1e-5, label + " GGUF vs HF-loaded logits");
  if (g.ref.count("logits")) hf::expect_close(a, g.ref.at("logits"), 1e-4, label + " GGUF vs transformers logits");
  // Same sites, same values (router logits included).
  ASSERT_EQ(from_gguf->sites().size(), from_hf->sites().size());
  for (const auto& [id, t] : h2.captures())
    hf::expect_close(h1.captured(id), t, 1e-5, label + " site " + from_hf->sites()[id].name);
}

class GGUFArch : public ::testing::TestWithParam<Case> {};

TEST_P(GGUFArch, LoadsLlamaCppLayoutToTheHFModel) {
  const Case cs = GetParam();
  hf::Golden g = hf::load_golden(cs.golden);
  expect_same_model(g, convert(g, cs.arch, /*write_attention_scale=*/true), cs.golden);
}

INSTANTIATE_TEST_SUITE_P(Golden, GGUFArch,
                         ::testing::Values(Case{"gemma", "gemma"}, Case{"gemma2", "gemma2"}, Case{"gemma3", "gemma3"},
                                           Case{"gpt2", "gpt2"}, Case{"gpt_neox", "gptneox"},
                                           Case{"gpt_neox_seq", "gptneox"}, Case{"phi3", "phi3"},
                                           Case{"olmo2", "olmo2"}, Case{"mixtral", "llama"},
                                           Case{"qwen2_moe", "qwen2moe"}, Case{"qwen3_moe", "qwen3moe"},
                                           Case{"olmoe", "olmoe"}, Case{"phi", "phi2"},
                                           Case{"stablelm", "stablelm"}, Case{"starcoder2", "starcoder2"},
                                           Case{"gptj", "gptj"}, Case{"bloom", "bloom"},
                                           Case{"gpt_bigcode", "starcoder"}, Case{"falcon", "falcon"},
                                           Case{"falcon_new", "falcon"}, Case{"granite", "granite"},
                                           Case{"cohere", "command-r"}, Case{"olmo", "olmo"}, Case{"mpt", "mpt"}),
                         [](const auto& info) { return std::string(info.param.golden); });

// Older phi2 GGUFs hold one fused blk.N.attn_qkv = [q; k; v] rows (weight and bias).
TEST(GGUFArchPhi2, FusedQKVSplitsIntoQKV) {
  hf::Golden g = hf::load_golden("phi");
  Converted conv = convert(g, "phi2", false);
  for (int i = 0; i < g.config.n_layers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    for (const char* wb : {"weight", "bias"}) {
      const std::string q = b + "attn_q." + wb, k = b + "attn_k." + wb, v = b + "attn_v." + wb;
      conv.t[b + "attn_qkv." + wb] = at::cat({conv.t.at(q), conv.t.at(k), conv.t.at(v)});
      conv.t.erase(q);
      conv.t.erase(k);
      conv.t.erase(v);
    }
  }
  expect_same_model(g, conv, "phi_fused_qkv");
}

// StableLM's other layout: the parallel residual (no ffn_norm) and per-head q/k LayerNorms (stacked to
// [heads, head_dim] by the converter). No golden has them: the GGUF must give what the HF names give.
TEST(GGUFArchStableLM, ParallelResidualAndPerHeadQKNorms) {
  hf::Golden g = hf::load_golden("stablelm");
  json raw = g.config.raw;
  raw["use_parallel_residual"] = true;
  raw["qk_layernorm"] = true;
  g.config = parse_hf_config(raw, "stablelm variant");
  g.ref.erase("logits");
  TensorMap w = load_safetensors_model(g.dir);
  for (int i = 0; i < g.config.n_layers; ++i) {
    const std::string h = "model.layers." + std::to_string(i) + ".";
    w.erase(h + "post_attention_layernorm.weight");
    w.erase(h + "post_attention_layernorm.bias");
    at::manual_seed(100 + i);
    for (int64_t j = 0; j < g.config.n_heads; ++j)
      w[h + "self_attn.q_layernorm.norms." + std::to_string(j) + ".weight"] = 1.0 + 0.5 * at::randn({g.config.d_head});
    for (int64_t j = 0; j < g.config.n_kv_heads; ++j)
      w[h + "self_attn.k_layernorm.norms." + std::to_string(j) + ".weight"] = 1.0 + 0.5 * at::randn({g.config.d_head});
  }
  Converted conv = convert(g, "stablelm", false, &w);
  ASSERT_TRUE(conv.t.count("blk.0.attn_q_norm.weight"));
  EXPECT_EQ(conv.t.at("blk.0.attn_k_norm.weight").sizes(), (at::IntArrayRef{g.config.n_kv_heads, g.config.d_head}));
  expect_same_model(g, conv, "stablelm_parallel_qk_norm", &w);

  // The residual flag and the blocks' ffn_norm must agree.
  conv.meta["stablelm.use_parallel_residual"] = boolean(false);
  TempDir tmp;
  save_gguf(tmp.file("bad.gguf"), conv.meta, conv.t);
  try {
    read_gguf_model(tmp.file("bad.gguf"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("use_parallel_residual"), std::string::npos) << e.what();
  }
}

// llama.cpp's converter writes no sliding window for StarCoder2 (and llama.cpp attends to everything):
// such a file loads with full attention.
TEST(GGUFArchStarCoder2, NoSlidingWindowKeyMeansFullAttention) {
  hf::Golden g = hf::load_golden("starcoder2");
  Converted conv = convert(g, "starcoder2", false);
  conv.meta.erase("starcoder2.attention.sliding_window");
  TempDir tmp;
  save_gguf(tmp.file("sc2.gguf"), conv.meta, conv.t);
  ModelFiles f = read_gguf_model(tmp.file("sc2.gguf"));
  EXPECT_FALSE(f.config.sliding_window.has_value());
  EXPECT_TRUE(f.config.attention_bias);
  EXPECT_FLOAT_EQ(float(f.config.norm_eps), float(g.config.norm_eps));
}

// Without `attention.scale` the Gemma 2/3 attention scale follows llama.cpp's rule (head_dim except
// for the 27B models), and Gemma 3's layer pattern is llama.cpp's fixed period of 6.
TEST(GGUFArchDefaults, GemmaScaleAndPatternFollowLlamaCpp) {
  hf::Golden g = hf::load_golden("gemma3");
  Converted conv = convert(g, "gemma3", /*write_attention_scale=*/false);
  conv.meta.erase("gemma3.attention.sliding_window_pattern");
  TempDir tmp;
  save_gguf(tmp.file("g3.gguf"), conv.meta, conv.t);
  ModelFiles f = read_gguf_model(tmp.file("g3.gguf"));
  EXPECT_DOUBLE_EQ(f.config.raw.at("query_pre_attn_scalar").get<double>(), double(g.config.d_head));
  EXPECT_EQ(f.config.layer_types, (std::vector<std::string>{"sliding_attention", "sliding_attention", "sliding_attention"}));
  EXPECT_DOUBLE_EQ(f.config.rope.at("sliding_attention").theta, 10000.0);
}

TEST(GGUFArchErrors, MissingExpertTensorIsNamed) {
  hf::Golden g = hf::load_golden("qwen3_moe");
  Converted conv = convert(g, "qwen3moe", false);
  conv.t.erase("blk.1.ffn_up_exps.weight");
  TempDir tmp;
  save_gguf(tmp.file("bad.gguf"), conv.meta, conv.t);
  try {
    read_gguf_model(tmp.file("bad.gguf"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'blk.1.ffn_up_exps.weight'"), std::string::npos) << e.what();
  }
  conv = convert(g, "qwen3moe", false);
  conv.t["blk.0.mystery.weight"] = at::zeros({2});
  save_gguf(tmp.file("extra.gguf"), conv.meta, conv.t);
  try {
    read_gguf_model(tmp.file("extra.gguf"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unexpected tensor 'blk.0.mystery.weight'"), std::string::npos) << e.what();
  }
}

}  // namespace
