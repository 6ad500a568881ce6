// IBM Granite (3.x), matched to Hugging Face transformers' GraniteForCausalLM: the Llama architecture with four
// scalars from the config: the token embedding times embedding_multiplier, each attention and MLP output times
// residual_multiplier before its residual add, attention scores scaled by attention_multiplier (instead of
// 1/sqrt(d_head)), and logits divided by logits_scaling. embed(), unembed() and unembedding_matrix() include
// the embedding and logit scalings, so lenses and attribution see the logits the model produces. The
// self_attn / mlp sites are the outputs before the residual multiplier (HF's module outputs).
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class GraniteModel : public FamilyModel {
 public:
  GraniteModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string where = "config (granite)";
    embedding_mult_ = json_float(t, "embedding_multiplier", 1.0, where);
    residual_mult_ = json_float(t, "residual_multiplier", 1.0, where);
    attention_mult_ = json_float(t, "attention_multiplier", 1.0, where);
    logits_scaling_ = json_float(t, "logits_scaling", 1.0, where);
    for (double v : {embedding_mult_, residual_mult_, attention_mult_, logits_scaling_})
      MLXTERP_CHECK(std::isfinite(v) && v > 0, where, ": embedding_multiplier, residual_multiplier, attention_multiplier ",
                    "and logits_scaling must be positive and finite; got ", v);
    init();
  }

  at::Tensor embed(const at::Tensor& ids) const override { return LlamaModel::embed(ids) * embedding_mult_; }
  at::Tensor unembed(const at::Tensor& h) const override { return LlamaModel::unembed(h) / logits_scaling_; }
  at::Tensor unembedding_matrix() const override { return head_w_.t() / logits_scaling_; }

 protected:
  blocks::AttentionOptions attention_options(int) const override {
    blocks::AttentionOptions o;
    o.scale = attention_mult_;
    return o;
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, norm(x, w.ln1));
    x = H(s.resid_mid, x + attention_block(i, h, ctx, H) * residual_mult_);
    h = H(s.post_norm, norm(x, w.ln2));
    return H(s.out, x + mlp_block(i, h, H) * residual_mult_);
  }

 private:
  double embedding_mult_ = 1, residual_mult_ = 1, attention_mult_ = 1, logits_scaling_ = 1;
};

const bool registered = register_architecture("granite", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<GraniteModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
