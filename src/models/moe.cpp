// Mixture-of-experts decoders, matched to Hugging Face transformers: Mixtral, Qwen2-MoE (with its shared
// expert and sigmoid shared-expert gate), Qwen3-MoE (per-head q/k norm), OLMoE (full-width q/k norm).
// Attention is the Llama family's; the MLP of a sparse layer is
//   router logits = gate(h)                                   site mlp.gate            [b, t, E]
//   weights = top-k of softmax(logits) (renormalised when      site mlp.routing_weights [b, t, E]
//             norm_topk_prob / always for Mixtral), 0 elsewhere      (edit it to force or forbid experts:
//                                                                      the chosen experts are its nonzeros)
//   y_e = expert e's SwiGLU MLP on the tokens routed to it    site mlp.experts.{e}     [b, t, d] (on request;
//                                                                      0 at tokens not routed to e)
//   switch = sum_e weights[:, e] * y_e                        site mlp.switch_mlp      [b, t, d]
//   Qwen2-MoE: + sigmoid(shared_expert_gate(h)) * shared_expert(h)
//              sites mlp.shared_expert [b, t, d], mlp.shared_expert_gate [b, t, 1] (the gate's logit)
//   the MLP output                                            site mlp                 [b, t, d]
// Qwen-MoE layers listed in mlp_only_layers, or off the decoder_sparse_step grid, are dense Llama MLPs.
// Mixtral's checkpoint path block_sparse_moe (transformers 4.x) is an alias of mlp.
#include "models/moe.hpp"

#include "mlxterp/error.hpp"

