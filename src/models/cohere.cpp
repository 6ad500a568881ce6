// Cohere Command-R / Aya (CohereForCausalLM in Hugging Face transformers): one bias-free LayerNorm (mean-centred,
// weight only, computed in float32) feeding attention and MLP in parallel (x + attn(ln(x)) + mlp(ln(x)), no
// resid_mid and no post_attention_layernorm site), the interleaved rotary convention (adjacent pairs, as
// GPT-J), a SwiGLU MLP, a tied lm_head and logits multiplied by logit_scale (included in unembed() and
// unembedding_matrix()). Command-R+'s per-head q/k LayerNorm (use_qk_norm) is refused with a clear error.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class CohereModel : public FamilyModel {
 public:
  CohereModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string where = "config (cohere)";
    MLXTERP_CHECK(!json_bool(t, "use_qk_norm", false, where), where, ": use_qk_norm (Command-R+'s per-head q/k ",
                  "LayerNorm) is not supported yet; expected use_qk_norm: false");
    logit_scale_ = json_float(t, "logit_scale", 0.0625, where);
    MLXTERP_CHECK(std::isfinite(logit_scale_), where, ": logit_scale must be finite; got ", logit_scale_);
    init();
    for (auto& r : ropes_) r.interleaved = true;
  }

  at::Tensor final_norm(const at::Tensor& h) const override { return norm(h, norm_w_); }
  at::Tensor unembed(const at::Tensor& h) const override { return LlamaModel::unembed(h) * logit_scale_; }
  at::Tensor unembedding_matrix() const override { return head_w_.t() * logit_scale_; }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    auto out = LlamaModel::expected_weights();
    for (int i = 0; i < config_.n_layers; ++i) out.erase(layer_prefix(i) + ".post_attention_layernorm.weight");
    return out;
  }

 protected:
  // CohereLayerNorm: (x - mean) / sqrt(var + eps) * w in float32, cast back.
  at::Tensor norm(const at::Tensor& x, const at::Tensor& w) const override {
    at::Tensor y = at::layer_norm(x.to(at::kFloat), {x.size(-1)}, {}, {}, config_.norm_eps);
    return (w.defined() ? y * w.to(at::kFloat) : y).to(x.scalar_type());
  }

  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i)
      add_block_sites(i, {.resid_mid = false, .post_norm = false, .mlp = Mlp::Gated});  // parallel block
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, norm(x, lw_[i].ln1));
    at::Tensor a = attention_block(i, h, ctx, H);
    at::Tensor m = mlp_block(i, h, H);
    return H(s.out, x + a + m);  // HF's order of the sum
  }

 private:
  double logit_scale_ = 1;
};

const bool registered = register_architecture("cohere", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<CohereModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
