// GPT-J, matched to Hugging Face transformers' GPTJForCausalLM: one LayerNorm (ln_1, with bias) per block
// feeding both the attention and the MLP, the parallel residual x + attn(ln_1(x)) + mlp(ln_1(x)),
// bias-free q/k/v/out projections, rotary embedding on the first `rotary_dim` dims of each head in the
// interleaved convention (rotate_every_two: pairs (0,1), (2,3), ...; the rest pass through), a plain MLP
// fc_in -> act -> fc_out with biases, ln_f and a biased lm_head. There is no resid_mid and no
// post_attention_layernorm (the MLP reads ln_1's output). Native paths (transformer.h.{i}.attn.out_proj,
// transformer.wte, ...) are aliases of the canonical sites.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class GPTJModel : public FamilyModel {
 public:
  GPTJModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const std::string where = "config (gptj)";
    MLXTERP_CHECK(config_.n_kv_heads == config_.n_heads, where, ": GPT-J has no grouped-query attention; expected ",
                  "num_key_value_heads == n_head, got ", config_.n_kv_heads, " vs ", config_.n_heads);
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where, ": n_embd (", config_.d_model,
                  ") must equal n_head x head_dim (", config_.n_heads, " x ", config_.d_head, ")");
    init();
    for (auto& r : ropes_) r.interleaved = true;
  }

  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps);
  }
  at::Tensor unembed(const at::Tensor& h) const override { return blocks::linear(h, head_w_, head_b_); }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    const auto& c = config_;
    const int64_t d = c.d_model, f = c.d_mlp;
    std::map<std::string, std::vector<int64_t>> out;
    out["transformer.wte.weight"] = {c.d_vocab, d};
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      out[p + "ln_1.weight"] = {d};
      out[p + "ln_1.bias"] = {d};
      for (const char* n : {"q_proj", "k_proj", "v_proj", "out_proj"}) out[p + "attn." + n + ".weight"] = {d, d};
      out[p + "mlp.fc_in.weight"] = {f, d};
      out[p + "mlp.fc_in.bias"] = {f};
      out[p + "mlp.fc_out.weight"] = {d, f};
      out[p + "mlp.fc_out.bias"] = {d};
    }
    out["transformer.ln_f.weight"] = {d};
    out["transformer.ln_f.bias"] = {d};
    // Tied checkpoints may omit lm_head.weight; the bias is always lm_head's own.
    expect_lm_head(out, d);
    out["lm_head.bias"] = {c.d_vocab};
    return out;
  }

 protected:
  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {.resid_mid = false, .post_norm = false});  // parallel
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_alias("transformer.wte", embed_site_);
    sites_.add_alias("transformer.ln_f", norm_site_);
    alias_blocks("transformer.h.", {{"", ""},
                                    {"ln_1", "input_layernorm"},
                                    {"attn", "self_attn"},
                                    {"attn.q_proj", "self_attn.q_proj"},
                                    {"attn.k_proj", "self_attn.k_proj"},
                                    {"attn.v_proj", "self_attn.v_proj"},
                                    {"attn.out_proj", "self_attn.o_proj"},
                                    {"mlp", "mlp"},
                                    {"mlp.fc_in", "mlp.up_proj"},
                                    {"mlp.act", "mlp.hidden"},
                                    {"mlp.fc_out", "mlp.down_proj"}});
    // TransformerLens: a non-gated MLP's pre-activation is hook_pre.
    alias_blocks("blocks.", {{"mlp.hook_pre", "mlp.up_proj"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    lw_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      LayerWeights& l = lw_[i];
      l.ln1 = opt_weight(p + "ln_1.weight");
      l.ln1_b = opt_weight(p + "ln_1.bias");
      l.q = opt_weight(p + "attn.q_proj.weight");
      l.k = opt_weight(p + "attn.k_proj.weight");
      l.v = opt_weight(p + "attn.v_proj.weight");
      l.o = opt_weight(p + "attn.out_proj.weight");
      l.up = opt_weight(p + "mlp.fc_in.weight");
      l.up_b = opt_weight(p + "mlp.fc_in.bias");
      l.down = opt_weight(p + "mlp.fc_out.weight");
      l.down_b = opt_weight(p + "mlp.fc_out.bias");
    }
    embed_w_ = opt_weight("transformer.wte.weight");
    norm_w_ = opt_weight("transformer.ln_f.weight");
    norm_b_ = opt_weight("transformer.ln_f.bias");
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

  // q/k/v: LlamaModel's (bias-free projections, no q/k norm); RoPE (interleaved) and attention in attend().

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const LayerWeights& w = lw_[i];
    return plain_mlp(i, h, w.up, w.up_b, w.down, w.down_b, H);
  }

 private:
  at::Tensor norm_b_, head_b_;
};

const bool registered = register_architecture("gptj", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<GPTJModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
