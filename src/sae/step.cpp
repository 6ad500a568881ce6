// The reference SAE training step: loss, gradients, AdamW, decoder constraint, dead-latent counters.
//
// TopK / BatchTopK take a sparse path: the only dense product is the encoder GEMM (no autograd); the kept
// (token, latent) pairs are recomputed with autograd from gathered rows, the decoder is a gather-sum, so
// every gradient touches only the kept latents (2·d·F + O(k·d) work per token instead of ~12·d·F).
// JumpReLU and ReLU use dense autograd (their active sets are not bounded by k).
#include <cmath>

#include "adam.hpp"
#include "cpu_kernels.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/sae_kernels.hpp"
#include "mlxterp/sae_step.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

// Leaves sharing storage with the master weights.
struct Leaves {
  at::Tensor W_enc, b_enc, W_dec, b_dec, threshold;
};

Leaves make_leaves(const SaeParams& p, bool tied) {
  Leaves l;
  l.W_enc = p.W_enc.detach().requires_grad_(true);
  l.b_enc = p.b_enc.detach().requires_grad_(true);
  l.W_dec = tied ? l.W_enc : p.W_dec.detach().requires_grad_(true);
  l.b_dec = p.b_dec.detach().requires_grad_(true);
  if (p.threshold.defined()) l.threshold = p.threshold.detach().requires_grad_(true);
  return l;
}

at::Tensor grad_or_zeros(const at::Tensor& leaf) {
  at::Tensor g = leaf.grad();
  return g.defined() ? g : at::zeros_like(leaf);
}

// Dense encoder pre-activations without autograd: (x - b_dec) @ W_encᵀ + b_enc, GEMM in `dt`.
at::Tensor encoder_pre_nograd(const at::Tensor& x, const at::Tensor& W_enc, const at::Tensor& b_enc,
                              const at::Tensor& b_dec, at::ScalarType dt) {
  at::NoGradGuard ng;
  at::Tensor xc = x - b_dec;
  if (dt == x.scalar_type() || dt == at::kFloat) return at::addmm(b_enc, xc, W_enc.t());  // full precision
  // Low-precision GEMM (bf16/f16 compute dtype), result back in the parameters' dtype.
  return at::matmul(xc.to(dt), W_enc.to(dt).t()).to(x.scalar_type()) + b_enc;
}

// Pre-activations of the kept (row, col) pairs, with autograd: [M].
at::Tensor gathered_pre(const at::Tensor& xc, const Leaves& l, const at::Tensor& rows, const at::Tensor& cols) {
  return (xc.index_select(0, rows) * l.W_enc.index_select(0, cols)).sum(1) + l.b_enc.index_select(0, cols);
}

// Σ over kept pairs of vals · W_dec[col] into row `row`: [N, D].
at::Tensor sparse_decode(const at::Tensor& W_dec, const at::Tensor& rows, const at::Tensor& cols,
                         const at::Tensor& vals, int64_t N) {
  at::Tensor contrib = W_dec.index_select(0, cols) * vals.unsqueeze(1);  // [M, D]
  return at::zeros({N, W_dec.size(1)}, contrib.options()).index_add(0, rows, contrib);
}

at::Tensor finite_or_zero(const at::Tensor& t) { return at::where(at::isfinite(t), t, at::zeros_like(t)); }

struct Forward {
  at::Tensor loss, mse, aux, ghost, sparsity;  // 0-dim, with autograd where relevant
  at::Tensor x_hat;                             // [N, D] standardised space
  // Firing statistics (no autograd): per-latent counts of z > fire_threshold, Σ|z|, kept-value minimum.
  at::Tensor fire_counts;  // [F] int64
  at::Tensor l0_sum, l1_sum;
  at::Tensor kept_min;     // batchtopk: smallest kept value > 0 (inf if none)
  at::Tensor z_dense;      // [N, F] (only when asked)
};

