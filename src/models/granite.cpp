// IBM Granite, matched to Hugging Face transformers' GraniteForCausalLM (granite, Granite 3.x dense),
// GraniteMoeForCausalLM (granitemoe) and GraniteMoeSharedForCausalLM (granitemoeshared).
// All three are the Llama architecture with four scalars from the config: the token embedding times
// embedding_multiplier, each attention and MLP output times residual_multiplier before its residual add,
// attention scores scaled by attention_multiplier (instead of 1/sqrt(d_head)), and logits divided by
// logits_scaling. embed(), unembed() and unembedding_matrix() include the embedding and logit scalings, so
// lenses and attribution see the logits the model produces. The self_attn / mlp sites are the outputs
// before the residual multiplier (HF's module outputs). attention_bias biases q/k/v and o_proj.
//
// granitemoe: the MLP is a top-k mixture of SwiGLU experts (moe.hpp's sites). The router
// (block_sparse_moe.router.layer [E, d]) picks the num_experts_per_tok largest logits and takes the softmax
// over just those; the experts are stored fused: input_linear [E, 2f, d] = [gate | up] rows, output_linear
// [E, d, f]. granitemoeshared adds a dense SwiGLU shared_mlp (input_linear [2s, d] = [gate | up],
// output_linear [d, s], s = shared_intermediate_size; none when 0) on the same input, summed with the
// routed experts:
//   mlp.gate [b, t, E] -> mlp.routing_weights [b, t, E] -> mlp.experts.{e} (on request) -> mlp.switch_mlp
//   [b, t, d] (= HF's block_sparse_moe output) -> [mlp.shared_expert [b, t, d] (= HF's shared_mlp)] -> mlp.
#include "mlxterp/error.hpp"
#include "models/moe.hpp"

namespace mlxterp {
namespace {

class GraniteModel : public MoeFamilyModel {
 public:
  GraniteModel(const ModelConfig& c, TensorMap w) : MoeFamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string& mt = config_.model_type;
    const std::string where = "config (" + mt + ")";
    embedding_mult_ = json_float(t, "embedding_multiplier", 1.0, where);
    residual_mult_ = json_float(t, "residual_multiplier", 1.0, where);
    attention_mult_ = json_float(t, "attention_multiplier", 1.0, where);
    logits_scaling_ = json_float(t, "logits_scaling", 1.0, where);
    for (double v : {embedding_mult_, residual_mult_, attention_mult_, logits_scaling_})
      MLXTERP_CHECK(std::isfinite(v) && v > 0, where, ": embedding_multiplier, residual_multiplier, attention_multiplier ",
                    "and logits_scaling must be positive and finite; got ", v);
    moe_ = mt == "granitemoe" || mt == "granitemoeshared";
    if (moe_) {
      n_experts_ = json_int(t, "num_local_experts", 8, where);
      top_k_ = json_int(t, "num_experts_per_tok", 2, where);
      MLXTERP_CHECK(n_experts_ > 0, where, ": num_local_experts must be positive; got ", n_experts_);
      MLXTERP_CHECK(top_k_ >= 1 && top_k_ <= n_experts_, where, ": num_experts_per_tok must be in 1 .. ", n_experts_,
                    ", got ", top_k_);
      if (mt == "granitemoeshared") d_shared_ = json_int(t, "shared_intermediate_size", 0, where);
      MLXTERP_CHECK(d_shared_ >= 0, where, ": shared_intermediate_size must be >= 0 (0 = no shared MLP); got ", d_shared_);
    }
    init();
  }

  at::Tensor embed(const at::Tensor& ids) const override { return LlamaModel::embed(ids) * embedding_mult_; }
  at::Tensor unembed(const at::Tensor& h) const override { return LlamaModel::unembed(h) / logits_scaling_; }
  at::Tensor unembedding_matrix() const override { return head_w_.t() / logits_scaling_; }

 protected:
  blocks::AttentionOptions attention_options(int) const override {
    blocks::AttentionOptions o;
    o.scale = attention_mult_;
    return o;
  }

  std::string moe_prefix(int i) const { return layer_prefix(i) + ".block_sparse_moe."; }

