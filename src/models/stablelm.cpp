// StableLM (StableLM-2, StableLM-3B-4E1T, StableCode), matched to Hugging Face transformers'
// StableLmForCausalLM: Llama's layout and names (q/k/v/o_proj, SwiGLU gate/up/down_proj, GQA) with
// LayerNorms that carry biases (layer_norm_eps), q/k/v biases when use_qkv_bias, partial rotary
// (partial_rotary_factor of each head, rotate_half on the first dims), and optionally
//   - use_parallel_residual: x + attn(ln1(x)) + mlp(ln1(x)), the MLP reading the same input_layernorm
//     output; there is no post_attention_layernorm and no resid_mid site then;
//   - qk_layernorm: a separate bias-free LayerNorm per head on q and k (after the head split, before
//     RoPE), sites self_attn.{q,k}_norm [b, t, n_heads|n_kv_heads, d_head]; native paths
//     self_attn.{q,k}_layernorm are aliases.
// The HF goldens cover the sequential form without q/k LayerNorm; the two options follow HF's code and
// are checked by structural tests only.
#include "mlxterp/error.hpp"
#include "models/family.hpp"

namespace mlxterp {
namespace {

class StableLmModel : public FamilyModel {
 public:
  StableLmModel(const ModelConfig& c, TensorMap w) : FamilyModel(c, std::move(w)) {
    const std::string where = "config (stablelm)";
    parallel_ = json_bool(text_config(), "use_parallel_residual", false, where);
    config_.qk_norm = json_bool(text_config(), "qk_layernorm", false, where);
    MLXTERP_CHECK(config_.d_head * config_.n_heads == config_.d_model, where,
                  ": StableLM splits hidden_size evenly over the heads; expected head_dim * num_attention_heads == "
                  "hidden_size, got ", config_.d_head, " * ", config_.n_heads, " vs ", config_.d_model,
                  " (drop head_dim from config.json)");
    init();
  }

  at::Tensor final_norm(const at::Tensor& h) const override {
    return blocks::layer_norm(h, norm_w_, norm_b_, config_.norm_eps);
  }

  std::map<std::string, std::vector<int64_t>> expected_weights() const override {
    auto out = LlamaModel::expected_weights();
    out["model.norm.bias"] = {config_.d_model};
    return out;
  }

 protected:
  struct Extra {
    at::Tensor q_ln, k_ln;  // q_ln [n_heads, d_head], k_ln [n_kv_heads, d_head] (qk_layernorm)
  };

  void build_sites() override {
    embed_site_ = add_site(-1, "model.embed_tokens");
    ls_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i)
      add_block_sites(i, {.resid_mid = !parallel_, .post_norm = !parallel_, .mlp = Mlp::Gated});
    norm_site_ = add_site(-1, "model.norm");
    head_site_ = add_site(-1, "lm_head");
    for (const char* prefix : {"model.layers.", "layers.", "model.model.layers."})
      alias_blocks(prefix, {{"self_attn.q_layernorm", "self_attn.q_norm"},
                            {"self_attn.k_layernorm", "self_attn.k_norm"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    ex_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string p = layer_prefix(i) + ".";
      Extra& e = ex_[i];
      if (config_.qk_norm) {
        e.q_ln = stack_heads(p + "self_attn.q_layernorm.norms.", config_.n_heads);
        e.k_ln = stack_heads(p + "self_attn.k_layernorm.norms.", config_.n_kv_heads);
      }
    }
    norm_b_ = opt_weight("model.norm.bias");
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    const auto& c = config_;
    const std::string p = layer_prefix(i) + ".";
    const int64_t d = c.d_model, qd = c.n_heads * c.d_head, kvd = c.n_kv_heads * c.d_head;
    out[p + "input_layernorm.weight"] = {d};
    out[p + "input_layernorm.bias"] = {d};
    if (!parallel_) {
      out[p + "post_attention_layernorm.weight"] = {d};
      out[p + "post_attention_layernorm.bias"] = {d};
    }
    out[p + "self_attn.q_proj.weight"] = {qd, d};
    out[p + "self_attn.k_proj.weight"] = {kvd, d};
    out[p + "self_attn.v_proj.weight"] = {kvd, d};
    out[p + "self_attn.o_proj.weight"] = {d, qd};
    if (c.attention_bias) {
      out[p + "self_attn.q_proj.bias"] = {qd};
      out[p + "self_attn.k_proj.bias"] = {kvd};
      out[p + "self_attn.v_proj.bias"] = {kvd};
    }
    if (c.qk_norm) {
      for (int64_t h = 0; h < c.n_heads; ++h)
        out[p + "self_attn.q_layernorm.norms." + std::to_string(h) + ".weight"] = {c.d_head};
      for (int64_t h = 0; h < c.n_kv_heads; ++h)
        out[p + "self_attn.k_layernorm.norms." + std::to_string(h) + ".weight"] = {c.d_head};
    }
    out[p + "mlp.gate_proj.weight"] = {c.d_mlp, d};
    out[p + "mlp.up_proj.weight"] = {c.d_mlp, d};
    out[p + "mlp.down_proj.weight"] = {d, c.d_mlp};
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    const double eps = config_.norm_eps;
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, blocks::layer_norm(x, w.ln1, w.ln1_b, eps));
    at::Tensor a = attention_block(i, h, ctx, H);
    if (parallel_) {
      at::Tensor m = mlp_block(i, h, H);
      return H(s.out, x + a + m);  // HF's order of the sum
    }
    x = H(s.resid_mid, x + a);
    at::Tensor h2 = H(s.post_norm, blocks::layer_norm(x, w.ln2, w.ln2_b, eps));
    return H(s.out, x + mlp_block(i, h2, H));
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    QKV p = LlamaModel::qkv(i, h, ctx, H);  // no Llama q/k norm weights are bound, so none is applied there
    if (!config_.qk_norm) return p;
    const LayerSites& s = ls_[i];
    const Extra& e = ex_[i];
    p.q = H(s.q_norm, per_head_layer_norm(p.q, e.q_ln));  // [b, t, n_heads, d_head]
    p.k = H(s.k_norm, per_head_layer_norm(p.k, e.k_ln));  // [b, t, n_kv_heads, d_head]
    return p;
  }

 private:
  // StableLmLayerNormPerHead: head h normalised over d_head and scaled by its own weight (no bias); computed
  // in float32 and rounded once, as a fused LayerNorm kernel does.  x [b, t, heads, d_head], w [heads, d_head]
  at::Tensor per_head_layer_norm(const at::Tensor& x, const at::Tensor& w) const {
    at::Tensor y = at::layer_norm(x.to(at::kFloat), {x.size(-1)}, {}, {}, config_.norm_eps);
    return (y * w.to(at::kFloat)).to(x.scalar_type());
  }

  // The per-head norm weights "<prefix>{h}.weight" stacked to [n, d_head] (undefined if any is missing;
  // create_model reports the missing name).
  at::Tensor stack_heads(const std::string& prefix, int64_t n) const {
    std::vector<at::Tensor> ws;
    for (int64_t h = 0; h < n; ++h) {
      at::Tensor t = opt_weight(prefix + std::to_string(h) + ".weight");
      if (!t.defined()) return {};
      ws.push_back(t);
    }
    return at::stack(ws);
  }

  bool parallel_ = false;
  at::Tensor norm_b_;
  std::vector<Extra> ex_;
};

const bool registered =
    register_architecture("stablelm", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<StableLmModel>(c, std::move(w));
    });

}  // namespace
}  // namespace mlxterp