Forward forward_loss(const Leaves& l, const at::Tensor& x, const SaeStepArgs& a, const at::Tensor& dead, bool want_z) {
  const int64_t N = x.size(0), F = l.W_enc.size(0);
  Forward f;
  at::Tensor xc = x - l.b_dec;  // [N, D] (autograd to b_dec)
  const at::Tensor zero = at::zeros({}, x.options());
  f.aux = zero;
  f.ghost = zero;
  f.sparsity = zero;
  at::Tensor pre_ng;  // [N, F] no autograd (selection, AuxK, histograms)

  if (a.arch == SaeArch::TopK || a.arch == SaeArch::BatchTopK) {
    pre_ng = encoder_pre_nograd(x, l.W_enc, l.b_enc, l.b_dec, a.compute_dtype);
    at::Tensor rows, cols;
    {
      at::NoGradGuard ng;
      if (a.arch == SaeArch::TopK) {
        const int64_t k = std::min(a.k, F);
        at::Tensor idx = std::get<1>(pre_ng.topk(k, 1));  // [N, k]
        rows = at::arange(N, idx.options()).repeat_interleave(k);
        cols = idx.reshape(-1);
      } else {
        const int64_t kn = std::min(a.k * N, N * F);
        at::Tensor idx = std::get<1>(at::relu(pre_ng).reshape(-1).topk(kn));  // [k·N]
        idx = std::get<0>(idx.sort());  // row-major order: deterministic sums
        rows = at::div(idx, F, "floor");
        cols = idx - rows * F;
      }
    }
    at::Tensor vals = at::relu(gathered_pre(xc, l, rows, cols));  // [M]
    f.x_hat = sparse_decode(l.W_dec, rows, cols, vals, N) + l.b_dec;
    at::NoGradGuard ng;
    at::Tensor v = vals.detach();
    at::Tensor fired = v > a.fire_threshold;
    f.fire_counts = at::zeros({F}, rows.options()).index_add_(0, cols, fired.to(at::kLong));
    f.l0_sum = fired.sum().to(at::kDouble);
    f.l1_sum = v.abs().sum().to(at::kDouble);
    if (a.arch == SaeArch::BatchTopK)
      f.kept_min = at::where(v > 0, v, at::full_like(v, INFINITY)).min().to(at::kDouble);
    if (want_z) f.z_dense = at::zeros({N * F}, v.options()).index_put_({rows * F + cols}, v).view({N, F});
  } else {
    // Dense path (autograd through the full encoder).
    at::Tensor pre = at::addmm(l.b_enc, xc, l.W_enc.t());  // [N, F]
    pre_ng = pre.detach();
    at::Tensor z;
    if (a.arch == SaeArch::JumpReLU) {
      const double eps = a.jumprelu_bandwidth;
      at::Tensor th = l.threshold.detach();
      at::Tensor H, K;
      {
        at::NoGradGuard ng;
        H = (pre_ng > th).to(at::kFloat);                                          // Heaviside(pre - θ)
        at::Tensor u = (pre_ng - th) / eps;
        K = ((u > -0.5) & (u < 0.5)).to(at::kFloat);                               // rectangle kernel
      }
      at::Tensor dth = l.threshold - th;  // value 0, gradient 1 w.r.t. θ
      // JumpReLU: z = ReLU(pre)·H; ∂z/∂pre = H (through ReLU), ∂z/∂θ = -(θ/ε)·K (straight-through estimator).
      z = at::relu(pre) * H + dth * (-(th / eps) * K);
      // L0 = mean_t Σ_i H; ∂/∂θ = -(1/ε)·K, nothing to the encoder.
      at::Tensor l0 = (H + dth * (-K / eps)).sum(1).mean();
      f.sparsity = a.sparsity_coef * l0;
    } else {
      z = at::relu(pre);
      // L1 weighted by the decoder row norms (= plain L1 under the unit-norm constraint).
      at::Tensor l1 = (z * l.W_dec.norm(2, 1)).sum(1).mean();
      f.sparsity = a.sparsity_coef * l1;
    }
    f.x_hat = at::addmm(l.b_dec, z, l.W_dec);
    at::NoGradGuard ng;
    at::Tensor zd = z.detach();
    at::Tensor fired = zd > a.fire_threshold;
    f.fire_counts = fired.sum(0);
    f.l0_sum = fired.sum().to(at::kDouble);
    f.l1_sum = zd.abs().sum().to(at::kDouble);
    if (want_z) f.z_dense = zd;
  }

  at::Tensor r = f.x_hat - x;  // [N, D]
  f.mse = r.pow(2).sum(1).mean();
  f.loss = f.mse + f.sparsity;

  const bool have_dead = dead.defined();
  if (have_dead) {
    at::Tensor any_dead = dead.any().to(at::kFloat);
    at::Tensor e = (x - f.x_hat).detach();  // residual the dead latents should explain
    if (a.auxk_coef > 0 && (a.arch == SaeArch::TopK || a.arch == SaeArch::BatchTopK)) {
      const int64_t ka = std::min(a.k_aux, F);
      at::Tensor rows, cols, live_mask;
      {
        at::NoGradGuard ng;
        at::Tensor masked = at::where(dead.unsqueeze(0), at::relu(pre_ng), at::full_like(pre_ng, -INFINITY));
        at::Tensor idx = std::get<1>(masked.topk(ka, 1));  // [N, ka]
        rows = at::arange(N, idx.options()).repeat_interleave(ka);
        cols = idx.reshape(-1);
        live_mask = dead.index_select(0, cols).to(at::kFloat);  // pairs on live latents contribute nothing
      }
      at::Tensor vals = at::relu(gathered_pre(xc, l, rows, cols)) * live_mask;
      at::Tensor e_hat = sparse_decode(l.W_dec, rows, cols, vals, N);  // no b_dec
      at::Tensor num = (e - e_hat).pow(2).sum(1).mean();
      at::Tensor den = (e - e.mean(0, true)).pow(2).sum(1).mean();
      f.aux = finite_or_zero(num / den) * any_dead;
      f.loss = f.loss + a.auxk_coef * f.aux;
    }
    if (a.ghost_grads) {
      // SAELens ghost grads: exp-activation reconstruction of the residual by the dead latents only,
      // rescaled to the residual's norm and to the main MSE's magnitude (only the direction matters).
      at::Tensor pre = at::addmm(l.b_enc, xc, l.W_enc.t());
      at::Tensor acts = at::where(dead.unsqueeze(0), pre, at::full_like(pre, -INFINITY)).exp();
      at::Tensor g = at::mm(acts, l.W_dec);  // [N, D]
      at::Tensor scale = (e.norm(2, 1) / (1e-6 + g.norm(2, 1) * 2)).detach();
      g = g * scale.unsqueeze(1);
      at::Tensor s_g = (g - e).pow(2);
      at::Tensor s = r.detach().pow(2);
      at::Tensor ghost = (s_g * (s / (s_g.detach() + 1e-6))).mean();
      f.ghost = finite_or_zero(ghost) * any_dead;
      f.loss = f.loss + f.ghost;
    }
  }
  return f;
}

