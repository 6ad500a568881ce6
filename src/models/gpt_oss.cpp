// gpt-oss (OpenAI), matched to Hugging Face transformers' GptOssForCausalLM. A Llama-shaped decoder with:
//   - attention sinks: a learned logit per head (self_attn.sinks [H]) joins each softmax as one more column
//     with no value behind it, so a head can attend "nowhere" (its weights over the real keys sum to < 1);
//   - q/k/v/o biases; sliding-window and full layers alternating (layer_types, sliding first);
//   - YaRN rotary without truncation of the correction range;
//   - every MLP a top-k mixture of experts:
//       router logits = router(h) (weight + bias)                site mlp.gate            [b, t, E]
//       weights = softmax over the k largest logits, 0 elsewhere  site mlp.routing_weights [b, t, E]
//       expert e: gu = x W_gu[e] + b_gu[e] ([n, 2f], gate / up interleaved: gate = gu[:, 0::2], up = gu[:, 1::2]),
//                 gate = min(gate, 7), up = clamp(up, -7, 7), y = ((up + 1) * gate * sigmoid(1.702 gate)) W_d[e] + b_d[e]
//                                                                site mlp.experts.{e}     [b, t, d] (on request)
//       sum_e weights[:, e] * y_e                                 site mlp.switch_mlp, mlp [b, t, d]
//     The experts are stored as stacked tensors mlp.experts.{gate_up_proj [E, d, 2f], gate_up_proj_bias [E, 2f],
//     down_proj [E, f, d], down_proj_bias [E, d]}; the router as mlp.router.{weight, bias}.
// HF's module name mlp.router is an alias of the mlp.gate site. MXFP4 experts (OpenAI's checkpoints) are dequantized at
// load, as HF's Mxfp4Config(dequantize=True) does.
#include "mlxterp/error.hpp"
#include "models/moe.hpp"

