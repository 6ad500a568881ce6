// OLMo 2, matched to Hugging Face transformers' Olmo2ForCausalLM: no pre-norms; the attention and MLP
// outputs are normalised before their residual adds (post_attention_layernorm, post_feedforward_layernorm,
// HF's names), and q/k RMSNorm spans the whole projection (before the split into heads), so the
// self_attn.{q,k}_norm sites are [b, t, n_heads*d_head] / [b, t, n_kv_heads*d_head]. OLMo2's RMSNorm
// multiplies by the weight in float32 before casting back.
// OLMo 3 (olmo3, Olmo3ForCausalLM): OLMo 2 with layer_types (sliding-window and full layers) and rotary parameters
// per layer type (typically default for the sliding layers, yarn for the full ones; ModelConfig::rope_for_layer).
// EXAONE 4 (exaone4, Exaone4ForCausalLM): the same block with Llama's RMSNorm (weight applied after the cast
// back), per-head q/k RMSNorm (sites [b, t, H|K, dh]) and layer_types; when the config has a sliding_window,
// only the sliding layers apply the rotary embedding (the full layers have none).
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class Olmo2Model : public FamilyModel {
 public:
  Olmo2Model(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    config_.qk_norm = true;
    exaone4_ = config_.model_type == "exaone4";
    qk_norm_full_width_ = !exaone4_;
    if (exaone4_) {
      // Exaone4Attention rotates when the config has no sliding window at all, else only its sliding layers.
      const auto& t = text_config();
      const bool has_window = !t.contains("sliding_window") || !t["sliding_window"].is_null();  // absent: 4096
      no_rope_.assign(size_t(config_.n_layers), 0);
      for (int64_t i = 0; i < config_.n_layers; ++i)
        no_rope_[size_t(i)] = has_window && config_.layer_types[size_t(i)] != "sliding_attention";
    }
    init();
  }

 protected:
  at::Tensor norm(const at::Tensor& x, const at::Tensor& w) const override {
    return exaone4_ ? blocks::rms_norm(x, w, config_.norm_eps) : blocks::rms_norm_weight_f32(x, w, config_.norm_eps);
  }

  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      LayerSites& l = ls_[i];
      l.resid_pre = add_site(i, "resid_pre");
      add_attention_sites(i, l, /*fused_qkv=*/false);
      l.attn_out_norm = add_site(i, "post_attention_layernorm");
      l.resid_mid = add_site(i, "resid_mid");
      add_mlp_sites(i, l, Mlp::Gated);
      l.ff_post_norm = add_site(i, "post_feedforward_layernorm");
      l.out = add_site(i, "");
    }
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    alias_blocks("blocks.", {{"ln1_post.hook_normalized", "post_attention_layernorm"},
                             {"ln2_post.hook_normalized", "post_feedforward_layernorm"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    post_ff_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i)
      post_ff_[i] = opt_weight(layer_prefix(i) + ".post_feedforward_layernorm.weight");
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    LlamaModel::add_layer_expected(i, out);
    out.erase(layer_prefix(i) + ".input_layernorm.weight");
    out[layer_prefix(i) + ".post_feedforward_layernorm.weight"] = {config_.d_model};
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    x = H(s.resid_pre, x);
    at::Tensor a = H(s.attn_out_norm, norm(attention_block(i, x, ctx, H), w.ln2));
    x = H(s.resid_mid, x + a);
    at::Tensor m = H(s.ff_post_norm, norm(mlp_block(i, x, H), post_ff_[i]));
    return H(s.out, x + m);
  }

 private:
  std::vector<at::Tensor> post_ff_;
  bool exaone4_ = false;
};

const bool registered = [] {
  for (const char* a : {"olmo2", "olmo3", "exaone4"})
    register_architecture(a, [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<Olmo2Model>(c, std::move(w));
    });
  return true;
}();

}  // namespace
}  // namespace mlxterp
