// GLM-4 (THUDM/glm-4-9b-hf, model_type "glm") and GLM-4-0414 ("glm4"), matched to Hugging Face transformers'
// GlmForCausalLM / Glm4ForCausalLM: the Llama layout with q/k/v biases (o_proj without), a fused gate_up_proj
// (sites mlp.gate_up_proj and its halves), and rotary embedding on the first partial_rotary_factor of each head
// in the interleaved convention (adjacent pairs). glm4 adds RMSNorms on the attention and MLP outputs before
// their residual adds (post_self_attn_layernorm, post_mlp_layernorm: sites of the same names).
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class GlmModel : public FamilyModel {
 public:
  GlmModel(const ModelConfig& c, TensorMap w, bool post_norms) : FamilyModel(c, std::move(w)), post_norms_(post_norms) {
    init();
    for (auto& r : ropes_) r.interleaved = true;
  }

 protected:
  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      if (!post_norms_) {
        add_block_sites(i, {.mlp = Mlp::FusedGated});
        continue;
      }
      LayerSites& l = ls_[i];
      l.resid_pre = add_site(i, "resid_pre");
      l.input_norm = add_site(i, "input_layernorm");
      add_attention_sites(i, l, /*fused_qkv=*/false);
      l.attn_out_norm = add_site(i, "post_self_attn_layernorm");
      l.resid_mid = add_site(i, "resid_mid");
      l.post_norm = add_site(i, "post_attention_layernorm");
      add_mlp_sites(i, l, Mlp::FusedGated);
      l.ff_post_norm = add_site(i, "post_mlp_layernorm");
      l.out = add_site(i, "");
    }
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    gate_up_w_.assign(config_.n_layers, {});
    post_w_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = layer_prefix(i) + ".";
      gate_up_w_[i] = opt_weight(p + "mlp.gate_up_proj.weight");
      post_w_[i] = {opt_weight(p + "post_self_attn_layernorm.weight"), opt_weight(p + "post_mlp_layernorm.weight")};
    }
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    LlamaModel::add_layer_expected(i, out);
    const std::string p = layer_prefix(i) + ".";
    out.erase(p + "mlp.gate_proj.weight");
    out.erase(p + "mlp.up_proj.weight");
    out[p + "mlp.gate_up_proj.weight"] = {2 * config_.d_mlp, config_.d_model};
    if (post_norms_) {
      out[p + "post_self_attn_layernorm.weight"] = {config_.d_model};
      out[p + "post_mlp_layernorm.weight"] = {config_.d_model};
    }
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    if (!post_norms_) return LlamaModel::block(i, x, ctx, H);
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, norm(x, w.ln1));
    at::Tensor a = H(s.attn_out_norm, norm(attention_block(i, h, ctx, H), post_w_[i].first));
    x = H(s.resid_mid, x + a);
    h = H(s.post_norm, norm(x, w.ln2));
    at::Tensor m = H(s.ff_post_norm, norm(mlp_block(i, h, H), post_w_[i].second));
    return H(s.out, x + m);
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    return fused_gated_mlp(i, h, gate_up_w_[i], lw_[i].down, H);
  }

 private:
  bool post_norms_ = false;
  std::vector<at::Tensor> gate_up_w_;
  std::vector<std::pair<at::Tensor, at::Tensor>> post_w_;  // post_self_attn_layernorm, post_mlp_layernorm
};

const bool registered = [] {
  register_architecture("glm", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
    return std::make_unique<GlmModel>(c, std::move(w), /*post_norms=*/false);
  });
  register_architecture("glm4", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
    return std::make_unique<GlmModel>(c, std::move(w), /*post_norms=*/true);
  });
  return true;
}();

}  // namespace
}  // namespace mlxterp