namespace mlxterp {
namespace {

// OpenAI's checkpoints store the experts in MXFP4: <proj>_blocks uint8 [E, rows, G, 16] (two e2m1 values per byte,
// low nibble first) and <proj>_scales uint8 [E, rows, G] (e8m0: 2^(s - 127) per 32 values). Dequantized as HF's
// loader does (in bfloat16, exact) to [E, rows, 32 G] and transposed to HF's dense layout [E, 32 G, rows].
at::Tensor dequantize_mxfp4(const at::Tensor& blocks, const at::Tensor& scales, const std::string& name) {
  const std::string where = "weights (gpt_oss)";
  MLXTERP_CHECK(blocks.scalar_type() == at::kByte && scales.scalar_type() == at::kByte, where, ": ", name,
                "_blocks / _scales must be uint8; got ", c10::toString(blocks.scalar_type()), " / ",
                c10::toString(scales.scalar_type()));
  MLXTERP_CHECK(blocks.dim() == 4 && blocks.size(3) == 16 && scales.dim() == 3 &&
                    scales.sizes() == blocks.sizes().slice(0, 3),
                where, ": ", name, "_blocks must be [E, rows, G, 16] and ", name, "_scales [E, rows, G]; got ",
                blocks.sizes(), " and ", scales.sizes());
  static const float kE2M1[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
  const at::Tensor lut = at::from_blob(const_cast<float*>(kE2M1), {16}, at::kFloat).to(blocks.device());
  const int64_t E = blocks.size(0), rows = blocks.size(1), G = blocks.size(2);
  at::Tensor lo = lut.index_select(0, at::bitwise_and(blocks, 15).to(at::kLong).flatten());
  at::Tensor hi = lut.index_select(0, at::bitwise_right_shift(blocks, 4).to(at::kLong).flatten());
  at::Tensor v = at::stack({lo, hi}, -1).view({E, rows, G, 32});                     // value pairs in column order
  at::Tensor scale = at::exp2(scales.to(at::kFloat) - 127).unsqueeze(-1);             // [E, rows, G, 1]
  at::Tensor dense = (v * scale).to(at::kBFloat16).view({E, rows, G * 32});          // HF rounds to bf16 here
  return dense.transpose(1, 2).contiguous();                                         // [E, 32 G, rows]
}

// Replaces every <proj>_blocks / <proj>_scales pair by the dense <proj>.
TensorMap dense_experts(TensorMap w) {
  std::vector<std::string> packed;
  for (const auto& [name, t] : w)
    if (name.size() > 7 && name.compare(name.size() - 7, 7, "_blocks") == 0) packed.push_back(name.substr(0, name.size() - 7));
  for (const std::string& p : packed) {
    auto s = w.find(p + "_scales");
    MLXTERP_CHECK(s != w.end(), "weights (gpt_oss): ", p, "_blocks has no ", p, "_scales beside it");
    w[p] = dequantize_mxfp4(w.at(p + "_blocks"), s->second, p);
    w.erase(p + "_blocks");
    w.erase(p + "_scales");
  }
  return w;
}

class GptOssModel : public MoeFamilyModel {
 public:
  GptOssModel(const ModelConfig& c, TensorMap w) : MoeFamilyModel(c, dense_experts(std::move(w))) {
    const auto& t = text_config();
    const std::string where = "config (gpt_oss)";
    n_experts_ = json_int(t, "num_local_experts", 0, where);
    top_k_ = json_int(t, "num_experts_per_tok", json_int(t, "experts_per_token", 4, where), where);
    MLXTERP_CHECK(n_experts_ > 0, where, ": num_local_experts must be > 0, got ", n_experts_);
    MLXTERP_CHECK(top_k_ >= 1 && top_k_ <= n_experts_, where, ": num_experts_per_tok must be in 1 .. ", n_experts_,
                  ", got ", top_k_);
    MLXTERP_CHECK(config_.attention_bias, where, ": attention_bias must be true (gpt-oss has q/k/v/o biases)");
    init();
  }

 protected:
  struct OssWeights {
    at::Tensor router_w, router_b, sinks;
    at::Tensor gate_up, gate_up_b, down, down_b;  // [E, d, 2f], [E, 2f], [E, f, d], [E, d]
  };

  std::string expert_prefix(int i) const { return layer_prefix(i) + ".mlp.experts."; }

  void build_sites() override {
    add_moe_decoder_sites([](int) { return true; }, false, false);
    alias_blocks("model.layers.", {{"mlp.router", "mlp.gate"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    ow_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      OssWeights& m = ow_[i];
      const std::string p = layer_prefix(i);
      m.sinks = opt_weight(p + ".self_attn.sinks");
      m.router_w = opt_weight(p + ".mlp.router.weight");
      m.router_b = opt_weight(p + ".mlp.router.bias");
      m.gate_up = opt_weight(expert_prefix(i) + "gate_up_proj");
      m.gate_up_b = opt_weight(expert_prefix(i) + "gate_up_proj_bias");
      m.down = opt_weight(expert_prefix(i) + "down_proj");
      m.down_b = opt_weight(expert_prefix(i) + "down_proj_bias");
    }
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    LlamaModel::add_layer_expected(i, out);
    const auto& c = config_;
    const std::string p = layer_prefix(i);
    for (const char* n : {".mlp.gate_proj.weight", ".mlp.up_proj.weight", ".mlp.down_proj.weight"}) out.erase(p + n);
    const int64_t E = n_experts_, d = c.d_model, f = c.d_mlp;
    out[p + ".self_attn.o_proj.bias"] = {d};
    out[p + ".self_attn.sinks"] = {c.n_heads};
    out[p + ".mlp.router.weight"] = {E, d};
    out[p + ".mlp.router.bias"] = {E};
    out[expert_prefix(i) + "gate_up_proj"] = {E, d, 2 * f};
    out[expert_prefix(i) + "gate_up_proj_bias"] = {E, 2 * f};
    out[expert_prefix(i) + "down_proj"] = {E, f, d};
    out[expert_prefix(i) + "down_proj_bias"] = {E, d};
  }

  blocks::AttentionOptions attention_options(int i) const override {
    blocks::AttentionOptions o;
    o.sinks = ow_[size_t(i)].sinks;
    return o;
  }

  // Expert e of layer i on its tokens x [n, d] -> [n, d].
  at::Tensor expert(const OssWeights& w, int64_t e, const at::Tensor& x) const {
    constexpr double kLimit = 7.0, kAlpha = 1.702;  // HF's GptOssExperts constants
    at::Tensor gu = at::matmul(x, w.gate_up[e]) + w.gate_up_b[e];  // [n, 2f]
    const int64_t f = gu.size(1) / 2;
    at::Tensor gate = gu.slice(1, 0, 2 * f, 2).clamp_max(kLimit);
    at::Tensor up = gu.slice(1, 1, 2 * f, 2).clamp(-kLimit, kLimit);
    at::Tensor glu = gate * at::sigmoid(gate * kAlpha);
    return at::matmul((up + 1) * glu, w.down[e]) + w.down_b[e];
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    const MoeSites& s = ms_[i];
    const OssWeights& w = ow_[i];
    const int64_t b = h.size(0), t = h.size(1), d = h.size(2), E = n_experts_, N = b * t;
    at::Tensor logits = H(s.router, at::linear(h, w.router_w, w.router_b));  // [b, t, E]
    // Softmax over the top-k logits, 0 elsewhere, [N, E] (HF takes it in the model dtype; float32 here, then cast).
    blocks::MoeRouting r = blocks::moe_route(logits.reshape({N, E}), top_k_, false, /*softmax_over_topk=*/true);
    at::Tensor out = routed_experts(h.reshape({N, d}), r.weights.to(h.scalar_type()), r.chosen, b, t, s.routing, s.experts, H,
                                    [&](int64_t e, const at::Tensor& xe) { return expert(w, e, xe); });
    return H(ls_[i].mlp, H(s.switch_mlp, out.view({b, t, d})));
  }

 private:
  std::vector<OssWeights> ow_;  // per layer
};

const bool registered = register_architecture("gpt_oss", [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
  return std::make_unique<GptOssModel>(c, std::move(w));
});

}  // namespace
}  // namespace mlxterp