// ---- TopK / BatchTopK without autograd ----
// The same loss as forward_loss (MSE + auxk_coef·AuxK) with the gradients written out by hand, touching only
// the kept (token, latent) pairs: the encoder GEMM is the only dense product. Used for the TopK family
// unless ghost grads are on (those keep the autograd path). Checked against the autograd path, the PyTorch
// goldens and finite differences (tests/unit/test_sae_step.cpp).
struct SparseResult {
  at::Tensor loss, mse, aux;   // 0-dim
  at::Tensor x_hat;            // [N, D]
  at::Tensor gW_enc, gb_enc, gW_dec, gb_dec;
  at::Tensor fire_counts, l0_sum, l1_sum, kept_min, z_dense;
};

// Σ over pairs m of v_m·W[c_m] into row r_m: [N, D]. `rows` must be sorted (non-decreasing).
at::Tensor decode_pairs(const at::Tensor& W, const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& v,
                        int64_t N) {
  if (cols.numel() == 0) return at::zeros({N, W.size(1)}, W.options());
  at::Tensor counts = at::bincount(rows, {}, N);
  at::Tensor offsets = counts.cumsum(0) - counts;
  return std::get<0>(at::embedding_bag(W, cols, offsets, false, /*mode=sum*/ 0, false, v));
}

