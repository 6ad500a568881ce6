// GPT-Neo, matched to Hugging Face transformers' GPTNeoForCausalLM: GPT-2's pre-LayerNorm blocks and learned
// absolute positions, but separate bias-free q/k/v projections (out_proj has a bias), Linear (not Conv1D)
// MLP weights, attention scores that are *not* scaled by 1/sqrt(d_head), and alternating "global" / "local"
// layers (config attention_layers / attention_types): a local layer attends to the last window_size tokens
// (itself included). Tied lm_head by default. Native paths (transformer.h.{i}.attn.attention.q_proj, ...)
// are aliases of the canonical sites; transformer.h.{i}.attn and its inner .attn.attention are one site.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class GPTNeoModel : public FamilyModel {
 public:
  GPTNeoModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const std::string where = "config (gpt_neo)";
    MLXTERP_CHECK(config_.n_kv_heads == config_.n_heads, where, ": GPT-Neo has no grouped-query attention; expected ",
                  "num_key_value_heads == num_heads, got ", config_.n_kv_heads, " vs ", config_.n_heads);
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where, ": hidden_size (", config_.d_model,
                  ") must equal num_heads x head size (", config_.n_heads, " x ", config_.d_head, ")");
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
    out["transformer.wte.weight"] = {c.d_vocab, d};
    out["transformer.wpe.weight"] = {c.n_ctx, d};
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      for (const char* ln : {"ln_1", "ln_2"}) {
        out[p + ln + ".weight"] = {d};
        out[p + ln + ".bias"] = {d};
      }
      for (const char* n : {"q_proj", "k_proj", "v_proj", "out_proj"}) out[p + "attn.attention." + n + ".weight"] = {d, d};
      out[p + "attn.attention.out_proj.bias"] = {d};
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
  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    pos_site_ = add_site(-1, "model.embed_positions");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_alias("transformer.wte", embed_site_);
    sites_.add_alias("transformer.wpe", pos_site_);
    sites_.add_alias("hook_pos_embed", pos_site_);
    sites_.add_alias("transformer.ln_f", norm_site_);
    alias_blocks("transformer.h.", {{"", ""},
                                    {"ln_1", "input_layernorm"},
                                    {"attn", "self_attn"},
                                    {"attn.attention", "self_attn"},
                                    {"attn.attention.q_proj", "self_attn.q_proj"},
                                    {"attn.attention.k_proj", "self_attn.k_proj"},
                                    {"attn.attention.v_proj", "self_attn.v_proj"},
                                    {"attn.attention.out_proj", "self_attn.o_proj"},
                                    {"ln_2", "post_attention_layernorm"},
                                    {"mlp", "mlp"},
                                    {"mlp.c_fc", "mlp.up_proj"},
                                    {"mlp.act", "mlp.hidden"},
                                    {"mlp.c_proj", "mlp.down_proj"}});
    alias_blocks("blocks.", {{"mlp.hook_pre", "mlp.up_proj"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    lw_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      LayerWeights& l = lw_[i];
      bind_gpt2_norms_and_mlp(i, p);
      l.q = opt_weight(p + "attn.attention.q_proj.weight");
      l.k = opt_weight(p + "attn.attention.k_proj.weight");
      l.v = opt_weight(p + "attn.attention.v_proj.weight");
      l.o = opt_weight(p + "attn.attention.out_proj.weight");
      l.ob = opt_weight(p + "attn.attention.out_proj.bias");
    }
    embed_w_ = opt_weight("transformer.wte.weight");
    wpe_ = opt_weight("transformer.wpe.weight");
    norm_w_ = opt_weight("transformer.ln_f.weight");
    norm_b_ = opt_weight("transformer.ln_f.bias");
    head_w_ = lm_head_or_embedding();
  }

  void add_layer_expected(int, std::map<std::string, std::vector<int64_t>>&) const override {}

  // HF's GPTNeoSelfAttention multiplies q by k without any scale.
  blocks::AttentionOptions attention_options(int) const override {
    blocks::AttentionOptions o;
    o.scale = 1.0;
    return o;
  }

  at::Tensor embed_block(const at::Tensor& tok, Context& ctx, Hooks& H) override {
    at::Tensor x = H(embed_site_, at::embedding(embed_w_, tok));
    return x + learned_positions(ctx, H, wpe_, pos_site_, 0, "gpt_neo");
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    return layer_norm_block(i, x, ctx, H);
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const LayerWeights& w = lw_[i];
    return plain_mlp(i, h, w.up, w.up_b, w.down, w.down_b, H);
  }

 private:
  int pos_site_ = -1;
  at::Tensor wpe_, norm_b_;
};

const bool registered = register_architecture("gpt_neo", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<GPTNeoModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
