// GPTBigCode (SantaCoder, StarCoder 1, tiny_starcoder), matched to Hugging Face transformers'
// GPTBigCodeForCausalLM: GPT-2's pre-LayerNorm blocks and learned positions with Linear (not Conv1D) weights and
// multi-query attention: c_attn gives [q (H dh) | k (dh) | v (dh)], one key/value head shared by every query
// head (multi_query = false: GPT-2's layout per head, [q | k | v] of each head). scale_attn_weights as GPT-2.
// Tied lm_head. Native paths (transformer.h.{i}.attn.c_attn, ...) are aliases of the canonical sites.
#include <cmath>

#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class GPTBigCodeModel : public FamilyModel {
 public:
  GPTBigCodeModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const std::string where = "config (gpt_bigcode)";
    scale_weights_ = json_bool(text_config(), "scale_attn_weights", true, where);
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where, ": n_embd (", config_.d_model,
                  ") must equal n_head x head size (", config_.n_heads, " x ", config_.d_head, ")");
    init();
    ropes_.clear();
  }

  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps);
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    const auto& c = config_;
    const int64_t d = c.d_model, f = c.d_mlp, qkv = d + 2 * c.n_kv_heads * c.d_head;
    std::map<std::string, std::vector<int64_t>> out;
    out["transformer.wte.weight"] = {c.d_vocab, d};
    out["transformer.wpe.weight"] = {c.n_ctx, d};
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      for (const char* ln : {"ln_1", "ln_2"}) {
        out[p + ln + ".weight"] = {d};
        out[p + ln + ".bias"] = {d};
      }
      out[p + "attn.c_attn.weight"] = {qkv, d};
      out[p + "attn.c_attn.bias"] = {qkv};
      out[p + "attn.c_proj.weight"] = {d, d};
      out[p + "attn.c_proj.bias"] = {d};
      out[p + "mlp.c_fc.weight"] = {f, d};
      out[p + "mlp.c_fc.bias"] = {f};
      out[p + "mlp.c_proj.weight"] = {d, f};
      out[p + "mlp.c_proj.bias"] = {d};
    }
    out["transformer.ln_f.weight"] = {d};
    out["transformer.ln_f.bias"] = {d};
    expect_lm_head(out, d);
    return out;
  }

 protected:
  struct Extra {
    at::Tensor qkv_w, qkv_b;
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
    alias_blocks("blocks.", {{"mlp.hook_pre", "mlp.up_proj"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    lw_.assign(config_.n_layers, {});
    ex_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      LayerWeights& l = lw_[i];
      Extra& e = ex_[i];
      bind_gpt2_norms_and_mlp(i, p);
      e.qkv_w = opt_weight(p + "attn.c_attn.weight");
      e.qkv_b = opt_weight(p + "attn.c_attn.bias");
      l.o = opt_weight(p + "attn.c_proj.weight");
      l.ob = opt_weight(p + "attn.c_proj.bias");
    }
    embed_w_ = opt_weight("transformer.wte.weight");
    wpe_ = opt_weight("transformer.wpe.weight");
    norm_w_ = opt_weight("transformer.ln_f.weight");
    norm_b_ = opt_weight("transformer.ln_f.bias");
    head_w_ = lm_head_or_embedding();
  }

  void add_layer_expected(int, std::map<std::string, std::vector<int64_t>>&) const override {}

  blocks::AttentionOptions attention_options(int) const override {
    blocks::AttentionOptions o;
    o.scale = scale_weights_ ? 1.0 / std::sqrt(double(config_.d_head)) : 1.0;
    return o;
  }

  at::Tensor embed_block(const at::Tensor& tok, Context& ctx, Hooks& H) override {
    at::Tensor x = H(embed_site_, at::embedding(embed_w_, tok));
    return x + learned_positions(ctx, H, wpe_, pos_site_, 0, "gpt_bigcode");
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    return layer_norm_block(i, x, ctx, H);
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    const Extra& e = ex_[i];
    at::Tensor qkv = H(ls_[i].qkv, blocks::linear(h, e.qkv_w, e.qkv_b));  // [b, t, (H + 2K) dh]
    const bool mqa = config_.n_kv_heads != config_.n_heads;
    return split_qkv(i, qkv, ctx, H, mqa ? QkvLayout::Stacked : QkvLayout::PerHead);
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const LayerWeights& w = lw_[i];
    return plain_mlp(i, h, w.up, w.up_b, w.down, w.down_b, H);
  }

 private:
  bool scale_weights_ = true;
  int pos_site_ = -1;
  at::Tensor wpe_, norm_b_;
  std::vector<Extra> ex_;
};

const bool registered =
    register_architecture("gpt_bigcode", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<GPTBigCodeModel>(c, std::move(w));
    });

}  // namespace
}  // namespace mlxterp