// Gradients of a decode of pairs (rows, cols, post = ReLU(pre_vals)) given G = dL/d(decoded) [N, D]:
// accumulates into gW_dec, gW_enc, gb_enc and returns the per-latent encoder-gradient sums h [F] (for b_dec).
void pairs_backward(const at::Tensor& G, const at::Tensor& xc, const at::Tensor& W_enc, const at::Tensor& W_dec,
                    const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& pre_vals,
                    const at::Tensor& post, at::Tensor& gW_enc, at::Tensor& gb_enc, at::Tensor& gW_dec) {
  if (cols.numel() == 0) return;
  at::Tensor Gr = G.index_select(0, rows);                                               // [M, D]
  gW_dec.index_add_(0, cols, Gr * post.unsqueeze(1));
  at::Tensor gv = (Gr * W_dec.index_select(0, cols)).sum(1) * (pre_vals > 0).to(G.scalar_type());  // [M]
  gW_enc.index_add_(0, cols, xc.index_select(0, rows) * gv.unsqueeze(1));
  gb_enc.index_add_(0, cols, gv);
}

SparseResult sparse_topk_loss_grads(const SaeParams& p, bool tied, const at::Tensor& x, const SaeStepArgs& a,
                                    const at::Tensor& dead, bool want_z) {
  at::NoGradGuard ng;
  const int64_t N = x.size(0), F = p.W_enc.size(0);
  const at::Tensor& W_enc = p.W_enc;
  const at::Tensor& W_dec = tied ? p.W_enc : p.W_dec;
  SparseResult o;
  at::Tensor xc = x - p.b_dec;
  at::Tensor pre = encoder_pre_nograd(x, W_enc, p.b_enc, p.b_dec, a.compute_dtype);  // [N, F]
  const bool exact_pre = a.compute_dtype == x.scalar_type() || a.compute_dtype == at::kFloat;  // see encoder_pre_nograd
  // Pre-activations of chosen pairs: read from the GEMM, or recomputed in full precision after a low-precision GEMM.
  auto pair_pre = [&](const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& from_gemm) {
    if (exact_pre) return from_gemm;
    return (xc.index_select(0, rows) * W_enc.index_select(0, cols)).sum(1) + p.b_enc.index_select(0, cols);
  };
  // CPU: selection and backward as plain loops (cpu_kernels.cpp); elsewhere libtorch ops.
  const bool cpu = sae_cpu::applicable(x) && sae_cpu::applicable(pre);
  auto backward = [&](const at::Tensor& G, const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& pv,
                      const at::Tensor& post) {
    if (cpu)
      sae_cpu::pairs_backward(G, xc, W_dec, {rows, cols, pv}, post, o.gW_enc, o.gb_enc, o.gW_dec);
    else
      pairs_backward(G, xc, W_enc, W_dec, rows, cols, pv, post, o.gW_enc, o.gb_enc, o.gW_dec);
  };
  at::Tensor rows, cols, pv;
  if (a.arch == SaeArch::TopK) {
    const int64_t k = std::min(a.k, F);
    if (cpu) {
      sae_cpu::Pairs sel = sae_cpu::topk_rows(pre, k);
      rows = sel.rows;
      cols = sel.cols;
      pv = pair_pre(rows, cols, sel.vals);
    } else {
      auto [vals, idx] = pre.topk(k, 1);  // [N, k]
      rows = at::arange(N, idx.options()).repeat_interleave(k);
      cols = idx.reshape(-1);
      pv = pair_pre(rows, cols, vals.reshape(-1));
    }
  } else {
    const int64_t kn = std::min(a.k * N, N * F);
    if (cpu) {
      sae_cpu::Pairs sel = sae_cpu::topk_global_relu(pre, kn);  // row-major order
      rows = sel.rows;
      cols = sel.cols;
      pv = pair_pre(rows, cols, sel.vals);
    } else {
      at::Tensor idx = std::get<1>(at::relu(pre).reshape(-1).topk(kn));
      idx = std::get<0>(idx.sort());  // row-major order: deterministic sums, rows sorted for decode_pairs
      rows = at::div(idx, F, "floor");
      cols = idx - rows * F;
      pv = pair_pre(rows, cols, pre.reshape(-1).index_select(0, idx));
    }
  }
  at::Tensor v = at::relu(pv);
  o.x_hat = decode_pairs(W_dec, rows, cols, v, N) + p.b_dec;
  at::Tensor r = o.x_hat - x;
  o.mse = r.pow(2).sum(1).mean();
  o.loss = o.mse;
  o.aux = at::zeros({}, x.options());
  at::Tensor G = r * (2.0 / double(N));  // dL/dx̂
  o.gW_enc = at::zeros_like(W_enc);
  o.gb_enc = at::zeros_like(p.b_enc);
  o.gW_dec = at::zeros_like(W_dec);
  o.gb_dec = G.sum(0);
  backward(G, rows, cols, pv, v);

  // AuxK: the top k_aux dead latents per token reconstruct the (detached) residual, without b_dec.
  if (dead.defined() && a.auxk_coef > 0) {
    at::Tensor dead_idx, any_dead;
    if (x.is_cpu()) {
      dead_idx = dead.nonzero().reshape(-1);  // host-side is free on the CPU: skip the work when none are dead
    } else {
      dead_idx = at::arange(F, rows.options());
      any_dead = dead.any().to(x.scalar_type());
    }
    const int64_t nd = dead_idx.size(0);
    if (nd > 0) {
      at::Tensor sub = pre.index_select(1, dead_idx);  // [N, nd]
      if (!x.is_cpu()) sub = at::where(dead.unsqueeze(0), sub, at::full_like(sub, -INFINITY));
      const int64_t ka = std::min(a.k_aux, nd);
      at::Tensor arows, acols;
      if (cpu) {
        sae_cpu::Pairs sel = sae_cpu::topk_rows(at::relu(sub), ka);
        arows = sel.rows;
        acols = dead_idx.index_select(0, sel.cols);
      } else {
        at::Tensor aidx = std::get<1>(at::relu(sub).topk(ka, 1));  // [N, ka]
        arows = at::arange(N, aidx.options()).repeat_interleave(ka);
        acols = dead_idx.index_select(0, aidx.reshape(-1));
      }
      at::Tensor apre = exact_pre ? pre.reshape(-1).index_select(0, arows * F + acols) : pair_pre(arows, acols, {});
      at::Tensor av = at::relu(apre);
      if (!x.is_cpu()) av = av * dead.index_select(0, acols).to(av.scalar_type());  // live latents contribute nothing
      at::Tensor e = -r;
      at::Tensor e_hat = decode_pairs(W_dec, arows, acols, av, N);
      at::Tensor diff = e - e_hat;
      at::Tensor num = diff.pow(2).sum(1).mean();
      at::Tensor den = (e - e.mean(0, true)).pow(2).sum(1).mean();
      at::Tensor aux = num / den;
      at::Tensor finite = at::isfinite(aux);
      at::Tensor on = finite.to(aux.scalar_type());  // NaN -> 0 (no dead latent has anything to explain)
      if (any_dead.defined()) on = on * any_dead;
      o.aux = at::where(finite, aux, at::zeros_like(aux)) * on;
      o.loss = o.loss + a.auxk_coef * o.aux;
      // d(coef·num/den)/dê = -2·coef·(e - ê)/(N·den) (den is a constant: e is detached).
      at::Tensor Ga = diff * (at::where(finite, -2.0 * a.auxk_coef / (double(N) * den), at::zeros_like(den)) * on);
      backward(Ga, arows, acols, apre, av);
    }
  }
  // pre = (x - b_dec)·W_encᵀ + b_enc, so dL/db_dec gets -Σ_i (dL/dpre_i)·W_enc[i] = -(Σ_t dL/dpre_t)·W_enc.
  o.gb_dec = o.gb_dec - at::matmul(o.gb_enc.unsqueeze(0), W_enc).squeeze(0);
  if (tied) {
    o.gW_enc = o.gW_enc + o.gW_dec;
    o.gW_dec = o.gW_enc;
  }
  at::Tensor fired = v > a.fire_threshold;
  o.fire_counts = at::zeros({F}, rows.options()).index_add_(0, cols, fired.to(at::kLong));
  o.l0_sum = fired.sum().to(at::kDouble);
  o.l1_sum = v.abs().sum().to(at::kDouble);
  if (a.arch == SaeArch::BatchTopK) o.kept_min = at::where(v > 0, v, at::full_like(v, INFINITY)).min().to(at::kDouble);
  if (want_z) o.z_dense = at::zeros({N * F}, v.options()).index_put_({rows * F + cols}, v).view({N, F});
  return o;
}

