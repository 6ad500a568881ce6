// The Gemma family (text models), matched to Hugging Face transformers:
//   Gemma 1: embeddings scaled by sqrt(d_model) (rounded to the model dtype), RMSNorm with (1 + w),
//            GeGLU MLP (gelu_pytorch_tanh), tied embeddings.
//   Gemma 2: + sandwich norms (post_attention_layernorm on the attention output, pre/post_feedforward_layernorm
//            around the MLP), attention logit soft-capping, final logit soft-capping, alternating
//            sliding-window layers, attention scale query_pre_attn_scalar^-0.5.
//   Gemma 3: Gemma 2 without soft-capping by default, + per-head q/k RMSNorm (1 + w), per-layer-type RoPE
//            (local layers: their own base, no scaling).
// Sites follow HF's module names; Gemma 2/3's extra norms are `post_attention_layernorm` (attention output),
// `pre_feedforward_layernorm` (MLP input) and `post_feedforward_layernorm` (MLP output), with the
// TransformerLens names ln2 / ln1_post / ln2_post as aliases.
#include <cmath>

#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class GemmaModel : public FamilyModel {
 public:
  GemmaModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string& mt = config_.model_type;
    version_ = (mt == "gemma2") ? 2 : (mt == "gemma3" || mt == "gemma3_text") ? 3 : 1;
    const std::string where = "config (" + mt + ")";
    // Gemma's MLP uses `hidden_activation`; checkpoints that only say hidden_act="gelu" were trained
    // with the tanh approximation (HF falls back to gelu_pytorch_tanh for them).
    std::string act = json_string(t, "hidden_activation", "", where);
    if (act.empty()) act = config_.hidden_act == "gelu" || config_.hidden_act.empty() ? "gelu_pytorch_tanh" : config_.hidden_act;
    config_.hidden_act = act;
    if (version_ >= 2) {
      query_scale_ = 1.0 / std::sqrt(json_float(t, "query_pre_attn_scalar", double(config_.d_head), where));
      if (t.contains("attn_logit_softcapping") && !t["attn_logit_softcapping"].is_null())
        attn_softcap_ = json_float(t, "attn_logit_softcapping", 0, where);
      if (t.contains("final_logit_softcapping") && !t["final_logit_softcapping"].is_null())
        final_softcap_ = json_float(t, "final_logit_softcapping", 0, where);
      MLXTERP_CHECK(!attn_softcap_ || *attn_softcap_ > 0, where, ": attn_logit_softcapping must be > 0, got ",
                    *attn_softcap_);
      MLXTERP_CHECK(!final_softcap_ || *final_softcap_ > 0, where, ": final_logit_softcapping must be > 0, got ",
                    *final_softcap_);
    }
    init();
  }

  at::Tensor embed(const at::Tensor& ids) const override {
    at::Tensor x = at::embedding(embed_w_, ids.to(embed_w_.device()));
    // HF multiplies by sqrt(hidden_size) held in the activation dtype.
    return x * at::scalar_tensor(std::sqrt(double(config_.d_model)), x.options());
  }
  at::Tensor unembed(const at::Tensor& h) const override {
    at::Tensor logits = at::linear(h, head_w_);
    return final_softcap_ ? blocks::softcap(logits, *final_softcap_) : logits;
  }

 protected:
  at::Tensor norm(const at::Tensor& x, const at::Tensor& w) const override {
    return blocks::rms_norm(x, w, config_.norm_eps, /*plus_one=*/true);
  }

  blocks::AttentionOptions attention_options(int) const override {
    blocks::AttentionOptions o;
    if (version_ >= 2) o.scale = query_scale_;
    o.softcap = attn_softcap_;
    return o;
  }

  void build_sites() override {
    if (version_ == 1) {
      LlamaModel::build_sites();
      return;
    }
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      LayerSites& l = ls_[i];
      l.resid_pre = add_site(i, "resid_pre");
      l.input_norm = add_site(i, "input_layernorm");
      add_attention_sites(i, l, /*fused_qkv=*/false);
      l.attn_out_norm = add_site(i, "post_attention_layernorm");
      l.resid_mid = add_site(i, "resid_mid");
      l.ff_pre_norm = add_site(i, "pre_feedforward_layernorm");
      add_mlp_sites(i, l, Mlp::Gated);
      l.ff_post_norm = add_site(i, "post_feedforward_layernorm");
      l.out = add_site(i, "");
    }
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    // TransformerLens (Gemma 2): ln2 is the MLP-input norm, ln1_post / ln2_post the sandwich norms.
    alias_blocks("blocks.", {{"ln2.hook_normalized", "pre_feedforward_layernorm"},
                             {"ln1_post.hook_normalized", "post_attention_layernorm"},
                             {"ln2_post.hook_normalized", "post_feedforward_layernorm"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    pre_ff_.assign(config_.n_layers, {});
    post_ff_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      pre_ff_[i] = opt_weight(layer_prefix(i) + ".pre_feedforward_layernorm.weight");
      post_ff_[i] = opt_weight(layer_prefix(i) + ".post_feedforward_layernorm.weight");
    }
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    LlamaModel::add_layer_expected(i, out);
    if (version_ >= 2) {
      out[layer_prefix(i) + ".pre_feedforward_layernorm.weight"] = {config_.d_model};
      out[layer_prefix(i) + ".post_feedforward_layernorm.weight"] = {config_.d_model};
    }
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    if (version_ == 1) return LlamaModel::block(i, std::move(x), ctx, H);
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, norm(x, w.ln1));
    at::Tensor a = H(s.attn_out_norm, norm(attention_block(i, h, ctx, H), w.ln2));
    x = H(s.resid_mid, x + a);
    h = H(s.ff_pre_norm, norm(x, pre_ff_[i]));
    at::Tensor m = H(s.ff_post_norm, norm(mlp_block(i, h, H), post_ff_[i]));
    return H(s.out, x + m);
  }

 private:
  int version_ = 1;
  double query_scale_ = 0;
  std::optional<double> attn_softcap_, final_softcap_;
  std::vector<at::Tensor> pre_ff_, post_ff_;
};

std::unique_ptr<Model> make_gemma(const ModelConfig& c, TensorMap w) {
  return std::make_unique<GemmaModel>(c, std::move(w));
}

const bool registered = [] {
  for (const char* a : {"gemma", "gemma2", "gemma3"}) register_architecture(a, make_gemma);
  return true;
}();

}  // namespace
}  // namespace mlxterp
