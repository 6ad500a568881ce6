// GPT-2, matched to Hugging Face transformers' GPT2LMHeadModel: learned absolute positions, pre-LayerNorm
// blocks with biases, Conv1D projections (weights stored [in, out]; we keep the checkpoint's tensors and
// multiply by their transposed views), fused c_attn (exposed as self_attn.qkv_proj and split into
// self_attn.{q,k,v}_proj sites), a plain GELU MLP (mlp.up_proj = c_fc, mlp.hidden = act, mlp.down_proj = c_proj),
// tied unembedding. Options: scale_attn_weights, scale_attn_by_inverse_layer_idx.
// Native module paths (transformer.h.{i}.attn, transformer.wte, ...) are aliases of the canonical sites.
#include <cmath>

#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class GPT2Model : public FamilyModel {
 public:
  GPT2Model(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string where = "config (gpt2)";
    scale_weights_ = json_bool(t, "scale_attn_weights", true, where);
    scale_by_layer_ = json_bool(t, "scale_attn_by_inverse_layer_idx", false, where);
    MLXTERP_CHECK(config_.n_kv_heads == config_.n_heads, where, ": GPT-2 has no grouped-query attention; expected ",
                  "num_key_value_heads == n_head, got ", config_.n_kv_heads, " vs ", config_.n_heads);
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where, ": n_embd (", config_.d_model,
                  ") must equal n_head x head_dim");
    // Checkpoints saved from GPT2Model (openai-community/gpt2 itself) have no "transformer." prefix.
    prefix_ = has_weight("wte.weight") && !has_weight("transformer.wte.weight") ? "" : "transformer.";
    init();
    ropes_.clear();  // learned positions, no rotary embedding
  }

  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps);
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    const auto& c = config_;
    const int64_t d = c.d_model, f = c.d_mlp;
    std::map<std::string, std::vector<int64_t>> out;
    const std::string& P = prefix_;
    out[P + "wte.weight"] = {c.d_vocab, d};
    out[P + "wpe.weight"] = {c.n_ctx, d};
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = P + "h." + std::to_string(i) + ".";
      for (const char* ln : {"ln_1", "ln_2"}) {
        out[p + ln + ".weight"] = {d};
        out[p + ln + ".bias"] = {d};
      }
      out[p + "attn.c_attn.weight"] = {d, 3 * d};  // Conv1D: [in, out]
      out[p + "attn.c_attn.bias"] = {3 * d};
      out[p + "attn.c_proj.weight"] = {d, d};
      out[p + "attn.c_proj.bias"] = {d};
      out[p + "mlp.c_fc.weight"] = {d, f};
      out[p + "mlp.c_fc.bias"] = {f};
      out[p + "mlp.c_proj.weight"] = {f, d};
      out[p + "mlp.c_proj.bias"] = {d};
    }
    out[P + "ln_f.weight"] = {d};
    out[P + "ln_f.bias"] = {d};
    // Tied checkpoints usually omit lm_head; one that carries it anyway is used as given.
    expect_lm_head(out, d);
    return out;
  }

 protected:
  struct Extra {
    at::Tensor c_attn_t, c_attn_b, c_fc_t, c_fc_b, c_proj_t, c_proj_b;
  };

  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    pos_site_ = add_site(-1, "model.embed_positions");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {.fused_qkv = true});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_alias("transformer.wte", embed_site_);
    sites_.add_alias("transformer.wpe", pos_site_);
    sites_.add_alias("hook_pos_embed", pos_site_);
    sites_.add_alias("transformer.ln_f", norm_site_);
    alias_blocks("transformer.h.", gpt2_block_paths());
    // TransformerLens: a non-gated MLP's pre-activation is hook_pre.
    alias_blocks("blocks.", {{"mlp.hook_pre", "mlp.up_proj"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    lw_.assign(config_.n_layers, {});
    ex_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = prefix_ + "h." + std::to_string(i) + ".";
      LayerWeights& l = lw_[i];
      Extra& e = ex_[i];
      l.ln1 = opt_weight(p + "ln_1.weight");
      l.ln1_b = opt_weight(p + "ln_1.bias");
      l.ln2 = opt_weight(p + "ln_2.weight");
      l.ln2_b = opt_weight(p + "ln_2.bias");
      auto t = [&](const std::string& n) {
        at::Tensor x = opt_weight(p + n);
        return x.defined() ? x.t() : x;  // Conv1D [in, out] -> Linear layout [out, in] (a view)
      };
      e.c_attn_t = t("attn.c_attn.weight");
      e.c_attn_b = opt_weight(p + "attn.c_attn.bias");
      l.o = t("attn.c_proj.weight");
      l.ob = opt_weight(p + "attn.c_proj.bias");
      e.c_fc_t = t("mlp.c_fc.weight");
      e.c_fc_b = opt_weight(p + "mlp.c_fc.bias");
      e.c_proj_t = t("mlp.c_proj.weight");
      e.c_proj_b = opt_weight(p + "mlp.c_proj.bias");
    }
    embed_w_ = opt_weight(prefix_ + "wte.weight");
    wpe_ = opt_weight(prefix_ + "wpe.weight");
    norm_w_ = opt_weight(prefix_ + "ln_f.weight");
    norm_b_ = opt_weight(prefix_ + "ln_f.bias");
    head_w_ = lm_head_or_embedding();
  }

  void add_layer_expected(int, std::map<std::string, std::vector<int64_t>>&) const override {}

  blocks::AttentionOptions attention_options(int i) const override {
    blocks::AttentionOptions o;
    o.scale = (scale_weights_ ? 1.0 / std::sqrt(double(config_.d_head)) : 1.0) / (scale_by_layer_ ? double(i + 1) : 1.0);
    return o;
  }

  at::Tensor embed_block(const at::Tensor& tok, Context& ctx, Hooks& H) override {
    at::Tensor x = H(embed_site_, at::embedding(embed_w_, tok));
    return x + learned_positions(ctx, H, wpe_, pos_site_, 0, "gpt2");
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    return layer_norm_block(i, x, ctx, H);
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const Extra& e = ex_[i];
    at::Tensor qkv = H(s.qkv, blocks::linear(h, e.c_attn_t, e.c_attn_b));  // [b, t, 3 d_model]
    return split_qkv(i, qkv, ctx, H, QkvLayout::Stacked);
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const Extra& e = ex_[i];
    return plain_mlp(i, h, e.c_fc_t, e.c_fc_b, e.c_proj_t, e.c_proj_b, H);
  }

 private:
  bool scale_weights_ = true, scale_by_layer_ = false;
  std::string prefix_ = "transformer.";
  int pos_site_ = -1;
  at::Tensor wpe_, norm_b_;
  std::vector<Extra> ex_;
};

const bool registered = register_architecture("gpt2", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<GPT2Model>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
