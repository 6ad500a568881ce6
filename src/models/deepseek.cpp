// DeepSeek-V3 (and models built on it) and DeepSeek-V2, matched to Hugging Face transformers'
// DeepseekV3ForCausalLM / DeepseekV2ForCausalLM.
//
// Multi-head latent attention (MLA), per block, h [b, t, d]:
//   q = q_b(RMSNorm(q_a(h))) when q_lora_rank is set, else q_proj(h)   [b, t, H (nope + rope)]
//   c = kv_a_proj_with_mqa(h) = [latent (kv_lora_rank) | k_rot (rope)]
//   kv = kv_b_proj(RMSNorm(latent))  -> per head [k_nope (nope) | v (v_head_dim)]
//   keys = [k_nope | k_rot shared by all heads], queries' and keys' rope parts rotated (rope_interleave: the
//   rotated pairs are adjacent and come out de-interleaved, as HF), softmax scale (nope + rope)^-1/2 times
//   YaRN's mscale(factor, mscale_all_dim)^2.
// Sites: self_attn.q_a_proj, self_attn.q_a_layernorm (q_lora only), self_attn.kv_a_proj_with_mqa,
//   self_attn.kv_a_layernorm, self_attn.kv_b_proj, then the usual self_attn.{q,k,v}_proj (queries and keys
//   before the rotary, [b, t, H (nope + rope)], the shared k_rot repeated per head; values [b, t, H v_head_dim]),
//   attention_weights, z, o_proj. q_b_proj is an alias of q_proj.
// MLP: the first first_k_dense_replace layers are SwiGLU MLPs; the rest mixtures of experts:
//   logits = gate(h) in float32                                     site mlp.gate            [b, t, E]
//   scores = sigmoid(logits); the experts are chosen by scores + e_score_correction_bias, only within the
//   topk_group groups (of n_group) whose two best biased scores sum highest
//   weights = the chosen experts' scores (renormalised if norm_topk_prob) * routed_scaling_factor
//                                                                   site mlp.routing_weights [b, t, E]
//   sum_e weights_e * expert_e(h)                                   sites mlp.experts.{e}, mlp.switch_mlp
//   + shared_experts(h) (one SwiGLU MLP of n_shared_experts * moe_intermediate_size)
//                                                                   site mlp.shared_expert, then mlp
// DeepSeek-V2 differs only in the router: scores = softmax(logits) over all experts, the top k chosen directly
// (topk_method "greedy", V2-Lite) or within the topk_group groups holding the best single scores
// ("group_limited_greedy"); weights = those scores * routed_scaling_factor, never renormalised, no bias; and its
// rotary always pairs adjacent dimensions.
// GLM-4.5 (glm4_moe: q/k/v bias, optional per-head q/k RMSNorm, partial rotary) and dots.llm1 (dots1: Qwen3
// attention) put V3's router and shared experts behind standard attention, which LlamaModel provides.
// The checkpoint's multi-token-prediction layers (model.layers.{n} and up) are not part of the model and are
// dropped at load, as HF does.
#include <cmath>

#include "mlxterp/error.hpp"
#include "models/moe.hpp"

