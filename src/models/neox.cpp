// GPT-NeoX / Pythia, matched to Hugging Face transformers' GPTNeoXForCausalLM: LayerNorm with biases,
// fused query_key_value laid out per head as [q | k | v] (exposed as self_attn.qkv_proj and split into
// self_attn.{q,k,v}_proj sites in the usual [b, t, n_heads*d_head] layout), partial rotary embedding
// (rotary_pct / partial_rotary_factor of each head), biased dense output, a plain GELU MLP, untied
// embed_out, and the parallel residual x + attn(ln1(x)) + mlp(ln2(x)) (use_parallel_residual, the
// default) or the sequential one. The parallel form has no resid_mid site: nothing flows between the
// attention and the MLP.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class NeoXModel : public FamilyModel {
 public:
  NeoXModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const std::string where = "config (gpt_neox)";
    parallel_ = json_bool(text_config(), "use_parallel_residual", true, where);
    // NeoX biases q/k/v and the output projection unless told otherwise (Pythia configs say nothing).
    config_.attention_bias = json_bool(text_config(), "attention_bias", true, where);
    MLXTERP_CHECK(config_.n_kv_heads == config_.n_heads, where, ": GPT-NeoX has no grouped-query attention; expected ",
                  "num_key_value_heads == num_attention_heads, got ", config_.n_kv_heads, " vs ", config_.n_heads);
    init();
  }

  at::Tensor embed(const at::Tensor& ids) const override { return at::embedding(embed_w_, ids.to(embed_w_.device())); }
  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps);
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    const auto& c = config_;
    const int64_t d = c.d_model, f = c.d_mlp;
    std::map<std::string, std::vector<int64_t>> out;
    out["gpt_neox.embed_in.weight"] = {c.d_vocab, d};
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string p = "gpt_neox.layers." + std::to_string(i) + ".";
      for (const char* ln : {"input_layernorm", "post_attention_layernorm"}) {
        out[p + ln + ".weight"] = {d};
        out[p + ln + ".bias"] = {d};
      }
      out[p + "attention.query_key_value.weight"] = {3 * d, d};
      out[p + "attention.dense.weight"] = {d, d};
      if (c.attention_bias) {
        out[p + "attention.query_key_value.bias"] = {3 * d};
        out[p + "attention.dense.bias"] = {d};
      }
      out[p + "mlp.dense_h_to_4h.weight"] = {f, d};
      out[p + "mlp.dense_h_to_4h.bias"] = {f};
      out[p + "mlp.dense_4h_to_h.weight"] = {d, f};
      out[p + "mlp.dense_4h_to_h.bias"] = {d};
    }
    out["gpt_neox.final_layer_norm.weight"] = {d};
    out["gpt_neox.final_layer_norm.bias"] = {d};
    if (!c.tie_word_embeddings) out["embed_out.weight"] = {c.d_vocab, d};
    return out;
  }

 protected:
  struct Extra {
    at::Tensor qkv_w, qkv_b, up_w, up_b, down_w, down_b;
  };

  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) add_block_sites(i, {.fused_qkv = true, .resid_mid = !parallel_});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    sites_.add_alias("gpt_neox.embed_in", embed_site_);
    sites_.add_alias("gpt_neox.final_layer_norm", norm_site_);
    sites_.add_alias("embed_out", head_site_);
    alias_blocks("gpt_neox.layers.", {{"", ""},
                                      {"input_layernorm", "input_layernorm"},
                                      {"attention", "self_attn"},
                                      {"attention.query_key_value", "self_attn.qkv_proj"},
                                      {"attention.dense", "self_attn.o_proj"},
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
      const std::string p = "gpt_neox.layers." + std::to_string(i) + ".";
      LayerWeights& l = lw_[i];
      Extra& e = ex_[i];
      l.ln1 = opt_weight(p + "input_layernorm.weight");
      l.ln1_b = opt_weight(p + "input_layernorm.bias");
      l.ln2 = opt_weight(p + "post_attention_layernorm.weight");
      l.ln2_b = opt_weight(p + "post_attention_layernorm.bias");
      e.qkv_w = opt_weight(p + "attention.query_key_value.weight");
      e.qkv_b = opt_weight(p + "attention.query_key_value.bias");
      l.o = opt_weight(p + "attention.dense.weight");
      l.ob = opt_weight(p + "attention.dense.bias");
      e.up_w = opt_weight(p + "mlp.dense_h_to_4h.weight");
      e.up_b = opt_weight(p + "mlp.dense_h_to_4h.bias");
      e.down_w = opt_weight(p + "mlp.dense_4h_to_h.weight");
      e.down_b = opt_weight(p + "mlp.dense_4h_to_h.bias");
    }
    embed_w_ = opt_weight("gpt_neox.embed_in.weight");
    norm_w_ = opt_weight("gpt_neox.final_layer_norm.weight");
    norm_b_ = opt_weight("gpt_neox.final_layer_norm.bias");
    head_w_ = config_.tie_word_embeddings ? embed_w_ : opt_weight("embed_out.weight");
  }

  void add_layer_expected(int, std::map<std::string, std::vector<int64_t>>&) const override {}

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    const double eps = config_.norm_eps;
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, blocks::layer_norm(x, w.ln1, w.ln1_b, eps));
    at::Tensor a = attention_block(i, h, ctx, H);
    if (parallel_) {
      at::Tensor h2 = H(s.post_norm, blocks::layer_norm(x, w.ln2, w.ln2_b, eps));
      at::Tensor m = mlp_block(i, h2, H);
      return H(s.out, m + a + x);  // HF's order of the sum
    }
    x = H(s.resid_mid, a + x);
    at::Tensor h2 = H(s.post_norm, blocks::layer_norm(x, w.ln2, w.ln2_b, eps));
    return H(s.out, mlp_block(i, h2, H) + x);
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const Extra& e = ex_[i];
    at::Tensor qkv = H(s.qkv, blocks::linear(h, e.qkv_w, e.qkv_b));  // [b, t, 3 d]: per head [q | k | v]
    return split_qkv(i, qkv, ctx, H, QkvLayout::PerHead);
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const Extra& e = ex_[i];
    return plain_mlp(i, h, e.up_w, e.up_b, e.down_w, e.down_b, H);
  }

 private:
  bool parallel_ = true;
  at::Tensor norm_b_;
  std::vector<Extra> ex_;
};

const bool registered =
    register_architecture("gpt_neox", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<NeoXModel>(c, std::move(w));
    });

}  // namespace
}  // namespace mlxterp
