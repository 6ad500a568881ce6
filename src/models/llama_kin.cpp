// Llama relatives, each matched to its Hugging Face transformers 5.17 class; what differs from Llama:
//   arcee             ArceeForCausalLM: a non-gated ReLU² MLP (up_proj -> relu2 -> down_proj); attention_bias also
//                     biases o_proj (as Llama).
//   seed_oss          SeedOssForCausalLM: q/k/v bias (attention_bias, default true); o_proj biased only with
//                     attention_out_bias; head_dim defaults to 128.
//   ministral         MinistralForCausalLM: Mistral whose layer_types pick sliding or full attention per layer;
//                     no biases whatever the config says.
//   helium            HeliumForCausalLM: rotary on interleaved pairs, q/k/v bias (attention_bias), o_proj without;
//                     RMSNorm multiplies by its weight in float32.
//   ernie4_5          Ernie4_5ForCausalLM: rotary on interleaved pairs computed in float32; use_bias on every linear
//                     (q/k/v/o and the MLP); tied embeddings by default.
//   hunyuan_v1_dense  HunYuanDenseV1ForCausalLM: per-head q/k RMSNorm AFTER the rotary (weights and native sites
//                     self_attn.query_layernorm / key_layernorm); "dynamic" rotary with NTK alpha (blocks.cpp).
//   nemotron          NemotronForCausalLM: LayerNorm1p (LayerNorm with weight + 1 and a bias) everywhere, the ReLU²
//                     non-gated MLP, partial rotary (default half of each head).
//   apertus           ApertusForCausalLM: xIELU non-gated MLP (learned mlp.act_fn.alpha_p / alpha_n per layer),
//                     per-head q/k RMSNorm before the rotary, norms named attention_layernorm /
//                     feedforward_layernorm (aliases of input_layernorm / post_attention_layernorm).
// Non-gated MLPs have the sites mlp.up_proj -> mlp.hidden (alias mlp.act_fn) -> mlp.down_proj.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

// What one family changes in the Llama block.
struct Kin {
  bool plain_mlp = false;           // up -> act -> down, no gate
  bool o_bias = false;              // o_proj has a bias
  bool interleaved = false;         // rotary on adjacent pairs (Helium, ERNIE)
  bool norm_weight_f32 = false;     // RMSNorm weight applied in float32 (Helium)
  bool qk_norm_after_rope = false;  // HunYuan
  bool layer_norm_1p = false;       // Nemotron
  bool apertus = false;             // native norm names; xIELU when hidden_act is "xielu"
};

class LlamaKinModel : public FamilyModel {
 public:
  LlamaKinModel(const ModelConfig& c, TensorMap w, Kin k) : FamilyModel(c, std::move(w)), k_(k) {
    const std::string where = "config (" + config_.model_type + ")";
    xielu_ = k_.apertus && config_.hidden_act == "xielu";
    if (!xielu_) blocks::activation(config_.hidden_act, at::zeros({1}));  // an unknown name fails here, not mid-forward
    if (config_.model_type == "helium")  // HF's o_proj is Linear(hidden_size, hidden_size)
      MLXTERP_CHECK(config_.n_heads * config_.d_head == config_.d_model, where,
                    ": Helium needs num_attention_heads x head_dim == hidden_size (its o_proj is hidden_size wide); "
                    "expected ", config_.d_model, ", got ", config_.n_heads, " x ", config_.d_head);
    init();
    if (k_.interleaved)
      for (auto& r : ropes_) r.interleaved = true;
    // HunYuan rotates inside qkv() (before its q/k norms), so attend() must not rotate again.
    if (k_.qk_norm_after_rope) no_rope_.assign(size_t(config_.n_layers), 1);
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    auto out = LlamaModel::expected_weights();
    if (k_.layer_norm_1p) out["model.norm.bias"] = {config_.d_model};
    return out;
  }

  at::Tensor final_norm(const at::Tensor& h) const override {
    return k_.layer_norm_1p ? layer_norm_1p(h, norm_w_, norm_b_) : norm(h, norm_w_);
  }

