#include "models/family.hpp"

#include "mlxterp/error.hpp"

namespace mlxterp {

int FamilyModel::add_site(int i, const std::string& comp, bool on_request) {
  if (i < 0) return sites_.add(comp, -1, "", on_request);
  return sites_.add(layer_prefix(i) + (comp.empty() ? "" : "." + comp), i, comp, on_request);
}

void FamilyModel::add_attention_sites(int i, LayerSites& l, bool fused_qkv) {
  if (fused_qkv) l.qkv = add_site(i, "self_attn.qkv_proj");
  l.q = add_site(i, "self_attn.q_proj");
  l.k = add_site(i, "self_attn.k_proj");
  l.v = add_site(i, "self_attn.v_proj");
  if (config_.qk_norm) {
    l.q_norm = add_site(i, "self_attn.q_norm");
    l.k_norm = add_site(i, "self_attn.k_norm");
  }
  l.attn_weights = add_site(i, "self_attn.attention_weights", /*on_request=*/true);
  l.z = add_site(i, "self_attn.z");
  l.o = add_site(i, "self_attn.o_proj");
  l.attn = add_site(i, "self_attn");
}

void FamilyModel::add_mlp_sites(int i, LayerSites& l, Mlp kind) {
  if (kind == Mlp::FusedGated) l.gate_up = add_site(i, "mlp.gate_up_proj");
  if (kind != Mlp::Plain) l.gate = add_site(i, "mlp.gate_proj");
  l.up = add_site(i, "mlp.up_proj");
  l.hidden = add_site(i, "mlp.hidden");
  l.down = add_site(i, "mlp.down_proj");
  l.mlp = add_site(i, "mlp");
}

void FamilyModel::add_block_sites(int i, const BlockShape& shape) {
  LayerSites& l = ls_[i];
  l.resid_pre = add_site(i, "resid_pre");
  if (shape.input_norm) l.input_norm = add_site(i, "input_layernorm");
  add_attention_sites(i, l, shape.fused_qkv);
  if (shape.resid_mid) l.resid_mid = add_site(i, "resid_mid");
  if (shape.post_norm) l.post_norm = add_site(i, "post_attention_layernorm");
  add_mlp_sites(i, l, shape.mlp);
  l.out = add_site(i, "");
}

const std::vector<std::pair<std::string, std::string>>& FamilyModel::gpt2_block_paths() {
  static const std::vector<std::pair<std::string, std::string>> paths = {
      {"", ""},
      {"ln_1", "input_layernorm"},
      {"attn", "self_attn"},
      {"attn.c_attn", "self_attn.qkv_proj"},
      {"attn.c_proj", "self_attn.o_proj"},
      {"ln_2", "post_attention_layernorm"},
      {"mlp", "mlp"},
      {"mlp.c_fc", "mlp.up_proj"},
      {"mlp.act", "mlp.hidden"},
      {"mlp.c_proj", "mlp.down_proj"}};
  return paths;
}

at::Tensor FamilyModel::layer_norm_block(int i, at::Tensor x, Context& ctx, Hooks& H) {
  const LayerSites& s = ls_[i];
  const LayerWeights& w = lw_[i];
  const double eps = config_.norm_eps;
  x = H(s.resid_pre, x);
  at::Tensor h = H(s.input_norm, blocks::layer_norm(x, w.ln1, w.ln1_b, eps));
  x = H(s.resid_mid, x + attention_block(i, h, ctx, H));
  h = H(s.post_norm, blocks::layer_norm(x, w.ln2, w.ln2_b, eps));
  return H(s.out, x + mlp_block(i, h, H));
}

void FamilyModel::alias_blocks(const std::string& prefix,
                               const std::vector<std::pair<std::string, std::string>>& map) {
  for (int i = 0; i < config_.n_layers; ++i) {
    const std::string canon = layer_prefix(i), native = prefix + std::to_string(i);
    for (const auto& [from, to] : map) {
      int id = sites_.find(to.empty() ? canon : canon + "." + to);
      if (id >= 0) sites_.add_alias(from.empty() ? native : native + "." + from, id);
    }
  }
}

const nlohmann::json& FamilyModel::text_config() const {
  const nlohmann::json& raw = config_.raw;
  if (raw.is_object() && raw.contains("text_config") && raw["text_config"].is_object()) return raw["text_config"];
  return raw;
}

at::Tensor FamilyModel::opt_weight(const std::string& name) const {
  auto it = weights_.find(name);
  return it == weights_.end() ? at::Tensor() : it->second;
}

at::Tensor FamilyModel::plain_mlp(int i, const at::Tensor& h, const at::Tensor& up_w, const at::Tensor& up_b,
                                  const at::Tensor& down_w, const at::Tensor& down_b, Hooks& H) const {
  const LayerSites& s = ls_[i];
  at::Tensor u = H(s.up, blocks::linear(h, up_w, up_b));  // [b, t, d_mlp]
  at::Tensor a = H(s.hidden, blocks::activation(config_.hidden_act, u));
  return H(s.mlp, H(s.down, blocks::linear(a, down_w, down_b)));  // [b, t, d_model]
}

LlamaModel::QKV FamilyModel::split_qkv(int i, const at::Tensor& qkv, const Context& ctx, Hooks& H,
                                       QkvLayout layout) const {
  const LayerSites& s = ls_[i];
  const auto& c = config_;
  const int64_t b = ctx.batch, t = ctx.t, nh = c.n_heads, nk = c.n_kv_heads, dh = c.d_head;
  std::vector<at::Tensor> parts;
  if (layout == QkvLayout::PerHead) {
    MLXTERP_ASSERT(nk == nh);
    parts = qkv.view({b, t, nh, 3 * dh}).split(dh, -1);  // each [b, t, nh, dh]
    for (auto& p : parts) p = p.reshape({b, t, nh * dh});
  } else {
    parts = qkv.split_with_sizes({nh * dh, nk * dh, nk * dh}, -1);
  }
  at::Tensor q = H(s.q, parts[0]), k = H(s.k, parts[1]), v = H(s.v, parts[2]);
  return {q.reshape({b, t, nh, dh}), k.reshape({b, t, nk, dh}), v.reshape({b, t, nk, dh})};
}

at::Tensor FamilyModel::fused_gated_mlp(int i, const at::Tensor& h, const at::Tensor& gate_up_w, const at::Tensor& down_w,
                                        Hooks& H) const {
  const LayerSites& s = ls_[i];
  const int64_t f = config_.d_mlp;
  at::Tensor gu = H(s.gate_up, blocks::linear(h, gate_up_w));  // [b, t, 2 f]
  at::Tensor g = H(s.gate, gu.narrow(-1, 0, f));
  at::Tensor u = H(s.up, gu.narrow(-1, f, f));
  at::Tensor hid = H(s.hidden, u * blocks::activation(config_.hidden_act, g));
  return H(s.mlp, H(s.down, blocks::linear(hid, down_w)));
}

at::Tensor FamilyModel::learned_positions(const Context& ctx, Hooks& H, const at::Tensor& wpe, int site,
                                          int64_t offset, const char* family) const {
  if (ctx.positions.numel()) {
    const int64_t hi = ctx.positions.max().item<int64_t>();
    MLXTERP_CHECK(hi + offset < wpe.size(0), family, ": position ", hi, " is past the model's learned positions; ",
                  "expected at most ", wpe.size(0) - offset, " tokens (the config's n_positions / max_position_embeddings)");
  }
  return H(site, at::embedding(wpe, offset ? ctx.positions + offset : ctx.positions));  // [b, t, d]
}

void FamilyModel::bind_gpt2_norms_and_mlp(int i, const std::string& p) {
  LayerWeights& l = lw_[i];
  l.ln1 = opt_weight(p + "ln_1.weight");
  l.ln1_b = opt_weight(p + "ln_1.bias");
  l.ln2 = opt_weight(p + "ln_2.weight");
  l.ln2_b = opt_weight(p + "ln_2.bias");
  l.up = opt_weight(p + "mlp.c_fc.weight");
  l.up_b = opt_weight(p + "mlp.c_fc.bias");
  l.down = opt_weight(p + "mlp.c_proj.weight");
  l.down_b = opt_weight(p + "mlp.c_proj.bias");
}

at::Tensor FamilyModel::lm_head_or_embedding() const {
  return has_weight("lm_head.weight") ? opt_weight("lm_head.weight") : embed_w_;
}

void FamilyModel::expect_lm_head(std::map<std::string, std::vector<int64_t>>& out, int64_t width) const {
  if (!config_.tie_word_embeddings || has_weight("lm_head.weight")) out["lm_head.weight"] = {config_.d_vocab, width};
}

at::Tensor FamilyModel::routed_experts(const at::Tensor& x, at::Tensor weights, const at::Tensor& chosen, int64_t b,
                                       int64_t t, int routing_site, const std::vector<int>& expert_sites, Hooks& H,
                                       const std::function<at::Tensor(int64_t, const at::Tensor&)>& expert) const {
  const int64_t N = x.size(0), d = x.size(1), E = weights.size(1);
  at::Tensor routed = weights.view({b, t, E});
  at::Tensor edited = H(routing_site, routed);
  at::Tensor mask;  // [N, E] bool: token n goes to expert e
  if (edited.is_same(routed)) {
    mask = at::zeros({N, E}, at::TensorOptions().dtype(at::kBool).device(x.device())).scatter(1, chosen, true);
  } else {
    mask = edited.reshape({N, E}) != 0;
    weights = edited.reshape({N, E});
  }
  at::Tensor out = at::zeros_like(x);
  at::Tensor hit = mask.any(0).cpu();
  const bool* hit_p = hit.data_ptr<bool>();
  for (int64_t e = 0; e < E; ++e) {
    const bool want_site = H.wants(expert_sites[e]);
    if (!hit_p[e] && !want_site) continue;
    at::Tensor idx = mask.select(1, e).nonzero().squeeze(1);  // tokens routed to expert e
    at::Tensor y = expert(e, x.index_select(0, idx));          // [n_e, d]
    if (want_site) {
      at::Tensor full = at::zeros_like(x).index_copy(0, idx, y.to(x.scalar_type())).view({b, t, d});
      y = H(expert_sites[e], full).reshape({N, d}).index_select(0, idx);
    }
    at::Tensor we = weights.index_select(0, idx).select(1, e).unsqueeze(1);  // [n_e, 1]
    out = out.index_add(0, idx, (y * we).to(x.scalar_type()));
  }
  return out;
}

}  // namespace mlxterp