namespace mlxterp {
namespace {

// Drops the weights of layers past the model's last (DeepSeek-V3's MTP module).
TensorMap without_mtp_layers(TensorMap w, int64_t n_layers) {
  const std::string prefix = "model.layers.";
  for (auto it = w.begin(); it != w.end();) {
    const std::string& n = it->first;
    if (n.compare(0, prefix.size(), prefix) == 0) {
      const int64_t layer = std::atoll(n.c_str() + prefix.size());
      if (layer >= n_layers) {
        it = w.erase(it);
        continue;
      }
    }
    ++it;
  }
  return w;
}

double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

class DeepseekModel : public MoeFamilyModel {
 public:
  DeepseekModel(const ModelConfig& c, TensorMap w)
      : MoeFamilyModel(c, without_mtp_layers(std::move(w), c.n_layers)) {
    const auto& t = text_config();
    v2_ = config_.model_type == "deepseek_v2";
    mla_ = v2_ || config_.model_type == "deepseek_v3";
    const std::string where = "config (" + config_.model_type + ")";
    parse_moe(t, where);
    if (!mla_) {
      init();
      return;
    }
    auto rank = [&](const char* key) -> int64_t {  // null = no low-rank pair
      return t.contains(key) && !t[key].is_null() ? json_int(t, key, 0, where) : 0;
    };
    q_lora_ = rank("q_lora_rank");
    kv_lora_ = json_int(t, "kv_lora_rank", 512, where);
    rope_dim_ = json_int(t, "qk_rope_head_dim", 64, where);
    nope_dim_ = json_int(t, "qk_nope_head_dim", 128, where);
    v_dim_ = json_int(t, "v_head_dim", 128, where);
    for (auto [name, v] : {std::pair{"kv_lora_rank", kv_lora_}, {"qk_rope_head_dim", rope_dim_},
                           {"qk_nope_head_dim", nope_dim_}, {"v_head_dim", v_dim_}})
      MLXTERP_CHECK(v > 0, where, ": ", name, " must be > 0, got ", v);
    MLXTERP_CHECK(rope_dim_ % 2 == 0, where, ": qk_rope_head_dim must be even, got ", rope_dim_);
    interleave_ = v2_ || json_bool(t, "rope_interleave", true, where);
    // The rotary covers the rope part of each head; the softmax scale is that of the whole q/k head, times
    // YaRN's mscale(all_dim)^2 when the rope scales.
    config_.d_head = rope_dim_;
    const RopeParams& rp = config_.rope_for_layer(0);
    scale_ = 1.0 / std::sqrt(double(nope_dim_ + rope_dim_));
    if (rp.type != "default" && rp.mscale_all_dim && *rp.mscale_all_dim != 0) {
      const double m = yarn_mscale(rp.factor, *rp.mscale_all_dim);
      scale_ *= m * m;
    }
    init();
    no_rope_.assign(size_t(config_.n_layers), 1);  // qkv() rotates the rope parts itself
  }

 protected:
  // The experts' configuration (every family here).
  void parse_moe(const nlohmann::json& t, const std::string& where) {
    n_experts_ = json_int(t, "n_routed_experts", 0, where);
    top_k_ = json_int(t, "num_experts_per_tok", 8, where);
    n_group_ = json_int(t, "n_group", 1, where);
    topk_group_ = json_int(t, "topk_group", 1, where);
    n_dense_ = json_int(t, "first_k_dense_replace", 0, where);
    d_expert_ = json_int(t, "moe_intermediate_size", config_.d_mlp, where);
    d_shared_ = json_int(t, "n_shared_experts", 0, where) * d_expert_;
    normalize_ = json_bool(t, "norm_topk_prob", true, where);
    scaling_factor_ = json_float(t, "routed_scaling_factor", 1.0, where);
    if (v2_) {
      const std::string method = json_string(t, "topk_method", "greedy", where);
      MLXTERP_CHECK(method == "greedy" || method == "group_limited_greedy", where, ": topk_method '", method,
                    "' is not supported; expected \"greedy\" or \"group_limited_greedy\"");
      if (method == "greedy") n_group_ = topk_group_ = 1;
      normalize_ = false;  // HF's V2 router never renormalises
      MLXTERP_CHECK(!json_bool(t, "mlp_bias", false, where), where, ": mlp_bias is not supported; expected false");
    }
    MLXTERP_CHECK(n_experts_ > 0 || n_dense_ >= config_.n_layers, where, ": n_routed_experts must be > 0, got ",
                  n_experts_);
    if (n_experts_ > 0) {
      MLXTERP_CHECK(top_k_ >= 1 && top_k_ <= n_experts_, where, ": num_experts_per_tok must be in 1 .. ", n_experts_,
                    ", got ", top_k_);
      MLXTERP_CHECK(n_group_ >= 1 && n_experts_ % n_group_ == 0 && n_experts_ / n_group_ >= (v2_ ? 1 : 2), where,
                    ": n_group must divide n_routed_experts into groups of at least 2; got n_group ", n_group_,
                    " for ", n_experts_, " experts");
      MLXTERP_CHECK(topk_group_ >= 1 && topk_group_ <= n_group_ && top_k_ <= topk_group_ * (n_experts_ / n_group_),
                    where, ": topk_group must be in 1 .. n_group (", n_group_, ") and leave num_experts_per_tok (",
                    top_k_, ") experts to choose from; got ", topk_group_);
    }
    const int64_t freq = json_int(t, "moe_layer_freq", 1, where);
    MLXTERP_CHECK(freq == 1, where, ": moe_layer_freq ", freq, " is not supported; expected 1");
  }

