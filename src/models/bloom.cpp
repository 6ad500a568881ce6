// BLOOM, matched to Hugging Face transformers' BloomForCausalLM: no position embedding but ALiBi (a per-head
// linear bias slope_h * key_position added to the scaled attention scores), a LayerNorm right after the token
// embedding (site model.embed_layernorm), pre-LayerNorm blocks with biases, query_key_value laid out per head
// ([q | k | v] of each head), a 4d GELU (tanh) MLP and a tied lm_head. With
// apply_residual_connection_post_layernorm the residual added back is the LayerNorm's output, not its input.
// Key positions for ALiBi follow the attention mask (HF: (cumsum(mask) - 1) * mask). Native paths
// (transformer.h.{i}.self_attention.query_key_value, ...) are aliases; checkpoints without the "transformer."
// prefix (bigscience/bloom-*) load too.
#include <cmath>

#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

// ALiBi slopes for n heads (the ALiBi paper's geometric sequence, with its interleaved extension when n is
// not a power of two), as HF's build_alibi_tensor computes them in float32.
at::Tensor alibi_slopes(int64_t n) {
  const int64_t p2 = int64_t(1) << int64_t(std::floor(std::log2(double(n))));
  auto pow_seq = [](double base, int64_t count, int64_t step) {
    std::vector<float> out;
    for (int64_t e = 1; int64_t(out.size()) < count; e += step) out.push_back(float(std::pow(base, double(e))));
    return out;
  };
  std::vector<float> s = pow_seq(std::pow(2.0, -std::pow(2.0, -(std::log2(double(p2)) - 3))), p2, 1);
  if (p2 != n) {
    auto extra = pow_seq(std::pow(2.0, -std::pow(2.0, -(std::log2(double(2 * p2)) - 3))), std::min(p2, n - p2), 2);
    s.insert(s.end(), extra.begin(), extra.end());
  }
  return at::tensor(s, at::kFloat);  // [n]
}

