#include "models/blocks.hpp"

#include <cmath>
#include <limits>

#include "cuda/forward_ops.hpp"
#include "mlxterp/error.hpp"

namespace mlxterp::blocks {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one) {
  if (at::Tensor fused = forward_ops::rms_norm(x, w, eps, plus_one); fused.defined()) return fused;  // bf16 on CUDA
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(var + eps);
  if (plus_one) return (xf * (1.0 + w.to(at::kFloat))).to(x.scalar_type());
  return w * xf.to(x.scalar_type());
}

at::Tensor rms_norm_weight_f32(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  xf = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (w.to(at::kFloat) * xf).to(x.scalar_type());
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  return at::layer_norm(x, {x.size(-1)}, w, b, eps);
}

at::Tensor activation(const std::string& name, const at::Tensor& x) {
  if (name == "silu" || name == "swish") return at::silu(x);
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast" || name == "gelu_python_tanh")
    return at::gelu(x, "tanh");
  if (name == "relu") return at::relu(x);
  if (name == "relu2") return at::square(at::relu(x));  // HF ReLUSquaredActivation (Arcee, Nemotron)
  MLXTERP_FAIL("config: unsupported activation '", name,
               "'; expected silu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu or relu2");
}

at::Tensor xielu(const at::Tensor& x, const at::Tensor& alpha_p, const at::Tensor& alpha_n, const at::Tensor& beta,
                 const at::Tensor& eps) {
  // HF XIELUActivation._xielu_python, op for op (same order, same dtype promotion).
  const at::Tensor ap = at::softplus(alpha_p);         // [1]
  const at::Tensor an = beta + at::softplus(alpha_n);  // [1]
  return at::where(x > 0, ap * x * x + beta * x, (at::expm1(at::minimum(x, eps)) - x) * an + beta * x);
}

at::Tensor gated_activation(const std::string& name, const at::Tensor& gate, const at::Tensor& up) {
  if (name == "silu" || name == "swish") {
    if (at::Tensor fused = forward_ops::silu_mul(gate, up); fused.defined()) return fused;  // bf16 on CUDA
  }
  return activation(name, gate) * up;
}

// ---- rotary ---------------------------------------------------------------------------------------

static double yarn_find_correction_dim(double num_rotations, int64_t dim, double base, int64_t max_pos) {
  return (dim * std::log(max_pos / (num_rotations * 2 * M_PI))) / (2 * std::log(base));
}

static double yarn_get_mscale(double scale, double mscale = 1.0) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