  struct MlaSites {
    int q_a = -1, q_a_norm = -1, kv_a = -1, kv_a_norm = -1, kv_b = -1;
  };
  struct MlaWeights {
    at::Tensor q_a, q_a_b, q_a_norm, q_b, kv_a, kv_a_b, kv_a_norm, kv_b, e_bias;
  };

  bool sparse(int i) const { return n_experts_ > 0 && i >= n_dense_; }

  void build_sites() override {
    as_.assign(config_.n_layers, {});
    add_moe_decoder_sites([&](int i) { return sparse(i); }, d_shared_ > 0, false, [&](int i) {
      MlaSites& a = as_[i];  // the latent attention's own sites, before q/k/v
      if (q_lora_ > 0) {
        a.q_a = add_site(i, "self_attn.q_a_proj");
        a.q_a_norm = add_site(i, "self_attn.q_a_layernorm");
      }
      if (mla_) {
        a.kv_a = add_site(i, "self_attn.kv_a_proj_with_mqa");
        a.kv_a_norm = add_site(i, "self_attn.kv_a_layernorm");
        a.kv_b = add_site(i, "self_attn.kv_b_proj");
      }
    });
    if (q_lora_ > 0) alias_blocks("model.layers.", {{"self_attn.q_b_proj", "self_attn.q_proj"}});
    if (d_shared_ > 0) alias_blocks("model.layers.", {{"mlp.shared_experts", "mlp.shared_expert"}});
    sites_.add_standard_aliases(int(config_.n_layers));
  }

  void bind() override {
    LlamaModel::bind();
    aw_.assign(config_.n_layers, {});
    mw_.assign(config_.n_layers, {});
    for (int i = 0; i < config_.n_layers; ++i) {
      const std::string a = layer_prefix(i) + ".self_attn.", m = layer_prefix(i) + ".mlp.";
      MlaWeights& w = aw_[i];
      w.q_a = opt_weight(a + "q_a_proj.weight");
      w.q_a_b = opt_weight(a + "q_a_proj.bias");
      w.q_a_norm = opt_weight(a + "q_a_layernorm.weight");
      w.q_b = opt_weight(a + "q_b_proj.weight");
      w.kv_a = opt_weight(a + "kv_a_proj_with_mqa.weight");
      w.kv_a_b = opt_weight(a + "kv_a_proj_with_mqa.bias");
      w.kv_a_norm = opt_weight(a + "kv_a_layernorm.weight");
      w.kv_b = opt_weight(a + "kv_b_proj.weight");
      if (!sparse(i)) continue;
      MoeWeights& e = mw_[i];
      e.router = opt_weight(m + "gate.weight");
      w.e_bias = opt_weight(m + "gate.e_score_correction_bias");
      for (int64_t x = 0; x < n_experts_; ++x) {
        const std::string p = m + "experts." + std::to_string(x) + ".";
        e.experts.push_back({opt_weight(p + "gate_proj.weight"), opt_weight(p + "up_proj.weight"),
                             opt_weight(p + "down_proj.weight")});
      }
      if (d_shared_ > 0)
        e.shared = {opt_weight(m + "shared_experts.gate_proj.weight"), opt_weight(m + "shared_experts.up_proj.weight"),
                    opt_weight(m + "shared_experts.down_proj.weight")};
    }
  }

  void add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const override {
    LlamaModel::add_layer_expected(i, out);
    const int64_t d = config_.d_model;
    const std::string a = layer_prefix(i) + ".self_attn.", m = layer_prefix(i) + ".mlp.";
    if (mla_) add_mla_expected(a, out);
    if (!sparse(i)) return;
    for (const char* n : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) out.erase(m + n);
    out[m + "gate.weight"] = {n_experts_, d};
    if (!v2_) out[m + "gate.e_score_correction_bias"] = {n_experts_};
    for (int64_t e = 0; e < n_experts_; ++e) {
      const std::string p = m + "experts." + std::to_string(e) + ".";
      out[p + "gate_proj.weight"] = {d_expert_, d};
      out[p + "up_proj.weight"] = {d_expert_, d};
      out[p + "down_proj.weight"] = {d, d_expert_};
    }
    if (d_shared_ > 0) {
      out[m + "shared_experts.gate_proj.weight"] = {d_shared_, d};
      out[m + "shared_experts.up_proj.weight"] = {d_shared_, d};
      out[m + "shared_experts.down_proj.weight"] = {d, d_shared_};
    }
  }

