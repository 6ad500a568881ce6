// Phi (phi-1, phi-1.5, phi-2), matched to Hugging Face transformers' PhiForCausalLM: one LayerNorm (with
// bias) per block feeding both the attention and the MLP, the parallel residual x + attn(ln(x)) + mlp(ln(x)),
// biased q/k/v and output (`dense`) projections, optional per-head LayerNorm on q and k (qk_layernorm,
// exposed as self_attn.{q,k}_norm), partial rotary embedding (partial_rotary_factor of each head,
// rotate_half), a plain MLP fc1 -> act -> fc2 with biases, final_layernorm and a biased lm_head.
// There is no resid_mid (nothing flows between attention and MLP) and no post_attention_layernorm (the
// MLP reads input_layernorm's output). Native paths (self_attn.dense, mlp.fc1, model.final_layernorm,
// ...) are aliases of the canonical sites.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class PhiModel : public FamilyModel {
 public:
  PhiModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const std::string where = "config (phi)";
    config_.qk_norm = json_bool(text_config(), "qk_layernorm", false, where);
    config_.attention_bias = true;
    config_.mlp_bias = true;
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where, ": hidden_size (", config_.d_model,
                  ") must equal num_attention_heads x head_dim (", config_.n_heads, " x ", config_.d_head, ")");
    init();
  }

  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps);
  }
  at::Tensor unembed(const at::Tensor& h) const override { return blocks::linear(h, head_w_, head_b_); }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    const auto& c = config_;
    const int64_t d = c.d_model, f = c.d_mlp, qd = c.n_heads * c.d_head, kvd = c.n_kv_heads * c.d_head;
    std::map<std::string, std::vector<int64_t>> out;
    out["model.embed_tokens.weight"] = {c.d_vocab, d};
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = layer_prefix(i) + ".";
      out[p + "input_layernorm.weight"] = {d};
      out[p + "input_layernorm.bias"] = {d};
      out[p + "self_attn.q_proj.weight"] = {qd, d};
      out[p + "self_attn.q_proj.bias"] = {qd};
      for (const char* n : {"k_proj", "v_proj"}) {
        out[p + "self_attn." + n + ".weight"] = {kvd, d};
        out[p + "self_attn." + n + ".bias"] = {kvd};
      }
      out[p + "self_attn.dense.weight"] = {d, qd};
      out[p + "self_attn.dense.bias"] = {d};
      if (c.qk_norm) {
        for (const char* n : {"q_layernorm", "k_layernorm"}) {
          out[p + "self_attn." + n + ".weight"] = {c.d_head};
          out[p + "self_attn." + n + ".bias"] = {c.d_head};
        }
      }
      out[p + "mlp.fc1.weight"] = {f, d};
      out[p + "mlp.fc1.bias"] = {f};
      out[p + "mlp.fc2.weight"] = {d, f};
      out[p + "mlp.fc2.bias"] = {d};
    }
    out["model.final_layernorm.weight"] = {d};
    out["model.final_layernorm.bias"] = {d};
    // Tied checkpoints may omit lm_head.weight; the bias is always lm_head's own.
    expect_lm_head(out, d);
    out["lm_head.bias"] = {c.d_vocab};
    return out;
  }

 protected:
  struct Extra {
    at::Tensor qn_b, kn_b;
  };

  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {.resid_mid = false, .post_norm = false});  // parallel
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    // Native module paths, also in the short ("layers.0.mlp.fc1") and mlxterp ("model.model...") forms.
    for (const char* root : {"model.", "", "model.model."}) {
      sites_.add_alias(std::string(root) + "final_layernorm", norm_site_);
      alias_blocks(std::string(root) + "layers.", {{"self_attn.dense", "self_attn.o_proj"},
                                                   {"self_attn.q_layernorm", "self_attn.q_norm"},
                                                   {"self_attn.k_layernorm", "self_attn.k_norm"},
                                                   {"mlp.fc1", "mlp.up_proj"},
                                                   {"mlp.activation_fn", "mlp.hidden"},
                                                   {"mlp.fc2", "mlp.down_proj"}});
    }
    // TransformerLens: a non-gated MLP's pre-activation is hook_pre.
    alias_blocks("blocks.", {{"mlp.hook_pre", "mlp.up_proj"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    lw_.assign(config_.n_layers, {});
    ex_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = layer_prefix(i) + ".";
      LayerWeights& l = lw_[i];
      Extra& e = ex_[i];
      l.ln1 = opt_weight(p + "input_layernorm.weight");
      l.ln1_b = opt_weight(p + "input_layernorm.bias");
      l.q = opt_weight(p + "self_attn.q_proj.weight");
      l.k = opt_weight(p + "self_attn.k_proj.weight");
      l.v = opt_weight(p + "self_attn.v_proj.weight");
      l.qb = opt_weight(p + "self_attn.q_proj.bias");
      l.kb = opt_weight(p + "self_attn.k_proj.bias");
      l.vb = opt_weight(p + "self_attn.v_proj.bias");
      l.o = opt_weight(p + "self_attn.dense.weight");
      l.ob = opt_weight(p + "self_attn.dense.bias");
      l.qn = opt_weight(p + "self_attn.q_layernorm.weight");
      e.qn_b = opt_weight(p + "self_attn.q_layernorm.bias");
      l.kn = opt_weight(p + "self_attn.k_layernorm.weight");
      e.kn_b = opt_weight(p + "self_attn.k_layernorm.bias");
      l.up = opt_weight(p + "mlp.fc1.weight");
      l.up_b = opt_weight(p + "mlp.fc1.bias");
      l.down = opt_weight(p + "mlp.fc2.weight");
      l.down_b = opt_weight(p + "mlp.fc2.bias");
    }
    embed_w_ = opt_weight("model.embed_tokens.weight");
    norm_w_ = opt_weight("model.final_layernorm.weight");
    norm_b_ = opt_weight("model.final_layernorm.bias");
    head_w_ = lm_head_or_embedding();
    head_b_ = opt_weight("lm_head.bias");
  }

  void add_layer_expected(int, std::map<std::string, std::vector<int64_t>>&) const override {}

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, blocks::layer_norm(x, lw_[i].ln1, lw_[i].ln1_b, config_.norm_eps));
    at::Tensor a = attention_block(i, h, ctx, H);
    at::Tensor m = mlp_block(i, h, H);
    return H(s.out, a + m + x);  // HF's order of the sum
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    const Extra& e = ex_[i];
    const auto& c = config_;
    const int64_t b = ctx.batch, t = ctx.t;
    at::Tensor q = H(s.q, blocks::linear(h, w.q, w.qb)).reshape({b, t, c.n_heads, c.d_head});
    at::Tensor k = H(s.k, blocks::linear(h, w.k, w.kb)).reshape({b, t, c.n_kv_heads, c.d_head});
    at::Tensor v = H(s.v, blocks::linear(h, w.v, w.vb)).reshape({b, t, c.n_kv_heads, c.d_head});
    if (c.qk_norm) {
      q = H(s.q_norm, blocks::layer_norm(q, w.qn, e.qn_b, c.norm_eps));  // [b, t, n_heads, d_head]
      k = H(s.k_norm, blocks::layer_norm(k, w.kn, e.kn_b, c.norm_eps));
    }
    return {q, k, v};
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const LayerWeights& w = lw_[i];
    return plain_mlp(i, h, w.up, w.up_b, w.down, w.down_b, H);
  }

 private:
  at::Tensor norm_b_, head_b_;
  std::vector<Extra> ex_;
};

const bool registered = register_architecture("phi", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<PhiModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
