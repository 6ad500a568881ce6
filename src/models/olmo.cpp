// OLMo (1; the transformers-format checkpoints such as allenai/OLMo-1B-hf, OLMo-7B-0424-hf), matched to Hugging
// Face transformers' OlmoForCausalLM: the Llama architecture with LayerNorms that have no weight or bias (eps
// 1e-5, computed in float32) in place of RMSNorm, and q/k/v clamped to [-clip_qkv, clip_qkv] after their
// projections when the config sets clip_qkv (the self_attn.{q,k,v}_proj sites hold the projections before the
// clamp, so an edit there is clamped as HF clamps a hooked module's output).
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class OlmoModel : public FamilyModel {
 public:
  OlmoModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    if (t.contains("clip_qkv") && !t["clip_qkv"].is_null()) {
      clip_ = json_float(t, "clip_qkv", 0.0, "config (olmo)");
      MLXTERP_CHECK(std::isfinite(clip_) && clip_ > 0, "config (olmo): clip_qkv must be positive (or null for none); got ",
                    clip_);
    }
    init();
  }

  at::Tensor final_norm(const at::Tensor& h) const override { return norm(h, {}); }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    auto out = LlamaModel::expected_weights();
    out.erase("model.norm.weight");
    return out;
  }

 protected:
  // OlmoLayerNorm: F.layer_norm in float32 without parameters, eps 1e-5, cast back.
  at::Tensor norm(const at::Tensor& x, const at::Tensor&) const override {
    return at::layer_norm(x.to(at::kFloat), {x.size(-1)}, {}, {}, 1e-5).to(x.scalar_type());
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    LlamaModel::add_layer_expected(i, out);
    out.erase(layer_prefix(i) + ".input_layernorm.weight");
    out.erase(layer_prefix(i) + ".post_attention_layernorm.weight");
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    QKV p = LlamaModel::qkv(i, h, ctx, H);
    if (clip_ > 0) {
      p.q = p.q.clamp(-clip_, clip_);
      p.k = p.k.clamp(-clip_, clip_);
      p.v = p.v.clamp(-clip_, clip_);
    }
    return p;
  }

 private:
  double clip_ = 0;  // 0: no clamp
};

const bool registered = register_architecture("olmo", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<OlmoModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