bool use_sparse_path(const SaeStepArgs& a) {
  return (a.arch == SaeArch::TopK || a.arch == SaeArch::BatchTopK) && !a.ghost_grads;
}

}  // namespace

namespace sae_detail {

void adam_update(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, const at::Tensor& ok,
                 const SaeStepArgs& a, int64_t t, bool decay, int matrix, bool in_place) {
  const bool bf16 = m.scalar_type() == at::kBFloat16;
  MLXTERP_CHECK(m.scalar_type() == v.scalar_type() && (m.scalar_type() == at::kFloat || (bf16 && matrix >= 0)),
                "sae_train_step: Adam moments are ", dtype_str(m.scalar_type()), " (m) and ",
                dtype_str(v.scalar_type()),
                " (v); expected float32, or bfloat16 for W_enc's and W_dec's only (optimizer_state_dtype)");
  const double bc1 = 1 - std::pow(a.beta1, double(t)), bc2 = 1 - std::pow(a.beta2, double(t));
  if (in_place) {
    if (!ok.item<bool>()) return;
    at::Tensor m32 = bf16 ? m.to(at::kFloat) : m, v32 = bf16 ? v.to(at::kFloat) : v;  // float32: m, v themselves
    m32.mul_(a.beta1).add_(g, 1 - a.beta1);
    v32.mul_(a.beta2).addcmul_(g, g, 1 - a.beta2);
    if (decay && a.weight_decay > 0) p.mul_(1 - a.lr * a.weight_decay);
    at::Tensor denom = (v32 / bc2).sqrt_().add_(a.eps);
    p.addcdiv_(m32, denom, -a.lr / bc1);
    if (bf16) {
      auto [m16, v16] = sae_kernels::round_moments_bf16(m32, v32, t, matrix);
      m.copy_(m16);
      v.copy_(v16);
    }
    return;
  }
  at::Tensor m32 = m.to(at::kFloat), v32 = v.to(at::kFloat);  // no copy when float32
  at::Tensor m_new = m32 * a.beta1 + g * (1 - a.beta1);
  at::Tensor v_new = v32 * a.beta2 + g * g * (1 - a.beta2);
  at::Tensor p_new = decay && a.weight_decay > 0 ? p * (1 - a.lr * a.weight_decay) : p;
  p_new = p_new - (m_new / bc1) / ((v_new / bc2).sqrt() + a.eps) * a.lr;
  p.copy_(at::where(ok, p_new, p));
  if (bf16) std::tie(m_new, v_new) = sae_kernels::round_moments_bf16(m_new, v_new, t, matrix);
  m.copy_(at::where(ok, m_new, m));
  v.copy_(at::where(ok, v_new, v));
}

}  // namespace sae_detail