 protected:
  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {.mlp = k_.plain_mlp ? Mlp::Plain : Mlp::Gated});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    std::vector<std::pair<std::string, std::string>> native;  // HF module path -> canonical component
    if (k_.plain_mlp) native.emplace_back("mlp.act_fn", "mlp.hidden");
    if (k_.qk_norm_after_rope) {
      native.emplace_back("self_attn.query_layernorm", "self_attn.q_norm");
      native.emplace_back("self_attn.key_layernorm", "self_attn.k_norm");
    }
    if (k_.apertus) {
      native.emplace_back("attention_layernorm", "input_layernorm");
      native.emplace_back("feedforward_layernorm", "post_attention_layernorm");
    }
    if (!native.empty()) alias_blocks("model.layers.", native);
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    post_qk_.assign(config_.n_layers, {});
    act_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = layer_prefix(i) + ".";
      if (k_.qk_norm_after_rope)  // kept out of lw_[i].qn / kn so that LlamaModel::qkv does not norm before the rotary
        post_qk_[i] = {opt_weight(p + "self_attn.query_layernorm.weight"), opt_weight(p + "self_attn.key_layernorm.weight")};
      if (k_.apertus) {
        lw_[i].ln1 = opt_weight(p + "attention_layernorm.weight");
        lw_[i].ln2 = opt_weight(p + "feedforward_layernorm.weight");
      }
      if (xielu_) {
        XieluParams& a = act_[i];
        a.alpha_p = opt_weight(p + "mlp.act_fn.alpha_p");
        a.alpha_n = opt_weight(p + "mlp.act_fn.alpha_n");
        // beta and eps are buffers: in the checkpoint as HF saves them, else XIELUActivation's defaults.
        const auto o = lw_[i].up.defined() ? lw_[i].up.options() : at::TensorOptions().dtype(at::kFloat);
        a.beta = opt_weight(p + "mlp.act_fn.beta");
        a.eps = opt_weight(p + "mlp.act_fn.eps");
        if (!a.beta.defined()) a.beta = at::scalar_tensor(0.5, o);
        if (!a.eps.defined()) a.eps = at::scalar_tensor(-1e-6, o);
      }
    }
    norm_b_ = opt_weight("model.norm.bias");
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    LlamaModel::add_layer_expected(i, out);
    const std::string p = layer_prefix(i) + ".";
    const int64_t d = config_.d_model;
    auto rename = [&](const std::string& from, const std::string& to) {
      auto it = out.find(p + from);
      if (it == out.end()) return;
      auto shape = it->second;
      out.erase(it);
      out[p + to] = shape;
    };
    out.erase(p + "self_attn.o_proj.bias");
    if (k_.o_bias) out[p + "self_attn.o_proj.bias"] = {d};
    if (k_.plain_mlp) {
      out.erase(p + "mlp.gate_proj.weight");
      out.erase(p + "mlp.gate_proj.bias");
    }
    if (k_.layer_norm_1p) {
      out[p + "input_layernorm.bias"] = {d};
      out[p + "post_attention_layernorm.bias"] = {d};
    }
    if (k_.qk_norm_after_rope) {
      rename("self_attn.q_norm.weight", "self_attn.query_layernorm.weight");
      rename("self_attn.k_norm.weight", "self_attn.key_layernorm.weight");
    }
    if (k_.apertus) {
      rename("input_layernorm.weight", "attention_layernorm.weight");
      rename("post_attention_layernorm.weight", "feedforward_layernorm.weight");
    }
    if (xielu_) {
      out[p + "mlp.act_fn.alpha_p"] = {1};
      out[p + "mlp.act_fn.alpha_n"] = {1};
      for (const char* buf : {"mlp.act_fn.beta", "mlp.act_fn.eps"})  // optional buffers (scalars)
        if (weights_.count(p + buf)) out[p + buf] = {};
    }
  }

  at::Tensor norm(const at::Tensor& x, const at::Tensor& w) const override {
    return k_.norm_weight_f32 ? blocks::rms_norm_weight_f32(x, w, config_.norm_eps) : LlamaModel::norm(x, w);
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    if (!k_.layer_norm_1p) return LlamaModel::block(i, x, ctx, H);
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, layer_norm_1p(x, w.ln1, w.ln1_b));
    x = H(s.resid_mid, x + attention_block(i, h, ctx, H));
    h = H(s.post_norm, layer_norm_1p(x, w.ln2, w.ln2_b));
    return H(s.out, x + mlp_block(i, h, H));
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    QKV p = LlamaModel::qkv(i, h, ctx, H);  // [b, t, heads, dh]; HunYuan: not normed yet
    if (!k_.qk_norm_after_rope) return p;
    const LayerSites& s = ls_[i];
    auto [q, k] = rotate(i, p.q.transpose(1, 2), p.k.transpose(1, 2), ctx);  // [b, heads, t, dh]
    p.q = H(s.q_norm, norm(q.transpose(1, 2), post_qk_[i].first));          // [b, t, H, dh]
    p.k = H(s.k_norm, norm(k.transpose(1, 2), post_qk_[i].second));         // [b, t, K, dh]
    return p;
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const LayerWeights& w = lw_[i];
    if (!k_.plain_mlp) return LlamaModel::mlp_block(i, h, H);
    if (!xielu_) return plain_mlp(i, h, w.up, w.up_b, w.down, w.down_b, H);
    const LayerSites& s = ls_[i];
    const XieluParams& a = act_[i];
    at::Tensor u = H(s.up, blocks::linear(h, w.up, w.up_b));  // [b, t, d_mlp]
    at::Tensor hid = H(s.hidden, blocks::xielu(u, a.alpha_p, a.alpha_n, a.beta, a.eps));
    return H(s.mlp, H(s.down, blocks::linear(hid, w.down, w.down_b)));  // [b, t, d_model]
  }

 private:
  // NemotronLayerNorm1P: LayerNorm with weight + 1 (in the weight's dtype) and a bias. [..., d] -> [..., d]
  at::Tensor layer_norm_1p(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const {
    return blocks::layer_norm(x, w + 1.0, b, config_.norm_eps);
  }

  struct XieluParams {
    at::Tensor alpha_p, alpha_n, beta, eps;  // [1], [1], [], []
  };
  Kin k_;
  bool xielu_ = false;
  std::vector<std::pair<at::Tensor, at::Tensor>> post_qk_;  // HunYuan's query_layernorm, key_layernorm [dh]
  std::vector<XieluParams> act_;                            // Apertus, per layer
  at::Tensor norm_b_;                                       // Nemotron's final norm bias
};

Kin kin_of(const ModelConfig& c) {
  const std::string& m = c.model_type;
  Kin k;
  if (m == "arcee" || m == "nemotron" || m == "apertus") k.plain_mlp = true;
  if (m == "arcee" || m == "ernie4_5" || m == "hunyuan_v1_dense" || m == "nemotron" || m == "apertus")
    k.o_bias = c.attention_bias;
  if (m == "seed_oss") {
    const nlohmann::json& t = c.raw.contains("text_config") ? c.raw["text_config"] : c.raw;
    k.o_bias = json_bool(t, "attention_out_bias", false, "config (seed_oss)");
  }
  k.interleaved = m == "helium" || m == "ernie4_5";
  k.norm_weight_f32 = m == "helium";
  k.qk_norm_after_rope = m == "hunyuan_v1_dense";
  k.layer_norm_1p = m == "nemotron";
  k.apertus = m == "apertus";
  return k;
}

const bool registered = [] {
  for (const char* a : {"arcee", "seed_oss", "ministral", "helium", "ernie4_5", "hunyuan_v1_dense", "nemotron", "apertus"})
    register_architecture(a, [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<LlamaKinModel>(c, std::move(w), kin_of(c));
    });
  return true;
}();

}  // namespace
}  // namespace mlxterp
