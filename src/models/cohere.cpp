// Cohere Command-R / Aya / Command-R+ (CohereForCausalLM in Hugging Face transformers) and Command-R7B /
// Command-A (cohere2, Cohere2ForCausalLM): one bias-free LayerNorm (mean-centred, weight only, computed in
// float32) feeding attention and MLP in parallel (x + attn(ln(x)) + mlp(ln(x)), no resid_mid and no
// post_attention_layernorm site), the interleaved rotary convention (adjacent pairs, as GPT-J), a SwiGLU MLP,
// a tied lm_head and logits multiplied by logit_scale (included in unembed() and unembedding_matrix()).
// Command-R+ (use_qk_norm): the same LayerNorm on each head of q and k, with one weight row per head
// (q_norm [H, dh], k_norm [K, dh]; sites self_attn.{q,k}_norm [b, t, H|K, dh]), before the rotary.
// cohere2: layer_types of sliding-window and full layers; only the sliding layers apply the rotary
// embedding (full layers have none), and head_dim is always hidden_size / num_attention_heads.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class CohereModel : public FamilyModel {
 public:
  CohereModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string where = "config (cohere)";
    logit_scale_ = json_float(t, "logit_scale", 0.0625, where);
    MLXTERP_CHECK(std::isfinite(logit_scale_), where, ": logit_scale must be finite; got ", logit_scale_);
    if (config_.model_type == "cohere2") {
      // Cohere2Config derives head_dim = hidden_size // num_attention_heads, whatever the config says.
      config_.d_head = config_.d_model / config_.n_heads;
      // Cohere2Attention rotates only where it has a sliding window: sliding layers of a config with one.
      const bool has_window = t.contains("sliding_window") && !t["sliding_window"].is_null();
      no_rope_.assign(size_t(config_.n_layers), 0);
      for (int64_t i = 0; i < config_.n_layers; ++i)
        no_rope_[size_t(i)] = !(has_window && config_.layer_types[size_t(i)] == "sliding_attention");
    } else {
      config_.qk_norm = json_bool(t, "use_qk_norm", false, where);  // Command-R+
    }
    init();
    for (auto& r : ropes_) r.interleaved = true;
  }

  at::Tensor final_norm(const at::Tensor& h) const override { return norm(h, norm_w_); }
  at::Tensor unembed(const at::Tensor& h) const override { return LlamaModel::unembed(h) * logit_scale_; }
  at::Tensor unembedding_matrix() const override { return head_w_.t() * logit_scale_; }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    auto out = LlamaModel::expected_weights();
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = layer_prefix(i) + ".";
      out.erase(p + "post_attention_layernorm.weight");
      if (config_.qk_norm) {  // one LayerNorm weight row per head
        out[p + "self_attn.q_norm.weight"] = {config_.n_heads, config_.d_head};
        out[p + "self_attn.k_norm.weight"] = {config_.n_kv_heads, config_.d_head};
      }
      if (config_.attention_bias) out[p + "self_attn.o_proj.bias"] = {config_.d_model};
    }
    return out;
  }

 protected:
  // CohereLayerNorm: (x - mean) / sqrt(var + eps) * w in float32, cast back; over the last dim of x [..., n],
  // w [n] or, for the per-head q/k norms, [heads, dh] against x [b, t, heads, dh].
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

const bool registered = [] {
  for (const char* a : {"cohere", "cohere2"})
    register_architecture(a, [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<CohereModel>(c, std::move(w));
    });
  return true;
}();

}  // namespace
}  // namespace mlxterp