namespace mlxterp {

void MoeFamilyModel::add_moe_sites(int i, bool shared_expert, bool shared_gate) {
  MoeSites& m = ms_[i];
  m.router = add_site(i, "mlp.gate");
  m.routing = add_site(i, "mlp.routing_weights");
  m.experts.clear();
  for (int64_t e = 0; e < n_experts_; ++e)
    m.experts.push_back(add_site(i, "mlp.experts." + std::to_string(e), /*on_request=*/true));
  m.switch_mlp = add_site(i, "mlp.switch_mlp");
  if (shared_expert) m.shared = add_site(i, "mlp.shared_expert");
  if (shared_gate) m.shared_gate = add_site(i, "mlp.shared_expert_gate");
  ls_[i].mlp = add_site(i, "mlp");
}

void MoeFamilyModel::add_moe_decoder_sites(const std::function<bool(int)>& sparse, bool shared_expert, bool shared_gate,
                                           const std::function<void(int)>& before_attention) {
  embed_site_ = add_site(-1, "model.embed_tokens");
  ls_.assign(config_.n_layers, {});
  ms_.assign(config_.n_layers, {});
  for (int i = 0; i < config_.n_layers; ++i) {
    LayerSites& l = ls_[i];
    l.resid_pre = add_site(i, "resid_pre");
    l.input_norm = add_site(i, "input_layernorm");
    if (before_attention) before_attention(i);
    add_attention_sites(i, l, /*fused_qkv=*/false);
    l.resid_mid = add_site(i, "resid_mid");
    l.post_norm = add_site(i, "post_attention_layernorm");
    if (sparse(i))
      add_moe_sites(i, shared_expert, shared_gate);
    else
      add_mlp_sites(i, l, Mlp::Gated);
    l.out = add_site(i, "");
  }
  norm_site_ = add_site(-1, "model.norm");
  head_site_ = add_site(-1, "lm_head");
}

at::Tensor MoeFamilyModel::expert_mlp(const Expert& e, const at::Tensor& x) const {
  return at::linear(blocks::gated_activation(config_.hidden_act, at::linear(x, e.gate), at::linear(x, e.up)), e.down);
}

at::Tensor MoeFamilyModel::mix_experts(int i, const at::Tensor& h, at::Tensor weights, const at::Tensor& chosen_idx,
                                       Hooks& H) const {
  const MoeSites& s = ms_[i];
  const MoeWeights& w = mw_[i];
  const int64_t b = h.size(0), t = h.size(1), d = h.size(2);
  at::Tensor out = routed_experts(h.reshape({b * t, d}), weights.reshape({b * t, n_experts_}), chosen_idx, b, t,
                                  s.routing, s.experts, H,
                                  [&](int64_t e, const at::Tensor& xe) { return expert_mlp(w.experts[e], xe); });
  return H(s.switch_mlp, out.view({b, t, d}));
}

namespace {

enum class Kind { Mixtral, Qwen2Moe, Qwen3Moe, Olmoe };

class MoEModel : public MoeFamilyModel {
 public:
  MoEModel(const ModelConfig& c, TensorMap w) : MoeFamilyModel(c, std::move(w)) {
    const auto& t = text_config();
    const std::string& mt = config_.model_type;
    const std::string where = "config (" + mt + ")";
    kind_ = mt == "mixtral" ? Kind::Mixtral : mt == "qwen2_moe" ? Kind::Qwen2Moe : mt == "qwen3_moe" ? Kind::Qwen3Moe
                                                                                                    : Kind::Olmoe;
    n_experts_ = json_int(t, "num_local_experts", json_int(t, "num_experts", 0, where), where);
    top_k_ = json_int(t, "num_experts_per_tok", 2, where);
    MLXTERP_CHECK(n_experts_ > 0, where, ": no experts; expected num_local_experts or num_experts > 0");
    MLXTERP_CHECK(top_k_ >= 1 && top_k_ <= n_experts_, where, ": num_experts_per_tok must be in 1 .. ", n_experts_,
                  ", got ", top_k_);
    const bool qwen = kind_ == Kind::Qwen2Moe || kind_ == Kind::Qwen3Moe;
    d_expert_ = qwen ? json_int(t, "moe_intermediate_size", config_.d_mlp, where) : config_.d_mlp;
    if (kind_ == Kind::Qwen2Moe) d_shared_ = json_int(t, "shared_expert_intermediate_size", 0, where);
    normalize_ = kind_ == Kind::Mixtral ? true : json_bool(t, "norm_topk_prob", false, where);
    sparse_.assign(config_.n_layers, true);
    if (qwen) {
      const int64_t step = json_int(t, "decoder_sparse_step", 1, where);
      MLXTERP_CHECK(step >= 1, where, ": decoder_sparse_step must be >= 1, got ", step);
      std::vector<int64_t> dense_only;
      if (t.contains("mlp_only_layers") && t["mlp_only_layers"].is_array())
        for (const auto& x : t["mlp_only_layers"]) dense_only.push_back(x.get<int64_t>());
      for (int64_t i = 0; i < config_.n_layers; ++i)
        sparse_[i] = std::find(dense_only.begin(), dense_only.end(), i) == dense_only.end() && (i + 1) % step == 0;
    }
    if (kind_ == Kind::Olmoe) {
      qk_norm_full_width_ = true;
      MLXTERP_CHECK(!t.contains("clip_qkv") || t["clip_qkv"].is_null(), where,
                    ": clip_qkv is not supported; expected null, got ", t["clip_qkv"].dump());
    }
    init();
  }

 protected:
  std::string moe_prefix(int i) const {
    return layer_prefix(i) + (kind_ == Kind::Mixtral ? ".block_sparse_moe." : ".mlp.");
  }
  std::string expert_name(int i, int64_t e, int part) const {  // part: 0 gate, 1 up, 2 down
    static const char* mixtral[] = {"w1", "w3", "w2"};
    static const char* hf[] = {"gate_proj", "up_proj", "down_proj"};
    return moe_prefix(i) + "experts." + std::to_string(e) + "." + (kind_ == Kind::Mixtral ? mixtral[part] : hf[part]) +
           ".weight";
  }

