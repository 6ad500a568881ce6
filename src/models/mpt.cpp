// MPT (mosaicml/mpt-7b and kin), matched to Hugging Face transformers' MptForCausalLM: no position embedding but
// MPT's ALiBi (slopes 2^-(8 h / H') for H' the next power of two of the head count, interleaved when H is not a
// power of two, scaled by alibi_bias_max / 8; added to the scaled scores per key index, whatever the padding),
// pre-LayerNorm blocks without biases anywhere, a fused Wqkv ([q | k | v]) clamped to +-clip_qkv before the
// split, a 4d GELU MLP, softmax_scale (default 1/sqrt(d_head)) and a tied lm_head. Native paths
// (transformer.blocks.{i}.attn.Wqkv, .ffn.up_proj, transformer.norm_f, ...) are aliases. qk_ln is refused.
#include <cmath>

#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

// HF's build_mpt_alibi_tensor slopes: [n] float32.
at::Tensor mpt_alibi_slopes(int64_t n, double bias_max) {
  const int64_t p2 = int64_t(1) << int64_t(std::ceil(std::log2(double(n))));
  std::vector<float> s(static_cast<size_t>(p2));
  for (int64_t i = 0; i < p2; ++i)  // float32 as HF: base = (i + 1) * (bias_max / p2), slope = 1 / 2^base
    s[size_t(i)] = float(1.0 / std::pow(2.0, double(float(i + 1) * float(bias_max / p2))));
  if (p2 == n) return at::tensor(s, at::kFloat);
  std::vector<float> out;
  for (int64_t i = 1; i < p2; i += 2) out.push_back(s[size_t(i)]);
  for (int64_t i = 0; i < p2; i += 2) out.push_back(s[size_t(i)]);
  out.resize(size_t(n));
  return at::tensor(out, at::kFloat);
}

class MptModel : public FamilyModel {
 public:
  MptModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const std::string where = "config (mpt)";
    const auto& t = text_config();
    const nlohmann::json attn = t.contains("attn_config") && t["attn_config"].is_object() ? t["attn_config"]
                                                                                            : nlohmann::json::object();
    MLXTERP_CHECK(!json_bool(attn, "qk_ln", false, where), where, ": attn_config.qk_ln is not supported; expected false");
    bias_max_ = json_float(attn, "alibi_bias_max", 8.0, where);
    if (attn.contains("clip_qkv") && !attn["clip_qkv"].is_null()) clip_ = json_float(attn, "clip_qkv", 0.0, where);
    if (attn.contains("softmax_scale") && !attn["softmax_scale"].is_null())
      scale_ = json_float(attn, "softmax_scale", 0.0, where);
    MLXTERP_CHECK(std::isfinite(bias_max_) && bias_max_ > 0 && std::isfinite(clip_) && clip_ >= 0 &&
                      std::isfinite(scale_) && scale_ >= 0,
                  where, ": attn_config alibi_bias_max must be positive, clip_qkv and softmax_scale non-negative; got ",
                  attn.dump());
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where, ": d_model (", config_.d_model,
                  ") must equal n_heads x head size (", config_.n_heads, " x ", config_.d_head, ")");
    slopes_ = mpt_alibi_slopes(config_.n_heads, bias_max_);
    init();
    ropes_.clear();
  }

  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, {}, config_.norm_eps);
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    const auto& c = config_;
    const int64_t d = c.d_model, f = c.d_mlp;
    std::map<std::string, std::vector<int64_t>> out;
    out["transformer.wte.weight"] = {c.d_vocab, d};
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = "transformer.blocks." + std::to_string(i) + ".";
      out[p + "norm_1.weight"] = {d};
      out[p + "norm_2.weight"] = {d};
      out[p + "attn.Wqkv.weight"] = {3 * d, d};
      out[p + "attn.out_proj.weight"] = {d, d};
      out[p + "ffn.up_proj.weight"] = {f, d};
      out[p + "ffn.down_proj.weight"] = {d, f};
    }
    out["transformer.norm_f.weight"] = {d};
    expect_lm_head(out, d);
    return out;
  }

 protected:
  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {.fused_qkv = true});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_alias("transformer.wte", embed_site_);
    sites_.add_alias("transformer.norm_f", norm_site_);
    alias_blocks("transformer.blocks.", {{"", ""},
                                         {"norm_1", "input_layernorm"},
                                         {"attn", "self_attn"},
                                         {"attn.Wqkv", "self_attn.qkv_proj"},
                                         {"attn.out_proj", "self_attn.o_proj"},
                                         {"norm_2", "post_attention_layernorm"},
                                         {"ffn", "mlp"},
                                         {"ffn.up_proj", "mlp.up_proj"},
                                         {"ffn.act", "mlp.hidden"},
                                         {"ffn.down_proj", "mlp.down_proj"}});
    alias_blocks("blocks.", {{"mlp.hook_pre", "mlp.up_proj"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    lw_.assign(config_.n_layers, {});
    qkv_w_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = "transformer.blocks." + std::to_string(i) + ".";
      LayerWeights& l = lw_[i];
      l.ln1 = opt_weight(p + "norm_1.weight");
      l.ln2 = opt_weight(p + "norm_2.weight");
      qkv_w_[i] = opt_weight(p + "attn.Wqkv.weight");
      l.o = opt_weight(p + "attn.out_proj.weight");
      l.up = opt_weight(p + "ffn.up_proj.weight");
      l.down = opt_weight(p + "ffn.down_proj.weight");
    }
    embed_w_ = opt_weight("transformer.wte.weight");
    norm_w_ = opt_weight("transformer.norm_f.weight");
    head_w_ = lm_head_or_embedding();
  }

  void add_layer_expected(int, std::map<std::string, std::vector<int64_t>>&) const override {}

  blocks::AttentionOptions attention_options(int) const override {
    blocks::AttentionOptions o;
    o.scale = scale_;  // 0: 1/sqrt(d_head)
    return o;
  }

  at::Tensor embed_block(const at::Tensor& tok, Context& ctx, Hooks& H) override {
    // ALiBi over key indices 0 .. past + t - 1 (MPT ignores padding here): [1, H, 1, past + t].
    const int64_t total = ctx.past + ctx.t;
    at::Tensor k = at::arange(total, at::TensorOptions().dtype(at::kFloat).device(tok.device()));
    ctx.attn_bias = slopes_.to(tok.device()).view({1, -1, 1, 1}) * k.view({1, 1, 1, total});
    return H(embed_site_, at::embedding(embed_w_, tok));
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    return layer_norm_block(i, x, ctx, H);  // norm_1 / norm_2 have no bias
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    at::Tensor qkv = H(ls_[i].qkv, blocks::linear(h, qkv_w_[i], {}));  // [b, t, 3 d]
    if (clip_ > 0) qkv = qkv.clamp(-clip_, clip_);
    return split_qkv(i, qkv, ctx, H, QkvLayout::Stacked);
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const LayerWeights& w = lw_[i];
    return plain_mlp(i, h, w.up, {}, w.down, {}, H);
  }

 private:
  double bias_max_ = 8, clip_ = 0, scale_ = 0;
  at::Tensor slopes_;
  std::vector<at::Tensor> qkv_w_;
};

const bool registered = register_architecture("mpt", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<MptModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
