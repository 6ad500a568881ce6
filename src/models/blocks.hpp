// Shared transformer building blocks (norms, RoPE variants, masks, attention, activations), written
// once and used by every architecture file. All functions are plain libtorch expressions, so they
// run on CPU and CUDA, in any dtype, and are differentiable.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "mlxterp/config.hpp"
#include "mlxterp/torch_compat.hpp"

namespace mlxterp::blocks {

// RMSNorm as HF computes it: in float32, then cast back; `plus_one` is Gemma's (1 + w) scaling.
//   x: [..., d], w: [d]
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one = false);
// RMSNorm with the weight applied in float32 before the cast back (OLMo2's order; equal to rms_norm
// in float32, differs by one rounding in bf16/f16).
at::Tensor rms_norm_weight_f32(const at::Tensor& x, const at::Tensor& w, double eps);
// LayerNorm with optional bias (GPT-2, NeoX).
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps);

// Activation by HF name: silu/swish, gelu, gelu_new / gelu_pytorch_tanh (tanh approximation), relu, gelu_fast,
// relu2 (relu(x)^2).
at::Tensor activation(const std::string& name, const at::Tensor& x);
// xIELU (Apertus) with its learned parameters as HF stores them: alpha_p, alpha_n [1] (pre-softplus), beta and
// eps scalars [] (buffers, 0.5 and -1e-6 by default). With ap = softplus(alpha_p), an = beta + softplus(alpha_n):
// x > 0: ap x^2 + beta x;  x <= 0: (expm1(min(x, eps)) - x) an + beta x.  x: [...]
at::Tensor xielu(const at::Tensor& x, const at::Tensor& alpha_p, const at::Tensor& alpha_n, const at::Tensor& beta,
                 const at::Tensor& eps);
// activation(name, gate) * up (gated MLPs), fused into one kernel for SiLU on bf16 CUDA tensors.
at::Tensor gated_activation(const std::string& name, const at::Tensor& gate, const at::Tensor& up);

// ---- rotary embeddings --------------------------------------------------------------------------

struct Rope {
  RopeParams params;
  int64_t d_head = 0, rot_dim = 0;  // rot_dim = d_head * partial_rotary_factor (even)
  int64_t n_ctx = 0;                // max_position_embeddings (dynamic / longrope switch)
  at::Tensor inv_freq;              // [rot_dim / 2] float32
  double attention_scaling = 1.0;   // yarn / longrope multiply cos and sin by this
  // GPT-J's rotate_every_two convention: dims (0,1), (2,3), ... are the rotated pairs, and
  // rope_cos_sin repeats each frequency twice in place ([f0, f0, f1, f1, ...]) instead of [f | f].
  bool interleaved = false;
};
Rope make_rope(const RopeParams& params, int64_t d_head, int64_t n_ctx);
// cos, sin: [batch, t, rot_dim] (float32) for absolute positions [batch, t], laid out for the rope's
// convention (rotate_half or interleaved).
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const Rope& rope, const at::Tensor& position_ids);
// HF rotate_half layout: x [b, heads, t, d_head]; rotates the first rot_dim dims.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// GPT-J's interleaved layout (rotate_every_two) with cos/sin from an interleaved Rope: x [b, heads, t, d_head];
// rotates the first rot_dim dims, computed in float32 (HF GPT-J keeps its sin/cos table in float32, so
// the rotation is promoted) and cast back to x's dtype.
at::Tensor apply_rope_interleaved(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// ---- masks and attention ------------------------------------------------------------------------

// Positions for a forward pass: from the mask when given (count of real tokens before each one),
// else past + arange(t). Returns [batch, t] int64.
at::Tensor default_positions(int64_t batch, int64_t t, int64_t past, const at::Tensor& attention_mask,
                             at::Device device);

// Boolean "may attend" mask [batch, 1, t, t_total]: causal, optional sliding window (a query at
// position i sees keys j with i - window < j <= i, as HF's masking_utils), optional padding
// (attention_mask [batch, t_total], 1 = real). Padding queries attend to themselves only, so no
// row is empty and nothing turns into NaN.
at::Tensor attention_mask(int64_t batch, int64_t t, int64_t past, const at::Tensor& padding_mask,
                          std::optional<int64_t> sliding_window, at::Device device);

struct AttentionOptions {
  double scale = 0;                    // 0 = 1/sqrt(d_head)
  std::optional<double> softcap;       // Gemma 2: tanh(s / cap) * cap before masking
  bool need_weights = false;           // also return the probabilities
  bool causal_only = false;            // mask is the plain causal triangle (t == t_total): SDPA is_causal
  at::Tensor bias;                     // added to the scaled scores, broadcast to [b, h, t, t_total] (ALiBi)
  // gpt-oss attention sinks [n_heads]: one more logit per head in the softmax, with no value behind it, so a
  // head's probabilities over the real keys sum to less than 1 (the returned weights leave the sink out).
  at::Tensor sinks;
};

// q: [b, n_heads, t, d_head], k/v: [b, n_kv_heads, t_total, d_head], mask [b, 1, t, t_total] bool.
// Returns the per-head outputs [b, n_heads, t, d_head]; if need_weights, *weights = [b, n_heads, t, t_total]
// (softmax computed in float32, cast to q's dtype, as HF eager attention).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                     const AttentionOptions& options, at::Tensor* weights = nullptr);

// GQA: [b, n_kv, T, d] -> [b, n_kv * n_rep, T, d] (head h uses kv head h / n_rep).
at::Tensor repeat_kv(const at::Tensor& x, int64_t n_rep);

// Gemma 2 soft-capping: tanh(x / cap) * cap (in x's dtype).
inline at::Tensor softcap(const at::Tensor& x, double cap) { return at::tanh(x / cap) * cap; }

// ---- mixture of experts -------------------------------------------------------------------------

// Top-k routing as Mixtral / Qwen-MoE / OLMoE: probabilities = softmax(router logits) in float32,
// the k largest chosen per token, optionally renormalised to sum to 1. softmax_over_topk (GraniteMoE):
// the k largest logits chosen first, then softmax over those k (`normalize` is then implied).
//   logits [N, E] -> weights [N, E] float32 (0 for experts not chosen), chosen [N, k] int64.
struct MoeRouting {
  at::Tensor weights, chosen;
};
MoeRouting moe_route(const at::Tensor& logits, int64_t k, bool normalize, bool softmax_over_topk = false);

// y = x W^T (+ b) with an undefined bias allowed.
inline at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

}  // namespace mlxterp::blocks