  void build_sites() override {
    add_moe_decoder_sites([&](int i) { return bool(sparse_[i]); }, d_shared_ > 0, d_shared_ > 0);
    if (kind_ == Kind::Mixtral) {
      std::vector<std::pair<std::string, std::string>> map = {{"block_sparse_moe", "mlp"},
                                                              {"block_sparse_moe.gate", "mlp.gate"}};
      for (int64_t e = 0; e < n_experts_; ++e)
        map.emplace_back("block_sparse_moe.experts." + std::to_string(e), "mlp.experts." + std::to_string(e));
      alias_blocks("model.layers.", map);
    }
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    mw_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      if (!sparse_[i]) continue;
      MoeWeights& m = mw_[i];
      m.router = opt_weight(moe_prefix(i) + "gate.weight");
      for (int64_t e = 0; e < n_experts_; ++e)
        m.experts.push_back({opt_weight(expert_name(i, e, 0)), opt_weight(expert_name(i, e, 1)),
                             opt_weight(expert_name(i, e, 2))});
      if (d_shared_ > 0) {
        const std::string p = moe_prefix(i) + "shared_expert.";
        m.shared = {opt_weight(p + "gate_proj.weight"), opt_weight(p + "up_proj.weight"), opt_weight(p + "down_proj.weight")};
        m.shared_gate = opt_weight(moe_prefix(i) + "shared_expert_gate.weight");
      }
    }
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    LlamaModel::add_layer_expected(i, out);
    if (!sparse_[i]) return;
    const auto& c = config_;
    const std::string p = layer_prefix(i) + ".mlp.";
    for (const char* n : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) out.erase(p + n);
    out[moe_prefix(i) + "gate.weight"] = {n_experts_, c.d_model};
    for (int64_t e = 0; e < n_experts_; ++e) {
      out[expert_name(i, e, 0)] = {d_expert_, c.d_model};
      out[expert_name(i, e, 1)] = {d_expert_, c.d_model};
      out[expert_name(i, e, 2)] = {c.d_model, d_expert_};
    }
    if (d_shared_ > 0) {
      out[p + "shared_expert.gate_proj.weight"] = {d_shared_, c.d_model};
      out[p + "shared_expert.up_proj.weight"] = {d_shared_, c.d_model};
      out[p + "shared_expert.down_proj.weight"] = {c.d_model, d_shared_};
      out[p + "shared_expert_gate.weight"] = {1, c.d_model};
    }
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    if (!sparse_[i]) return LlamaModel::mlp_block(i, h, H);
    const MoeSites& s = ms_[i];
    const MoeWeights& w = mw_[i];
    const int64_t E = n_experts_;
    at::Tensor logits = H(s.router, at::linear(h, w.router));  // [b, t, E]
    blocks::MoeRouting r = blocks::moe_route(logits.reshape({-1, E}), top_k_, normalize_);
    // Mixtral weighs expert outputs in float32; the Qwen/OLMoE routers cast the weights to the model dtype.
    at::Tensor y = mix_experts(i, h, kind_ == Kind::Mixtral ? r.weights : r.weights.to(h.scalar_type()), r.chosen, H);
    if (d_shared_ > 0) {
      at::Tensor sh = H(s.shared, expert_mlp(w.shared, h));              // [b, t, d]
      at::Tensor sg = H(s.shared_gate, at::linear(h, w.shared_gate));    // [b, t, 1]
      y = y + at::sigmoid(sg) * sh;
    }
    return H(ls_[i].mlp, y);
  }

 private:
  Kind kind_ = Kind::Mixtral;
  int64_t d_expert_ = 0, d_shared_ = 0;
  bool normalize_ = true;
  std::vector<bool> sparse_;
};

const bool registered = [] {
  for (const char* a : {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"})
    register_architecture(a, [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<MoEModel>(c, std::move(w));
    });
  return true;
}();

}  // namespace
}  // namespace mlxterp
