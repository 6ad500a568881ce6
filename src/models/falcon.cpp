// Falcon, matched to Hugging Face transformers' FalconForCausalLM (rotary checkpoints: Falcon-7B/40B/180B,
// Falcon-Mamba aside). One fused query_key_value, laid out three ways:
//   new_decoder_architecture (40B, 180B): per key/value group [q x (H/K) | k | v], K = num_kv_heads;
//   multi_query (7B): [q (H heads) | k | v] with one key/value head;
//   otherwise: per head [q | k | v].
// Blocks are parallel, x + attn(ln_a(x)) + mlp(ln_m(x)), where ln_a = ln_m = input_layernorm (7B) or ln_attn /
// ln_mlp (new_decoder_architecture with num_ln_in_parallel_attn = 2); parallel_attn = false gives the sequential
// block with post_attention_layernorm. MLP dense_h_to_4h -> activation -> dense_4h_to_h; biases when `bias`;
// tied lm_head. ALiBi Falcon (falcon-rw) is refused with a clear error. Native paths
// (transformer.h.{i}.self_attention.query_key_value, ...) are aliases.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class FalconModel : public FamilyModel {
 public:
  FalconModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string where = "config (falcon)";
    MLXTERP_CHECK(!json_bool(t, "alibi", false, where), where, ": ALiBi Falcon (falcon-rw) is not supported; expected ",
                  "alibi: false (the rotary checkpoints)");
    new_arch_ = json_bool(t, "new_decoder_architecture", false, where);
    parallel_ = json_bool(t, "parallel_attn", true, where);
    two_ln_ = new_arch_ && json_int(t, "num_ln_in_parallel_attn", 2, where) == 2;
    MLXTERP_CHECK(parallel_ || !new_arch_, where, ": new_decoder_architecture needs parallel_attn; got parallel_attn: false");
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where, ": hidden_size (", config_.d_model,
                  ") must equal num_attention_heads x head size (", config_.n_heads, " x ", config_.d_head, ")");
    init();
  }

  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps);
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    const auto& c = config_;
    const int64_t d = c.d_model, f = c.d_mlp, qkv = (c.n_heads + 2 * c.n_kv_heads) * c.d_head;
    const bool bias = c.attention_bias;
    std::map<std::string, std::vector<int64_t>> out;
    out["transformer.word_embeddings.weight"] = {c.d_vocab, d};
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      std::vector<std::string> lns;
      if (two_ln_) lns = {"ln_attn", "ln_mlp"};
      else if (parallel_) lns = {"input_layernorm"};
      else lns = {"input_layernorm", "post_attention_layernorm"};
      for (const auto& ln : lns) {
        out[p + ln + ".weight"] = {d};
        out[p + ln + ".bias"] = {d};
      }
      auto lin = [&](const std::string& n, int64_t rows, int64_t cols) {
        out[p + n + ".weight"] = {rows, cols};
        if (bias) out[p + n + ".bias"] = {rows};
      };
      lin("self_attention.query_key_value", qkv, d);
      lin("self_attention.dense", d, d);
      lin("mlp.dense_h_to_4h", f, d);
      lin("mlp.dense_4h_to_h", d, f);
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
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      LayerSites& l = ls_[i];
      l.resid_pre = add_site(i, "resid_pre");
      l.input_norm = add_site(i, "input_layernorm");
      if (two_ln_) l.post_norm = add_site(i, "mlp_layernorm");
      add_attention_sites(i, l, /*fused_qkv=*/true);
      if (!parallel_) {
        l.resid_mid = add_site(i, "resid_mid");
        l.post_norm = add_site(i, "post_attention_layernorm");
      }
      add_mlp_sites(i, l, Mlp::Plain);
      l.out = add_site(i, "");
    }
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_alias("transformer.word_embeddings", embed_site_);
    sites_.add_alias("transformer.ln_f", norm_site_);
    alias_blocks("transformer.h.", {{"", ""},
                                    {"input_layernorm", "input_layernorm"},
                                    {"ln_attn", "input_layernorm"},
                                    {"ln_mlp", "mlp_layernorm"},
                                    {"self_attention", "self_attn"},
                                    {"self_attention.query_key_value", "self_attn.qkv_proj"},
                                    {"self_attention.dense", "self_attn.o_proj"},
                                    {"post_attention_layernorm", "post_attention_layernorm"},
                                    {"mlp", "mlp"},
                                    {"mlp.dense_h_to_4h", "mlp.up_proj"},
                                    {"mlp.act", "mlp.hidden"},
                                    {"mlp.dense_4h_to_h", "mlp.down_proj"}});
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
      const std::string ln_a = two_ln_ ? "ln_attn" : "input_layernorm";
      l.ln1 = opt_weight(p + ln_a + ".weight");
      l.ln1_b = opt_weight(p + ln_a + ".bias");
      const std::string ln_m = two_ln_ ? "ln_mlp" : "post_attention_layernorm";
      l.ln2 = opt_weight(p + ln_m + ".weight");
      l.ln2_b = opt_weight(p + ln_m + ".bias");
      e.qkv_w = opt_weight(p + "self_attention.query_key_value.weight");
      e.qkv_b = opt_weight(p + "self_attention.query_key_value.bias");
      l.o = opt_weight(p + "self_attention.dense.weight");
      l.ob = opt_weight(p + "self_attention.dense.bias");
      l.up = opt_weight(p + "mlp.dense_h_to_4h.weight");
      l.up_b = opt_weight(p + "mlp.dense_h_to_4h.bias");
      l.down = opt_weight(p + "mlp.dense_4h_to_h.weight");
      l.down_b = opt_weight(p + "mlp.dense_4h_to_h.bias");
    }
    embed_w_ = opt_weight("transformer.word_embeddings.weight");
    norm_w_ = opt_weight("transformer.ln_f.weight");
    norm_b_ = opt_weight("transformer.ln_f.bias");
    head_w_ = lm_head_or_embedding();
  }

  void add_layer_expected(int, std::map<std::string, std::vector<int64_t>>&) const override {}

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    const double eps = config_.norm_eps;
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, blocks::layer_norm(x, w.ln1, w.ln1_b, eps));
    if (!parallel_) {
      x = H(s.resid_mid, attention_block(i, h, ctx, H) + x);
      at::Tensor h2 = H(s.post_norm, blocks::layer_norm(x, w.ln2, w.ln2_b, eps));
      return H(s.out, mlp_block(i, h2, H) + x);
    }
    at::Tensor hm = two_ln_ ? H(s.post_norm, blocks::layer_norm(x, w.ln2, w.ln2_b, eps)) : h;  // HF: both first
    at::Tensor a = attention_block(i, h, ctx, H);
    return H(s.out, (mlp_block(i, hm, H) + a) + x);  // HF: mlp_output += attention_output; + residual
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const Extra& e = ex_[i];
    const auto& c = config_;
    at::Tensor qkv = H(s.qkv, blocks::linear(h, e.qkv_w, e.qkv_b));  // [b, t, (H + 2K) dh]
    if (!new_arch_) {
      const bool mqa = c.n_kv_heads == 1 && c.n_heads > 1;
      return split_qkv(i, qkv, ctx, H, mqa ? QkvLayout::Stacked : QkvLayout::PerHead);
    }
    // Per group g of H/K query heads: [q_g (H/K heads) | k_g | v_g].
    const int64_t b = ctx.batch, t = ctx.t, nk = c.n_kv_heads, per = c.n_heads / nk, dh = c.d_head;
    at::Tensor g = qkv.view({b, t, nk, per + 2, dh});
    at::Tensor q = H(s.q, g.narrow(3, 0, per).reshape({b, t, c.n_heads * dh}));
    at::Tensor k = H(s.k, g.select(3, per).reshape({b, t, nk * dh}));
    at::Tensor v = H(s.v, g.select(3, per + 1).reshape({b, t, nk * dh}));
    return {q.view({b, t, c.n_heads, dh}), k.view({b, t, nk, dh}), v.view({b, t, nk, dh})};
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const LayerWeights& w = lw_[i];
    return plain_mlp(i, h, w.up, w.up_b, w.down, w.down_b, H);
  }

 private:
  bool new_arch_ = false, parallel_ = true, two_ln_ = false;
  at::Tensor norm_b_;
  std::vector<Extra> ex_;
};

const bool registered = register_architecture("falcon", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<FalconModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
