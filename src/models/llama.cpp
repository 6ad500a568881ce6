#include "models/llama.hpp"

#include <tuple>

#include "mlxterp/error.hpp"

namespace mlxterp {

LlamaModel::LlamaModel(const ModelConfig& config, TensorMap weights) : Model(config, std::move(weights)) { init(); }

LlamaModel::LlamaModel(const ModelConfig& config, TensorMap weights, DeferInit) : Model(config, std::move(weights)) {}

void LlamaModel::init() {
  build_sites();
  for (int64_t i = 0; i < config_.n_layers; ++i)
    ropes_.push_back(blocks::make_rope(config_.rope_for_layer(i), config_.d_head, config_.n_ctx));
  bind();
}

void LlamaModel::build_sites() {
  SiteTable& S = sites_;
  embed_site_ = S.add("model.embed_tokens", -1, "");
  ls_.resize(config_.n_layers);
  for (int i = 0; i < config_.n_layers; ++i) {
    const std::string p = layer_prefix(i);
    LayerSites& l = ls_[i];
    auto add = [&](const std::string& comp, bool on_request = false) {
      return S.add(p + "." + comp, i, comp, on_request);
    };
    l.resid_pre = add("resid_pre");
    l.input_norm = add("input_layernorm");
    l.q = add("self_attn.q_proj");
    l.k = add("self_attn.k_proj");
    l.v = add("self_attn.v_proj");
    if (config_.qk_norm) {
      l.q_norm = add("self_attn.q_norm");
      l.k_norm = add("self_attn.k_norm");
    }
    l.attn_weights = add("self_attn.attention_weights", /*on_request=*/true);
    l.z = add("self_attn.z");
    l.o = add("self_attn.o_proj");
    l.attn = add("self_attn");
    l.resid_mid = add("resid_mid");
    l.post_norm = add("post_attention_layernorm");
    l.gate = add("mlp.gate_proj");
    l.up = add("mlp.up_proj");
    l.hidden = add("mlp.hidden");
    l.down = add("mlp.down_proj");
    l.mlp = add("mlp");
    l.out = S.add(p, i, "");
  }
  norm_site_ = S.add("model.norm", -1, "");
  head_site_ = S.add("lm_head", -1, "");
  S.add_standard_aliases(int(config_.n_layers));
}

static at::Tensor opt(const TensorMap& w, const std::string& name) {
  auto it = w.find(name);
  return it == w.end() ? at::Tensor() : it->second;
}

void LlamaModel::bind() {
  lw_.assign(config_.n_layers, {});
  for (int i = 0; i < config_.n_layers; ++i) {
    const std::string p = layer_prefix(i) + ".";
    LayerWeights& l = lw_[i];
    l.ln1 = opt(weights_, p + "input_layernorm.weight");
    l.ln1_b = opt(weights_, p + "input_layernorm.bias");  // LayerNorm families (StableLM, StarCoder2)
    l.q = opt(weights_, p + "self_attn.q_proj.weight");
    l.k = opt(weights_, p + "self_attn.k_proj.weight");
    l.v = opt(weights_, p + "self_attn.v_proj.weight");
    l.o = opt(weights_, p + "self_attn.o_proj.weight");
    l.qb = opt(weights_, p + "self_attn.q_proj.bias");
    l.kb = opt(weights_, p + "self_attn.k_proj.bias");
    l.vb = opt(weights_, p + "self_attn.v_proj.bias");
    l.ob = opt(weights_, p + "self_attn.o_proj.bias");
    l.qn = opt(weights_, p + "self_attn.q_norm.weight");
    l.kn = opt(weights_, p + "self_attn.k_norm.weight");
    l.ln2 = opt(weights_, p + "post_attention_layernorm.weight");
    l.ln2_b = opt(weights_, p + "post_attention_layernorm.bias");
    l.gate = opt(weights_, p + "mlp.gate_proj.weight");
    l.up = opt(weights_, p + "mlp.up_proj.weight");
    l.down = opt(weights_, p + "mlp.down_proj.weight");
    l.gate_b = opt(weights_, p + "mlp.gate_proj.bias");
    l.up_b = opt(weights_, p + "mlp.up_proj.bias");
    l.down_b = opt(weights_, p + "mlp.down_proj.bias");
  }
  embed_w_ = opt(weights_, "model.embed_tokens.weight");
  norm_w_ = opt(weights_, "model.norm.weight");
  head_w_ = config_.tie_word_embeddings ? embed_w_ : opt(weights_, "lm_head.weight");
}

void LlamaModel::add_layer_expected(int i, std::map<std::string, std::vector<int64_t>>& out) const {
  const auto& c = config_;
  const std::string p = layer_prefix(i) + ".";
  const int64_t qd = c.n_heads * c.d_head, kvd = c.n_kv_heads * c.d_head;
  out[p + "input_layernorm.weight"] = {c.d_model};
  out[p + "post_attention_layernorm.weight"] = {c.d_model};
  out[p + "self_attn.q_proj.weight"] = {qd, c.d_model};
  out[p + "self_attn.k_proj.weight"] = {kvd, c.d_model};
  out[p + "self_attn.v_proj.weight"] = {kvd, c.d_model};
  out[p + "self_attn.o_proj.weight"] = {c.d_model, qd};
  if (c.attention_bias) {
    out[p + "self_attn.q_proj.bias"] = {qd};
    out[p + "self_attn.k_proj.bias"] = {kvd};
    out[p + "self_attn.v_proj.bias"] = {kvd};
    // Llama with attention_bias=true also biases o_proj; Qwen2 does not.
    if (c.model_type == "llama" || c.model_type == "mistral") out[p + "self_attn.o_proj.bias"] = {c.d_model};
  }
  if (c.qk_norm) {
    out[p + "self_attn.q_norm.weight"] = {qk_norm_full_width_ ? qd : c.d_head};
    out[p + "self_attn.k_norm.weight"] = {qk_norm_full_width_ ? kvd : c.d_head};
  }
  out[p + "mlp.gate_proj.weight"] = {c.d_mlp, c.d_model};
  out[p + "mlp.up_proj.weight"] = {c.d_mlp, c.d_model};
  out[p + "mlp.down_proj.weight"] = {c.d_model, c.d_mlp};
  if (c.mlp_bias) {
    out[p + "mlp.gate_proj.bias"] = {c.d_mlp};
    out[p + "mlp.up_proj.bias"] = {c.d_mlp};
    out[p + "mlp.down_proj.bias"] = {c.d_model};
  }
}

std::map<std::string, std::vector<int64_t>> LlamaModel::expected_weights() const {
  std::map<std::string, std::vector<int64_t>> out;
  out["model.embed_tokens.weight"] = {config_.d_vocab, config_.d_model};
  for (int i = 0; i < config_.n_layers; ++i) add_layer_expected(i, out);
  out["model.norm.weight"] = {config_.d_model};
  if (!config_.tie_word_embeddings) out["lm_head.weight"] = {config_.d_vocab, config_.d_model};
  return out;
}

at::Tensor LlamaModel::norm(const at::Tensor& x, const at::Tensor& w) const {
  return blocks::rms_norm(x, w, config_.norm_eps);
}

at::Tensor LlamaModel::embed(const at::Tensor& ids) const { return at::embedding(embed_w_, ids.to(embed_w_.device())); }
at::Tensor LlamaModel::final_norm(const at::Tensor& h) const { return norm(h, norm_w_); }
at::Tensor LlamaModel::unembed(const at::Tensor& h) const { return at::linear(h, head_w_); }
at::Tensor LlamaModel::unembedding_matrix() const { return head_w_.t(); }

blocks::AttentionOptions LlamaModel::attention_options(int) const { return {}; }

at::Tensor LlamaModel::forward(const at::Tensor& ids, const ForwardArgs& args, Hooks& H) {
  MLXTERP_CHECK(ids.dim() == 2, "forward: ids must be [batch, seq], got shape ", shape_str(ids.sizes()));
  Context ctx;
  ctx.batch = ids.size(0);
  ctx.t = ids.size(1);
  ctx.cache = args.cache;
  ctx.past = ctx.cache ? ctx.cache->length : 0;
  if (ctx.cache && ctx.cache->k.empty()) {
    ctx.cache->k.resize(config_.n_layers);
    ctx.cache->v.resize(config_.n_layers);
  }
  const at::Device dev = device_;
  at::Tensor tok = ids.to(dev);
  H.set_pos_offset(ctx.past);
  H.reset_progress();
  if (args.attention_mask.defined()) ctx.padding_mask = args.attention_mask.to(dev);  // moved once, used below
  ctx.positions = args.position_ids.defined() ? args.position_ids.to(dev)
                                              : blocks::default_positions(ctx.batch, ctx.t, ctx.past, ctx.padding_mask, dev);
  ctx.full_mask = blocks::attention_mask(ctx.batch, ctx.t, ctx.past, ctx.padding_mask, std::nullopt, dev);
  if (config_.sliding_window)
    ctx.sliding_mask = blocks::attention_mask(ctx.batch, ctx.t, ctx.past, ctx.padding_mask, config_.sliding_window, dev);
  ctx.full_causal_only = ctx.past == 0 && !args.attention_mask.defined();
  ctx.sliding_causal_only = ctx.full_causal_only && (!config_.sliding_window || *config_.sliding_window >= ctx.t);

  at::Tensor x = embed_block(tok, ctx, H);  // [b, t, d_model]
  if (H.done()) return {};
  for (int i = 0; i < config_.n_layers; ++i) {
    x = block(i, x, ctx, H);
    if (H.done()) {
      if (ctx.cache && i == config_.n_layers - 1) ctx.cache->length += ctx.t;
      return {};
    }
  }
  if (ctx.cache) ctx.cache->length += ctx.t;
  x = H(norm_site_, final_norm(x));
  if (H.done()) return {};
  return H(head_site_, unembed(x));  // [b, t, d_vocab]
}

at::Tensor LlamaModel::block(int i, at::Tensor x, Context& ctx, Hooks& H) {
  const LayerSites& s = ls_[i];
  const LayerWeights& w = lw_[i];
  x = H(s.resid_pre, x);
  at::Tensor h = H(s.input_norm, norm(x, w.ln1));
  x = x + attention_block(i, h, ctx, H);
  x = H(s.resid_mid, x);
  h = H(s.post_norm, norm(x, w.ln2));
  x = x + mlp_block(i, h, H);
  return H(s.out, x);
}

at::Tensor LlamaModel::embed_block(const at::Tensor& tok, Context&, Hooks& H) { return H(embed_site_, embed(tok)); }

at::Tensor LlamaModel::attention_block(int i, const at::Tensor& h, Context& ctx, Hooks& H) {
  return attend(i, qkv(i, h, ctx, H), ctx, H);
}

LlamaModel::QKV LlamaModel::qkv(int i, const at::Tensor& h, Context& ctx, Hooks& H) {
  const LayerSites& s = ls_[i];
  const LayerWeights& w = lw_[i];
  const auto& c = config_;
  const int64_t b = ctx.batch, t = ctx.t;
  at::Tensor q = H(s.q, blocks::linear(h, w.q, w.qb));  // [b, t, n_heads*d_head]
  at::Tensor k = H(s.k, blocks::linear(h, w.k, w.kb));  // [b, t, n_kv*d_head]
  at::Tensor v = H(s.v, blocks::linear(h, w.v, w.vb));
  if (w.qn.defined() && qk_norm_full_width_) {
    q = H(s.q_norm, norm(q, w.qn));  // [b, t, n_heads*d_head]
    k = H(s.k_norm, norm(k, w.kn));
  }
  q = q.view({b, t, c.n_heads, c.d_head});
  k = k.view({b, t, c.n_kv_heads, c.d_head});
  v = v.view({b, t, c.n_kv_heads, c.d_head});
  if (w.qn.defined() && !qk_norm_full_width_) {
    q = H(s.q_norm, norm(q, w.qn));  // [b, t, n_heads, d_head]
    k = H(s.k_norm, norm(k, w.kn));
  }
  return {q, k, v};
}

std::pair<at::Tensor, at::Tensor> LlamaModel::rotate(int i, const at::Tensor& q, const at::Tensor& k, Context& ctx) const {
  const std::string& kind = config_.layer_types[i];
  auto cs = ctx.cos_sin.find(kind);
  if (cs == ctx.cos_sin.end()) cs = ctx.cos_sin.emplace(kind, blocks::rope_cos_sin(ropes_[i], ctx.positions)).first;
  const auto rope = ropes_[i].interleaved ? blocks::apply_rope_interleaved : blocks::apply_rope;
  return {rope(q, cs->second.first, cs->second.second), rope(k, cs->second.first, cs->second.second)};
}

at::Tensor LlamaModel::attend(int i, QKV p, Context& ctx, Hooks& H) {
  const LayerSites& s = ls_[i];
  const LayerWeights& w = lw_[i];
  const auto& c = config_;
  const int64_t b = ctx.batch, t = ctx.t;
  at::Tensor q = p.q.transpose(1, 2);  // [b, n_heads, t, d_head]
  at::Tensor k = p.k.transpose(1, 2);  // [b, n_kv, t, d_head]
  at::Tensor v = p.v.transpose(1, 2);
  if (!ropes_.empty() && !(size_t(i) < no_rope_.size() && no_rope_[size_t(i)])) std::tie(q, k) = rotate(i, q, k, ctx);
  if (ctx.cache) {
    auto& ck = ctx.cache->k[i];
    auto& cv = ctx.cache->v[i];
    ck = ck.defined() ? at::cat({ck, k}, 2) : k;
    cv = cv.defined() ? at::cat({cv, v}, 2) : v;
    k = ck;
    v = cv;
  }
  const at::Tensor& mask = c.is_sliding(i) ? ctx.sliding_mask : ctx.full_mask;
  blocks::AttentionOptions ao = attention_options(i);
  const bool need_w = H.wants(s.attn_weights);
  ao.need_weights = need_w;
  ao.causal_only = c.is_sliding(i) ? ctx.sliding_causal_only : ctx.full_causal_only;
  if (ctx.attn_bias.defined()) ao.bias = ctx.attn_bias;
  at::Tensor probs;
  at::Tensor o = blocks::attention(q, k, v, mask, ao, need_w ? &probs : nullptr);  // [b, n_heads, t, d_head]
  if (need_w) {
    at::Tensor edited = H(s.attn_weights, probs);  // [b, n_heads, t, t_total]
    if (!edited.is_same(probs)) o = at::matmul(edited, blocks::repeat_kv(v, c.n_heads / c.n_kv_heads));
  }
  at::Tensor z = H(s.z, o.transpose(1, 2).reshape({b, t, -1}));  // [b, t, n_heads * (value head dim)]
  at::Tensor a = H(s.o, blocks::linear(z, w.o, w.ob));
  return H(s.attn, a);
}

at::Tensor LlamaModel::mlp_block(int i, const at::Tensor& h, Hooks& H) {
  const LayerSites& s = ls_[i];
  const LayerWeights& w = lw_[i];
  at::Tensor g = H(s.gate, blocks::linear(h, w.gate, w.gate_b));  // [b, t, d_mlp]
  at::Tensor u = H(s.up, blocks::linear(h, w.up, w.up_b));
  at::Tensor hid = H(s.hidden, blocks::gated_activation(config_.hidden_act, g, u));
  at::Tensor d = H(s.down, blocks::linear(hid, w.down, w.down_b));  // [b, t, d_model]
  return H(s.mlp, d);
}

static std::unique_ptr<Model> make_llama(const ModelConfig& c, TensorMap w) {
  return std::make_unique<LlamaModel>(c, std::move(w));
}

static const bool registered = [] {
  for (const char* a : {"llama", "mistral", "qwen2", "qwen3"}) register_architecture(a, make_llama);
  return true;
}();

}  // namespace mlxterp