SaeLossGrads sae_loss_and_grads(const SaeParams& p, const at::Tensor& x, const SaeStepArgs& a, bool tied,
                                const at::Tensor& dead) {
  if (use_sparse_path(a)) {
    SparseResult r = sparse_topk_loss_grads(p, tied, x, a, dead, /*want_z=*/true);
    SaeLossGrads out;
    out.loss = r.loss.item<double>();
    out.mse = r.mse.item<double>();
    out.aux = r.aux.item<double>();
    out.grads.W_enc = r.gW_enc;
    out.grads.b_enc = r.gb_enc;
    out.grads.W_dec = r.gW_dec;
    out.grads.b_dec = r.gb_dec;
    out.z = r.z_dense;
    return out;
  }
  return sae_loss_and_grads_autograd(p, x, a, tied, dead);
}

SaeLossGrads sae_loss_and_grads_autograd(const SaeParams& p, const at::Tensor& x, const SaeStepArgs& a, bool tied,
                                         const at::Tensor& dead) {
  Leaves l = make_leaves(p, tied);
  Forward f = forward_loss(l, x, a, dead, /*want_z=*/true);
  f.loss.backward();
  SaeLossGrads out;
  out.loss = f.loss.item<double>();
  out.mse = f.mse.item<double>();
  out.aux = f.aux.item<double>();
  out.ghost = f.ghost.item<double>();
  out.sparsity = f.sparsity.item<double>();
  out.grads.W_enc = grad_or_zeros(l.W_enc);
  out.grads.b_enc = grad_or_zeros(l.b_enc);
  out.grads.W_dec = tied ? out.grads.W_enc : grad_or_zeros(l.W_dec);
  out.grads.b_dec = grad_or_zeros(l.b_dec);
  if (l.threshold.defined()) out.grads.threshold = grad_or_zeros(l.threshold);
  out.z = f.z_dense;
  return out;
}