  // The latent attention's weights, instead of Llama's q/k/v/o.
  void add_mla_expected(const std::string& a, std::map<std::string, std::vector<int64_t>>& out) const {
    const auto& c = config_;
    const int64_t d = c.d_model, H = c.n_heads, qk = nope_dim_ + rope_dim_;
    for (const char* n : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "q_proj.bias",
                          "k_proj.bias", "v_proj.bias", "o_proj.bias"})
      out.erase(a + n);
    if (q_lora_ > 0) {
      out[a + "q_a_proj.weight"] = {q_lora_, d};
      if (c.attention_bias) out[a + "q_a_proj.bias"] = {q_lora_};
      out[a + "q_a_layernorm.weight"] = {q_lora_};
      out[a + "q_b_proj.weight"] = {H * qk, q_lora_};
    } else {
      out[a + "q_proj.weight"] = {H * qk, d};
    }
    out[a + "kv_a_proj_with_mqa.weight"] = {kv_lora_ + rope_dim_, d};
    if (c.attention_bias) out[a + "kv_a_proj_with_mqa.bias"] = {kv_lora_ + rope_dim_};
    out[a + "kv_a_layernorm.weight"] = {kv_lora_};
    out[a + "kv_b_proj.weight"] = {H * (nope_dim_ + v_dim_), kv_lora_};
    out[a + "o_proj.weight"] = {d, H * v_dim_};
    if (c.attention_bias) out[a + "o_proj.bias"] = {d};
  }

  blocks::AttentionOptions attention_options(int i) const override {
    if (!mla_) return MoeFamilyModel::attention_options(i);
    blocks::AttentionOptions o;
    o.scale = scale_;
    return o;
  }

  // The rope part (last rope_dim_ of each head) of x [b, t, heads, nope + rope] rotated; interleaved pairs
  // come out de-interleaved ([evens | odds] rotated as halves), as HF's apply_rotary_pos_emb_interleave.
  at::Tensor rotate(int i, const at::Tensor& x, Context& ctx) const {
    auto cs = ctx.cos_sin.find("mla");
    if (cs == ctx.cos_sin.end()) cs = ctx.cos_sin.emplace("mla", blocks::rope_cos_sin(ropes_[i], ctx.positions)).first;
    at::Tensor pass = x.narrow(-1, 0, nope_dim_), rot = x.narrow(-1, nope_dim_, rope_dim_);
    if (interleave_) rot = at::cat({rot.slice(-1, 0, rope_dim_, 2), rot.slice(-1, 1, rope_dim_, 2)}, -1);
    // apply_rope wants [b, heads, t, dim]
    rot = blocks::apply_rope(rot.transpose(1, 2), cs->second.first, cs->second.second).transpose(1, 2);
    return at::cat({pass, rot.to(pass.scalar_type())}, -1);
  }