Rope make_rope(const RopeParams& p, int64_t d_head, int64_t n_ctx) {
  Rope r;
  r.params = p;
  r.d_head = d_head;
  r.n_ctx = n_ctx;
  r.rot_dim = int64_t(d_head * p.partial_rotary_factor);
  r.rot_dim -= r.rot_dim % 2;
  MLXTERP_CHECK(r.rot_dim > 0, "config: rotary dimension is 0 (head_dim ", d_head, " x partial_rotary_factor ",
                p.partial_rotary_factor, ")");
  const int64_t dim = r.rot_dim;
  at::Tensor idx = at::arange(0, dim, 2, at::kLong).to(at::kFloat);  // float32 as HF
  at::Tensor inv = 1.0 / at::pow(at::scalar_tensor(p.theta, at::kFloat), idx / double(dim));
  if (p.type == "linear") {
    inv = inv / p.factor;
  } else if (p.type == "llama3") {
    const double old_ctx = double(p.original_max_position_embeddings);
    const double low_wavelen = old_ctx / p.low_freq_factor;
    const double high_wavelen = old_ctx / p.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv;
    at::Tensor inv_l = at::where(wavelen > low_wavelen, inv / p.factor, inv);
    at::Tensor smooth = (old_ctx / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * inv_l / p.factor + smooth * inv_l;
    at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv = at::where(medium, smoothed, inv_l);
  } else if (p.type == "yarn") {
    const int64_t max_pos = p.original_max_position_embeddings > 0 ? p.original_max_position_embeddings : n_ctx;
    double low = yarn_find_correction_dim(p.beta_fast, dim, p.theta, max_pos);
    double high = yarn_find_correction_dim(p.beta_slow, dim, p.theta, max_pos);
    if (p.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, double(dim - 1));
    if (low == high) high += 0.001;
    at::Tensor ramp = ((at::arange(dim / 2, at::kFloat) - low) / (high - low)).clamp(0, 1);
    at::Tensor extrapolation_factor = 1 - ramp;
    at::Tensor interp = inv / p.factor;
    inv = interp * (1 - extrapolation_factor) + inv * extrapolation_factor;
    // HF: attention_factor, else mscale / mscale_all_dim when both are set and nonzero, else 0.1 ln(factor) + 1.
    if (p.attention_factor)
      r.attention_scaling = *p.attention_factor;
    else if (p.mscale && p.mscale_all_dim && *p.mscale != 0 && *p.mscale_all_dim != 0)
      r.attention_scaling = yarn_get_mscale(p.factor, *p.mscale) / yarn_get_mscale(p.factor, *p.mscale_all_dim);
    else
      r.attention_scaling = yarn_get_mscale(p.factor);
  } else if (p.type == "longrope") {
    // Phi-3: per-dimension factors; long factors past the original context. We use the factor set
    // for the original context length and the long set beyond it (chosen at cos/sin time).
    const int64_t orig = p.original_max_position_embeddings > 0 ? p.original_max_position_embeddings : n_ctx;
    double scale = double(n_ctx) / double(orig);
    r.attention_scaling = p.attention_factor ? *p.attention_factor
                                             : (scale <= 1 ? 1.0 : std::sqrt(1 + std::log(scale) / std::log(double(orig))));
    MLXTERP_CHECK(int64_t(p.short_factor.size()) == dim / 2, "config: longrope short_factor has ",
                  p.short_factor.size(), " entries; expected rotary_dim/2 = ", dim / 2);
    at::Tensor sf = at::tensor(std::vector<float>(p.short_factor.begin(), p.short_factor.end()));
    inv = inv / sf;
  }
  if (p.type == "dynamic" && p.alpha) {  // HunYuan's NTK-alpha: a larger base from the start (attention_scaling 1)
    MLXTERP_CHECK(p.partial_rotary_factor == 1.0, "config: rope alpha with partial_rotary_factor is not supported; "
                  "expected 1.0 (HF's alpha rotary spans the whole head), got ", p.partial_rotary_factor);
    MLXTERP_CHECK(dim > 2, "config: rope alpha needs more than 2 rotated dimensions; got ", dim);
    const double base = p.theta * std::pow(*p.alpha, double(dim) / double(dim - 2));
    inv = 1.0 / at::pow(at::scalar_tensor(base, at::kFloat), idx / double(dim));
  }
  // "dynamic" is applied per sequence length in rope_cos_sin; "default" needs nothing.
  if (!p.freq_factors.empty()) {
    MLXTERP_CHECK(int64_t(p.freq_factors.size()) == dim / 2, "config: rope freq_factors has the wrong length; expected "
                  "rotary_dim / 2 = ", dim / 2, " entries, got ", p.freq_factors.size());
    inv = inv / at::tensor(std::vector<float>(p.freq_factors.begin(), p.freq_factors.end()));
  }
  r.inv_freq = inv.contiguous();
  return r;
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const Rope& r, const at::Tensor& position_ids) {
  at::Tensor inv = r.inv_freq.to(position_ids.device());
  if (r.params.type == "dynamic") {
    int64_t seq = position_ids.numel() ? position_ids.max().item<int64_t>() + 1 : 0;
    if (seq > r.n_ctx) {
      const int64_t dim = r.rot_dim;
      double base = r.params.theta *
                    std::pow((r.params.factor * seq / double(r.n_ctx)) - (r.params.factor - 1), double(dim) / (dim - 2));
      at::Tensor idx = at::arange(0, dim, 2, at::kLong).to(at::kFloat).to(position_ids.device());
      inv = 1.0 / at::pow(at::scalar_tensor(base, at::kFloat), idx / double(dim));
    }
  }
  // freqs [b, t, rot/2] computed in float32 as HF (autocast disabled there).
  at::Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv.view({1, 1, -1});
  at::Tensor emb = r.interleaved ? at::stack({freqs, freqs}, -1).flatten(-2) : at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (r.attention_scaling != 1.0) {
    cos = cos * r.attention_scaling;
    sin = sin * r.attention_scaling;
  }
  return {cos, sin};
}

static at::Tensor rotate_half(const at::Tensor& x) {
  int64_t h = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // x [b, heads, t, d]; cos/sin [b, t, rot] -> [b, 1, t, rot]; cast to x's dtype like HF.
  if (at::Tensor fused = forward_ops::rope(x, cos, sin); fused.defined()) return fused;  // bf16 on CUDA
  const int64_t rot = cos.size(-1);
  at::Tensor c = cos.unsqueeze(1).to(x.scalar_type()), s = sin.unsqueeze(1).to(x.scalar_type());
  if (rot == x.size(-1)) return x * c + rotate_half(x) * s;
  at::Tensor xr = x.narrow(-1, 0, rot), xp = x.narrow(-1, rot, x.size(-1) - rot);
  return at::cat({xr * c + rotate_half(xr) * s, xp}, -1);
}

static at::Tensor rotate_every_two(const at::Tensor& x) {
  const int64_t d = x.size(-1);
  return at::stack({-x.slice(-1, 1, d, 2), x.slice(-1, 0, d, 2)}, -1).flatten(-2);
}

at::Tensor apply_rope_interleaved(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // x [b, heads, t, d]; cos/sin [b, t, rot] float32 -> [b, 1, t, rot].
  const int64_t rot = cos.size(-1);
  at::Tensor c = cos.unsqueeze(1).to(at::kFloat), s = sin.unsqueeze(1).to(at::kFloat);
  at::Tensor xr = x.narrow(-1, 0, rot).to(at::kFloat);
  at::Tensor yr = (xr * c + rotate_every_two(xr) * s).to(x.scalar_type());
  if (rot == x.size(-1)) return yr;
  return at::cat({yr, x.narrow(-1, rot, x.size(-1) - rot)}, -1);
}

// ---- masks and attention ----------------------------------------------------------------------------

at::Tensor default_positions(int64_t batch, int64_t t, int64_t past, const at::Tensor& attention_mask,
                             at::Device device) {
  if (attention_mask.defined()) {
    at::Tensor m = attention_mask.to(device).to(at::kLong);
    at::Tensor pos = (m.cumsum(-1) - 1).clamp_min(0);
    return pos.narrow(1, pos.size(1) - t, t).contiguous();
  }
  return at::arange(past, past + t, at::TensorOptions().dtype(at::kLong).device(device)).unsqueeze(0).expand({batch, t});
}

at::Tensor attention_mask(int64_t batch, int64_t t, int64_t past, const at::Tensor& padding_mask,
                          std::optional<int64_t> sliding_window, at::Device device) {
  const int64_t total = past + t;
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor qi = at::arange(past, total, opts).view({t, 1});
  at::Tensor kj = at::arange(0, total, opts).view({1, total});
  at::Tensor allowed = kj <= qi;  // [t, total]
  if (sliding_window) allowed = allowed.logical_and(kj > qi - *sliding_window);
  allowed = allowed.view({1, 1, t, total}).expand({batch, 1, t, total});
  if (padding_mask.defined()) {
    at::Tensor real = padding_mask.to(device).to(at::kBool);  // [b, total]
    MLXTERP_CHECK(real.size(1) == total, "attention_mask: has ", real.size(1), " columns; expected past + t = ", total);
    allowed = allowed.logical_and(real.view({batch, 1, 1, total}));
    // Padding queries see themselves, so their rows are not empty (no NaN anywhere).
    at::Tensor q_pad = real.narrow(1, past, t).logical_not().view({batch, 1, t, 1});
    at::Tensor diag = (kj == qi).view({1, 1, t, total});
    allowed = allowed.logical_or(q_pad.logical_and(diag));
  }
  return allowed;
}

MoeRouting moe_route(const at::Tensor& logits, int64_t k, bool normalize, bool softmax_over_topk) {
  MLXTERP_CHECK(k >= 1 && k <= logits.size(-1), "moe: num_experts_per_tok must be in 1 .. ", logits.size(-1), ", got ", k);
  if (softmax_over_topk) {
    at::Tensor lf = logits.to(at::kFloat);
    auto [top, idx] = lf.topk(k, -1);  // [N, k]
    return {at::zeros_like(lf).scatter(-1, idx, at::softmax(top, -1)), idx};
  }
  at::Tensor probs = at::softmax(logits.to(at::kFloat), -1);
  auto [top, idx] = probs.topk(k, -1);  // [N, k]
  if (normalize) top = top / top.sum(-1, /*keepdim=*/true);
  MoeRouting r;
  r.weights = at::zeros_like(probs).scatter(-1, idx, top);
  r.chosen = idx;
  return r;
}

at::Tensor repeat_kv(const at::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) return x;
  auto b = x.size(0), h = x.size(1), T = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, h, n_rep, T, d}).reshape({b, h * n_rep, T, d});
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                     const AttentionOptions& o, at::Tensor* weights) {
  const int64_t n_rep = q.size(1) / k.size(1);
  MLXTERP_ASSERT(q.size(1) % k.size(1) == 0);
  const double scale = o.scale > 0 ? o.scale : 1.0 / std::sqrt(double(q.size(-1)));
#if TORCH_VERSION_MAJOR >= 2
  if (o.sinks.defined() && !o.need_weights && !weights && !o.softcap) {
    // The sink as one more key: k = 0 and v = 0, so its score is exactly the additive mask's value there (the
    // sink logit) and it adds nothing to the output. [b, h_kv, T + 1, d]
    const int64_t b = q.size(0), h = q.size(1), t = q.size(2), T = k.size(2);
    at::Tensor k1 = at::cat({k, at::zeros({k.size(0), k.size(1), 1, k.size(3)}, k.options())}, 2);
    at::Tensor v1 = at::cat({v, at::zeros({v.size(0), v.size(1), 1, v.size(3)}, v.options())}, 2);
    at::Tensor add = at::full({}, -std::numeric_limits<float>::infinity(), q.options());
    add = at::where(mask, o.bias.defined() ? o.bias.to(q.scalar_type()) : at::zeros({}, q.options()), add);
    add = at::cat({add.expand({b, h, t, T}), o.sinks.to(q.scalar_type()).view({1, h, 1, 1}).expand({b, h, t, 1})}, 3);
    return at::scaled_dot_product_attention(q, repeat_kv(k1, n_rep), repeat_kv(v1, n_rep), add, 0.0, false, scale);
  }
  if (o.bias.defined() && !o.need_weights && !weights && !o.sinks.defined()) {  // the bias and the mask as one additive float mask
    const at::Tensor add = at::where(mask, o.bias.to(q.scalar_type()),
                                     at::full({}, -std::numeric_limits<float>::infinity(), q.options()));
    return at::scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), add, 0.0, false, scale);
  }
  if (!o.need_weights && !o.softcap && !weights && !o.bias.defined() && !o.sinks.defined()) {
    // The plain causal case goes without a mask so SDPA can pick FlashAttention (as HF's sdpa path does),
    // and since 2.5 with grouped K/V heads as they are (no repeat_kv copies).
    if (o.causal_only && q.size(2) == k.size(2)) {
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 5
      return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale, /*enable_gqa=*/n_rep > 1);
#else
      return at::scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), {}, 0.0, true, scale);
#endif
    }
    return at::scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask, 0.0, false, scale);
  }
#endif
  at::Tensor kr = repeat_kv(k, n_rep), vr = repeat_kv(v, n_rep);
  at::Tensor scores = at::matmul(q, kr.transpose(-1, -2)) * scale;  // [b, h, t, T]
  if (o.bias.defined()) scores = scores + o.bias.to(scores.scalar_type());
  if (o.softcap) scores = at::tanh(scores / *o.softcap) * *o.softcap;
  scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor probs;
  if (o.sinks.defined()) {  // softmax over [scores | sink], sink column dropped: [b, h, t, T]
    const int64_t T = scores.size(-1);
    at::Tensor sink = o.sinks.to(scores.scalar_type()).view({1, -1, 1, 1}).expand({scores.size(0), -1, scores.size(2), 1});
    probs = at::softmax(at::cat({scores, sink}, -1), -1, at::kFloat).narrow(-1, 0, T).to(q.scalar_type());
  } else {
    probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  }
  if (weights) *weights = probs;
  return at::matmul(probs, vr);
}

}  // namespace mlxterp::blocks