void sae_train_step_reference(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a) {
  MLXTERP_ASSERT(x.dim() == 2 && x.size(1) == st.d_in && x.scalar_type() == at::kFloat);
  const int64_t N = x.size(0);
  at::Tensor dead;
  if ((a.auxk_coef > 0 && (a.arch == SaeArch::TopK || a.arch == SaeArch::BatchTopK)) || a.ghost_grads)
    dead = st.tokens_since_fired >= a.dead_window_tokens;

  Forward f;
  at::Tensor gW_enc, gb_enc, gb_dec, gW_dec, gth;
  if (use_sparse_path(a)) {
    SparseResult r = sparse_topk_loss_grads(st.params, st.tied, x, a, dead, /*want_z=*/false);
    f.loss = r.loss;
    f.mse = r.mse;
    f.aux = r.aux;
    f.ghost = f.sparsity = at::zeros({}, x.options());
    f.x_hat = r.x_hat;
    f.fire_counts = r.fire_counts;
    f.l0_sum = r.l0_sum;
    f.l1_sum = r.l1_sum;
    f.kept_min = r.kept_min;
    gW_enc = r.gW_enc;
    gb_enc = r.gb_enc;
    gb_dec = r.gb_dec;
    gW_dec = st.tied ? gW_enc : r.gW_dec;
  } else {
    Leaves l = make_leaves(st.params, st.tied);
    f = forward_loss(l, x, a, dead, /*want_z=*/false);
    f.loss.backward();
    gW_enc = grad_or_zeros(l.W_enc);
    gb_enc = grad_or_zeros(l.b_enc);
    gb_dec = grad_or_zeros(l.b_dec);
    gW_dec = st.tied ? gW_enc : grad_or_zeros(l.W_dec);
    if (l.threshold.defined()) gth = grad_or_zeros(l.threshold);
  }

  at::NoGradGuard ng;
  at::Tensor& W_dec = st.tied ? st.params.W_enc : st.params.W_dec;
  if (a.decoder_unit_norm) {
    // Remove the component of each decoder row's gradient parallel to the row.
    at::Tensor w = W_dec / W_dec.norm(2, 1, true).clamp_min(1e-12);
    gW_dec.sub_((gW_dec * w).sum(1, true) * w);
  }
  at::Tensor sq = gW_enc.pow(2).sum() + gb_enc.pow(2).sum() + gb_dec.pow(2).sum();
  if (!st.tied) sq = sq + gW_dec.pow(2).sum();
  if (gth.defined()) sq = sq + gth.pow(2).sum();
  at::Tensor norm = sq.sqrt();
  at::Tensor clipped = at::zeros({}, x.options());
  if (a.clip > 0) {
    at::Tensor scale = (a.clip / (norm + 1e-6)).clamp_max(1.0);
    clipped = (scale < 1).to(at::kFloat);
    for (at::Tensor* g : {&gW_enc, &gb_enc, &gb_dec}) g->mul_(scale);
    if (!st.tied) gW_dec.mul_(scale);
    if (gth.defined()) gth.mul_(scale);
  }
  at::Tensor ok = at::isfinite(f.loss) & at::isfinite(norm) & (st.bad_steps == 0);

  const int64_t t = st.adam_step + 1;
  const bool in_place = st.params.W_enc.is_cpu();  // `ok` costs nothing to read on the CPU
  using sae_detail::adam_update;
  adam_update(st.params.W_enc, gW_enc, st.adam_m.W_enc, st.adam_v.W_enc, ok, a, t, true, 0, in_place);
  adam_update(st.params.b_enc, gb_enc, st.adam_m.b_enc, st.adam_v.b_enc, ok, a, t, false, -1, in_place);
  if (!st.tied) adam_update(st.params.W_dec, gW_dec, st.adam_m.W_dec, st.adam_v.W_dec, ok, a, t, true, 1, in_place);
  adam_update(st.params.b_dec, gb_dec, st.adam_m.b_dec, st.adam_v.b_dec, ok, a, t, false, -1, in_place);
  if (gth.defined())
    adam_update(st.params.threshold, gth, st.adam_m.threshold, st.adam_v.threshold, ok, a, t, false, -1, in_place);
  if (a.decoder_unit_norm) {
    if (W_dec.is_cpu()) {
      if (ok.item<bool>()) W_dec.div_(W_dec.norm(2, 1, true).clamp_min(1e-12));
    } else {
      W_dec.copy_(at::where(ok, W_dec / W_dec.norm(2, 1, true).clamp_min(1e-12), W_dec));
    }
  }
  st.bad_steps.add_((~ok).to(at::kLong));

  // Dead-latent counters and density window.
  at::Tensor okl = ok.to(at::kLong);
  at::Tensor fired = f.fire_counts > 0;
  at::Tensor tsf_new = at::where(fired, at::zeros_like(st.tokens_since_fired), st.tokens_since_fired + N);
  st.tokens_since_fired.copy_(at::where(ok, tsf_new, st.tokens_since_fired));
  st.fire_count.add_(f.fire_counts * okl);
  st.window_tokens.add_(okl * N);
  if (a.arch == SaeArch::BatchTopK) {
    at::Tensor th_b = f.kept_min;
    at::Tensor ema = st.threshold_ema;
    at::Tensor upd = at::where(ema < 0, th_b, ema * a.threshold_decay + th_b * (1 - a.threshold_decay));
    st.threshold_ema.copy_(at::where(ok & at::isfinite(th_b), upd, ema));
  }

  // Metrics (raw activation space where it matters).
  at::Tensor xh = f.x_hat.detach();
  at::Tensor xr = x, xhr = xh;
  if (a.metric_scale.defined()) {
    xr = x * a.metric_scale + a.metric_mean;
    xhr = xh * a.metric_scale + a.metric_mean;
  }
  at::Tensor sse = (xr - xhr).pow(2).sum();
  at::Tensor sst = (xr - xr.mean(0, true)).pow(2).sum();
  at::Tensor cos = (xr * xhr).sum(1) / (xr.norm(2, 1) * xhr.norm(2, 1)).clamp_min(1e-12);
  auto d = [](const at::Tensor& t) { return t.detach().to(at::kDouble).reshape({}); };
  at::Tensor row = at::stack({d(at::ones({}, x.options())), d(at::full({}, double(N), x.options())), d(f.loss),
                              d(f.mse), d(sse), d(sst), d(f.l0_sum), d(f.l1_sum), d(f.aux), d(f.ghost),
                              d(f.sparsity), d(norm), d(cos.sum()), d(clipped)});
  st.metric_sums.add_(row);
}

void sae_train_step(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a) {
#ifdef MLXTERP_HAVE_CUDA_KERNELS
  if (x.is_cuda() && (a.arch == SaeArch::TopK || a.arch == SaeArch::BatchTopK) &&
      cuda::sae_train_step_topk(st, x, a))
    return;
#endif
  sae_train_step_reference(st, x, a);
}

}  // namespace mlxterp