  void build_sites() override {
    if (!moe_) {
      LlamaModel::build_sites();
      return;
    }
    add_moe_decoder_sites([](int) { return true; }, d_shared_ > 0, false);
    // HF's modules: block_sparse_moe is the routed experts only (without the shared MLP).
    alias_blocks("model.layers.", {{"block_sparse_moe", d_shared_ > 0 ? "mlp.switch_mlp" : "mlp"},
                                   {"block_sparse_moe.router", "mlp.gate"},
                                   {"block_sparse_moe.router.layer", "mlp.gate"},
                                   {"block_sparse_moe.experts", "mlp.switch_mlp"},
                                   {"shared_mlp", "mlp.shared_expert"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    if (!moe_) return;
    mw_.assign(config_.n_layers, {});
    const int64_t f = config_.d_mlp, s = d_shared_;
    for (int i = 0; i < config_.n_layers; ++i) {
      MoeWeights& m = mw_[i];
      m.router = opt_weight(moe_prefix(i) + "router.layer.weight");
      at::Tensor in = opt_weight(moe_prefix(i) + "input_linear.weight");    // [E, 2f, d]
      at::Tensor out = opt_weight(moe_prefix(i) + "output_linear.weight");  // [E, d, f]
      if (in.defined() && out.defined())
        for (int64_t e = 0; e < n_experts_; ++e) {
          at::Tensor ie = in.select(0, e);
          m.experts.push_back({ie.narrow(0, 0, f), ie.narrow(0, f, f), out.select(0, e)});
        }
      at::Tensor sin = opt_weight(layer_prefix(i) + ".shared_mlp.input_linear.weight");  // [2s, d]
      if (s > 0 && sin.defined())
        m.shared = {sin.narrow(0, 0, s), sin.narrow(0, s, s), opt_weight(layer_prefix(i) + ".shared_mlp.output_linear.weight")};
    }
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    LlamaModel::add_layer_expected(i, out);
    const auto& c = config_;
    const std::string p = layer_prefix(i) + ".";
    if (c.attention_bias) out[p + "self_attn.o_proj.bias"] = {c.d_model};  // Granite biases o_proj too
    if (!moe_) return;
    for (const char* n : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) out.erase(p + "mlp." + n);
    out[moe_prefix(i) + "router.layer.weight"] = {n_experts_, c.d_model};
    out[moe_prefix(i) + "input_linear.weight"] = {n_experts_, 2 * c.d_mlp, c.d_model};
    out[moe_prefix(i) + "output_linear.weight"] = {n_experts_, c.d_model, c.d_mlp};
    if (d_shared_ > 0) {
      out[p + "shared_mlp.input_linear.weight"] = {2 * d_shared_, c.d_model};
      out[p + "shared_mlp.output_linear.weight"] = {c.d_model, d_shared_};
    }
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    if (!moe_) return LlamaModel::mlp_block(i, h, H);
    const MoeSites& s = ms_[i];
    const MoeWeights& w = mw_[i];
    at::Tensor logits = H(s.router, at::linear(h, w.router));  // [b, t, E]
    blocks::MoeRouting r = blocks::moe_route(logits.reshape({-1, n_experts_}), top_k_, /*normalize=*/true,
                                             /*softmax_over_topk=*/true);
    at::Tensor y = mix_experts(i, h, r.weights.to(h.scalar_type()), r.chosen, H);  // HF: type_as(hidden_states)
    if (d_shared_ > 0) y = y + H(s.shared, expert_mlp(w.shared, h));
    return H(ls_[i].mlp, y);
  }

  at::Tensor block(int i, at::Tensor x, Context& ctx, Hooks& H) override {
    const LayerSites& s = ls_[i];
    const LayerWeights& w = lw_[i];
    x = H(s.resid_pre, x);
    at::Tensor h = H(s.input_norm, norm(x, w.ln1));
    x = H(s.resid_mid, x + attention_block(i, h, ctx, H) * residual_mult_);
    h = H(s.post_norm, norm(x, w.ln2));
    return H(s.out, x + mlp_block(i, h, H) * residual_mult_);
  }

 private:
  double embedding_mult_ = 1, residual_mult_ = 1, attention_mult_ = 1, logits_scaling_ = 1;
  bool moe_ = false;
  int64_t d_shared_ = 0;
};

const bool registered = [] {
  for (const char* a : {"granite", "granitemoe", "granitemoeshared"})
    register_architecture(a, [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<GraniteModel>(c, std::move(w));
    });
  return true;
}();

}  // namespace
}  // namespace mlxterp