  QKV qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) override {
    if (!mla_) return MoeFamilyModel::qkv(i, h, ctx, H);
    const LayerSites& s = ls_[i];
    const MlaSites& a = as_[i];
    const MlaWeights& w = aw_[i];
    const int64_t b = ctx.batch, t = ctx.t, nh = config_.n_heads, qk = nope_dim_ + rope_dim_;
    at::Tensor q;
    if (q_lora_ > 0) {
      at::Tensor qa = H(a.q_a, blocks::linear(h, w.q_a, w.q_a_b));  // [b, t, q_lora]
      q = blocks::linear(H(a.q_a_norm, norm(qa, w.q_a_norm)), w.q_b);
    } else {
      q = at::linear(h, lw_[i].q);
    }
    q = H(s.q, q);                                                       // [b, t, H qk]
    at::Tensor c = H(a.kv_a, blocks::linear(h, w.kv_a, w.kv_a_b));      // [b, t, kv_lora + rope]
    at::Tensor latent = H(a.kv_a_norm, norm(c.narrow(-1, 0, kv_lora_), w.kv_a_norm));
    at::Tensor kv = H(a.kv_b, at::linear(latent, w.kv_b)).view({b, t, nh, nope_dim_ + v_dim_});
    at::Tensor k_rot = c.narrow(-1, kv_lora_, rope_dim_).unsqueeze(2).expand({b, t, nh, rope_dim_});
    at::Tensor k = H(s.k, at::cat({kv.narrow(-1, 0, nope_dim_), k_rot}, -1).reshape({b, t, nh * qk}));
    at::Tensor v = H(s.v, kv.narrow(-1, nope_dim_, v_dim_).reshape({b, t, nh * v_dim_}));
    return {rotate(i, q.view({b, t, nh, qk}), ctx), rotate(i, k.view({b, t, nh, qk}), ctx), v.view({b, t, nh, v_dim_})};
  }

  at::Tensor mlp_block(int i, const at::Tensor& h, Hooks& H) override {
    if (!sparse(i)) return LlamaModel::mlp_block(i, h, H);
    const MoeSites& s = ms_[i];
    const MoeWeights& w = mw_[i];
    const int64_t E = n_experts_, N = h.size(0) * h.size(1), G = n_group_;
    at::Tensor logits = H(s.router, at::linear(h.to(at::kFloat), w.router.to(at::kFloat)));  // [b, t, E] float32
    // V3: sigmoid scores, chosen by score + bias among the groups whose two best biased scores sum highest;
    // V2: softmax scores, chosen among the groups holding the best single scores (all groups when greedy).
    at::Tensor scores = v2_ ? at::softmax(logits.reshape({N, E}), -1) : at::sigmoid(logits.reshape({N, E}));
    at::Tensor choice = v2_ ? scores : scores + aw_[i].e_bias.to(at::kFloat);  // [N, E]
    if (topk_group_ < G) {
      at::Tensor grouped = choice.view({N, G, E / G});
      at::Tensor group_score = v2_ ? std::get<0>(grouped.max(-1)) : std::get<0>(grouped.topk(2, -1)).sum(-1);  // [N, G]
      at::Tensor groups = std::get<1>(group_score.topk(topk_group_, -1));
      at::Tensor keep = at::zeros({N, G}, choice.options().dtype(at::kBool)).scatter(1, groups, true);
      // (HF fills the others with 0 for V2's softmax scores and -inf for V3's; both lose to any kept score)
      choice = choice.masked_fill(keep.unsqueeze(-1).expand({N, G, E / G}).reshape({N, E}).logical_not(),
                                  v2_ ? 0.0 : -std::numeric_limits<float>::infinity());
    }
    at::Tensor chosen = std::get<1>(choice.topk(top_k_, -1));  // [N, k]
    at::Tensor top = scores.gather(1, chosen);
    if (normalize_) top = top / (top.sum(-1, true) + 1e-20);
    at::Tensor weights = at::zeros_like(scores).scatter(1, chosen, top * scaling_factor_);
    at::Tensor y = mix_experts(i, h, weights, chosen, H);
    if (d_shared_ > 0) y = y + H(s.shared, expert_mlp(w.shared, h));
    return H(ls_[i].mlp, y);
  }

 private:
  int64_t q_lora_ = 0, kv_lora_ = 0, rope_dim_ = 0, nope_dim_ = 0, v_dim_ = 0;
  int64_t n_group_ = 1, topk_group_ = 1, n_dense_ = 0, d_expert_ = 0, d_shared_ = 0;
  bool v2_ = false, mla_ = true, normalize_ = true, interleave_ = true;
  double scaling_factor_ = 1.0, scale_ = 1.0;
  std::vector<MlaSites> as_;
  std::vector<MlaWeights> aw_;
};

const bool registered = [] {
  for (const char* a : {"deepseek_v3", "deepseek_v2", "glm4_moe", "dots1"})
    register_architecture(a, [](const ModelConfig& c, TensorMap w) -> std::unique_ptr<Model> {
      return std::make_unique<DeepseekModel>(c, std::move(w));
    });
  return true;
}();

}  // namespace
}  // namespace mlxterp