class BloomModel : public FamilyModel {
 public:
  BloomModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const std::string where = "config (bloom)";
    post_ln_residual_ = json_bool(text_config(), "apply_residual_connection_post_layernorm", false, where);
    MLXTERP_CHECK(config_.n_kv_heads == config_.n_heads, where, ": BLOOM has no grouped-query attention; expected ",
                  "num_key_value_heads == n_head, got ", config_.n_kv_heads, " vs ", config_.n_heads);
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where, ": hidden_size (", config_.d_model,
                  ") must equal n_head x head size (", config_.n_heads, " x ", config_.d_head, ")");
    prefix_ = has_weight("word_embeddings.weight") && !has_weight("transformer.word_embeddings.weight") ? ""
                                                                                                        : "transformer.";
    slopes_ = alibi_slopes(config_.n_heads);
    init();
    ropes_.clear();
  }

  // The token's contribution to the residual stream: its embedding after word_embeddings_layernorm.
  at::Tensor embed(const at::Tensor& ids) const override {
    return blocks::layer_norm(at::embedding(embed_w_, ids.to(embed_w_.device())), emb_ln_w_, emb_ln_b_, config_.norm_eps);
  }
  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps);
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    const auto& c = config_;
    const int64_t d = c.d_model, f = c.d_mlp;
    const std::string& P = prefix_;
    std::map<std::string, std::vector<int64_t>> out;
    out[P + "word_embeddings.weight"] = {c.d_vocab, d};
    out[P + "word_embeddings_layernorm.weight"] = {d};
    out[P + "word_embeddings_layernorm.bias"] = {d};
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = P + "h." + std::to_string(i) + ".";
      for (const char* ln : {"input_layernorm", "post_attention_layernorm"}) {
        out[p + ln + ".weight"] = {d};
        out[p + ln + ".bias"] = {d};
      }
      out[p + "self_attention.query_key_value.weight"] = {3 * d, d};
      out[p + "self_attention.query_key_value.bias"] = {3 * d};
      out[p + "self_attention.dense.weight"] = {d, d};
      out[p + "self_attention.dense.bias"] = {d};
      out[p + "mlp.dense_h_to_4h.weight"] = {f, d};
      out[p + "mlp.dense_h_to_4h.bias"] = {f};
      out[p + "mlp.dense_4h_to_h.weight"] = {d, f};
      out[p + "mlp.dense_4h_to_h.bias"] = {d};
    }
    out[P + "ln_f.weight"] = {d};
    out[P + "ln_f.bias"] = {d};
    expect_lm_head(out, d);
    return out;
  }

 protected:
  struct Extra {
    at::Tensor qkv_w, qkv_b;
  };

  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    embed_norm_site_ = add_site(-1, "model.embed_layernorm");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {.fused_qkv = true});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_alias("transformer.word_embeddings", embed_site_);
    sites_.add_alias("transformer.word_embeddings_layernorm", embed_norm_site_);
    sites_.add_alias("transformer.ln_f", norm_site_);
    alias_blocks("transformer.h.", {{"", ""},
                                    {"input_layernorm", "input_layernorm"},
                                    {"self_attention", "self_attn"},
                                    {"self_attention.query_key_value", "self_attn.qkv_proj"},
                                    {"self_attention.dense", "self_attn.o_proj"},
                                    {"post_attention_layernorm", "post_attention_layernorm"},
                                    {"mlp", "mlp"},
                                    {"mlp.dense_h_to_4h", "mlp.up_proj"},
                                    {"mlp.gelu_impl", "mlp.hidden"},
                                    {"mlp.dense_4h_to_h", "mlp.down_proj"}});
    alias_blocks("blocks.", {{"mlp.hook_pre", "mlp.up_proj"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    lw_.assign(config_.n_layers, {});
    ex_.assign(config_.n_layers, {});
    const std::string& P = prefix_;
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = P + "h." + std::to_string(i) + ".";
      LayerWeights& l = lw_[i];
      Extra& e = ex_[i];
      l.ln1 = opt_weight(p + "input_layernorm.weight");
      l.ln1_b = opt_weight(p + "input_layernorm.bias");
      l.ln2 = opt_weight(p + "post_attention_layernorm.weight");
      l.ln2_b = opt_weight(p + "post_attention_layernorm.bias");
      e.qkv_w = opt_weight(p + "self_attention.query_key_value.weight");
      e.qkv_b = opt_weight(p + "self_attention.query_key_value.bias");
      l.o = opt_weight(p + "self_attention.dense.weight");
      l.ob = opt_weight(p + "self_attention.dense.bias");
      l.up = opt_weight(p + "mlp.dense_h_to_4h.weight");
      l.up_b = opt_weight(p + "mlp.dense_h_to_4h.bias");
      l.down = opt_weight(p + "mlp.dense_4h_to_h.weight");
      l.down_b = opt_weight(p + "mlp.dense_4h_to_h.bias");
    }
    embed_w_ = opt_weight(P + "word_embeddings.weight");
    emb_ln_w_ = opt_weight(P + "word_embeddings_layernorm.weight");
    emb_ln_b_ = opt_weight(P + "word_embeddings_layernorm.bias");
    norm_w_ = opt_weight(P + "ln_f.weight");
    norm_b_ = opt_weight(P + "ln_f.bias");
    head_w_ = lm_head_or_embedding();
  }

  void add_layer_expected(int, std::map<std::string, std::vector<int64_t>>&) const override {}

  at::Tensor embed_block(const at::Tensor& tok, Context& ctx, Hooks& H) override {
    // ALiBi: slope_h * key position, [b or 1, H, 1, past + t], shared by every layer.
    const int64_t total = ctx.past + ctx.t;
    at::Tensor kpos;
    if (ctx.padding_mask.defined()) {
      at::Tensor m = ctx.padding_mask.to(at::kFloat);  // [b, total]
      kpos = (m.cumsum(-1) - 1) * m;
    } else {
      kpos = at::arange(total, at::TensorOptions().dtype(at::kFloat).device(tok.device())).unsqueeze(0);
    }
    ctx.attn_bias = slopes_.to(kpos.device()).view({1, -1, 1, 1}) * kpos.view({kpos.size(0), 1, 1, total});
    at::Tensor x = H(embed_site_, at::embedding(embed_w_, tok));
    return H(embed_norm_site_, blocks::layer_norm(x, emb_ln_w_, emb_ln_b_, config_.norm_eps));
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    const double eps = config_.norm_eps;
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, blocks::layer_norm(x, w.ln1, w.ln1_b, eps));
    at::Tensor a = H(s.resid_mid, attention_block(i, h, ctx, H) + (post_ln_residual_ ? h : x));
    at::Tensor h2 = H(s.post_norm, blocks::layer_norm(a, w.ln2, w.ln2_b, eps));
    return H(s.out, mlp_block(i, h2, H) + (post_ln_residual_ ? h2 : a));
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    const Extra& e = ex_[i];
    at::Tensor qkv = H(ls_[i].qkv, blocks::linear(h, e.qkv_w, e.qkv_b));  // [b, t, 3 d]: per head [q | k | v]
    return split_qkv(i, qkv, ctx, H, QkvLayout::PerHead);
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const LayerWeights& w = lw_[i];
    return plain_mlp(i, h, w.up, w.up_b, w.down, w.down_b, H);
  }

 private:
  bool post_ln_residual_ = false;
  std::string prefix_ = "transformer.";
  int embed_norm_site_ = -1;
  at::Tensor slopes_, emb_ln_w_, emb_ln_b_, norm_b_;
  std::vector<Extra> ex_;
};

const bool registered = register_architecture("bloom", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<BloomModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
