// at::Tensor bindings of the SAE CUDA kernels (kernels.h) and the fused step. Compiled only in the CUDA
// build (-DMLXTERP_CUDA=ON); the kernels themselves live in the .cu files beside this one.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "cuda/binding.hpp"
#include "cuda/sae_kernels_internal.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/sae_kernels.hpp"
#include "mlxterp/torch_compat.hpp"  // at::NoGradGuard on libtorch 2.x
#include "mlxterp/util.hpp"

namespace mlxterp::sae_kernels {

namespace K = mlxterp::cuda_kernels;

#define MLXTERP_CUDA_OK(expr) MLXTERP_CUDA_OK_IN("sae_kernels", expr)

namespace {

// Encoder output (bf16) computed per GEMM: 128 MB, or MLXTERP_SAE_GEMM_CHUNK_MB (1 .. 4096). Smaller saves
// memory (it is ~4% of the weights + Adam state at d=2048, F=65536) and costs GEMM and top-k launches.
int64_t gemm_chunk_bytes() {
  static const int64_t bytes = [] {
    int64_t mb = 128;
    if (const char* env = std::getenv("MLXTERP_SAE_GEMM_CHUNK_MB"); env && *env) {
      char* end = nullptr;
      const long v = std::strtol(env, &end, 10);
      MLXTERP_CHECK(*end == 0 && v >= 1 && v <= 4096, "MLXTERP_SAE_GEMM_CHUNK_MB: expected megabytes in 1 .. 4096, got '", env,
                    "'");
      mb = v;
    }
    return mb << 20;
  }();
  return bytes;
}

using cuda_binding::current_stream;

// How many dead latents the step does densely (see StepConfig::aux_dense_cap). The dense form costs 4 GEMMs
// of 2 * N * cap * d flops each and ~(4N + 6d) * cap bytes; the per-pair form ~5 gathers of a d-row per
// (token, dead latent) pair. Dense pays once a dead latent averages >= 32 pairs (N * ka / dead); it is
// capped at F / 4 latents (the rest stay per pair).
int64_t aux_dense_cap(const StepConfig& c, int64_t N, int64_t F, int64_t ka, const AuxDenseHint* hint) {
  if (c.aux_dense_cap >= 0) return std::min(c.aux_dense_cap, F);
  if (!hint || hint->dead <= 0 || N * ka < 32 * hint->dead) return 0;
  const int64_t want = (hint->dead + hint->dead / 8 + 64 + 63) / 64 * 64;  // room for latents dying meanwhile
  return std::min({want, F, std::max<int64_t>(64, F / 4)});
}

// The hint's side of the dead count n_dead ([] int64 on the device): take a count that has arrived, then send
// this step's (unless one is still in flight). The host never waits for the device here.
void exchange_dead_count(AuxDenseHint* hint, const at::Tensor& n_dead) {
  if (!hint) return;
  if (!hint->host.defined()) {
    auto o = at::TensorOptions().dtype(at::kLong);
#ifndef MLXTERP_CUDA_EMULATE
    o = o.pinned_memory(true);
#endif
    hint->host = at::full({1}, -1, o);
  }
  volatile int64_t* slot = hint->host.data_ptr<int64_t>();
  if (hint->in_flight && *slot >= 0) {
    hint->dead = *slot;
    hint->in_flight = false;
  }
  if (hint->in_flight) return;
  *slot = -1;
  hint->host.copy_(n_dead.reshape({1}), /*non_blocking=*/true);
  hint->in_flight = true;
}

void check_cuda_tensor(const at::Tensor& t, at::ScalarType dtype, const char* name, const char* where) {
  MLXTERP_CHECK(MLXTERP_ON_GPU(t), where, ": ", name, " must be a CUDA tensor");
  MLXTERP_CHECK(t.scalar_type() == dtype, where, ": ", name, " must be ", dtype_str(dtype), "; got ",
                dtype_str(t.scalar_type()));
}

void check_selection_input(const at::Tensor& pre, const at::Tensor& b_enc, int64_t k, const char* where) {
  check_cuda_tensor(pre, at::kBFloat16, "pre", where);
  check_cuda_tensor(b_enc, at::kFloat, "b_enc", where);
  MLXTERP_CHECK(pre.dim() == 2 && pre.stride(1) == 1 && pre.stride(0) % 8 == 0, where,
                ": pre must be [N, F] with contiguous rows and a row stride that is a multiple of 8");
  MLXTERP_CHECK(b_enc.is_contiguous() && b_enc.numel() == pre.size(1), where, ": b_enc must be [", pre.size(1), "]");
  MLXTERP_CHECK(pre.size(1) % 8 == 0, where, ": F = ", pre.size(1), " must be a multiple of 8");
  MLXTERP_CHECK(k >= 1 && k <= pre.size(1), where, ": k must be in [1, ", pre.size(1), "]; got ", k);
}

// Adam's constants for this step; decay = false for the biases (no weight decay).
K::AdamArgs adam_args(const StepConfig& c, bool decay) {
  const double bc1 = 1 - std::pow(c.beta1, double(c.step)), bc2 = 1 - std::pow(c.beta2, double(c.step));
  return {float(c.beta1), float(c.beta2), float(c.eps), decay ? float(1 - c.lr * c.weight_decay) : 1.f,
          float(c.lr / bc1), float(1 / std::sqrt(bc2))};
}

const uint64_t* u64_ptr(const at::Tensor& t) { return reinterpret_cast<const uint64_t*>(t.data_ptr<int64_t>()); }
uint64_t* u64_ptr(at::Tensor& t) { return reinterpret_cast<uint64_t*>(t.data_ptr<int64_t>()); }

// Selection shared by the step and the piece-wise API. Outputs int32 latents / tokens and float values.
struct Selected {
  at::Tensor row_ptr;  // [N + 1] int64
  at::Tensor lat32, tok32, values;
  at::Tensor threshold;  // BatchTopK only
};

Selected select_batch_topk(const at::Tensor& pre, const at::Tensor& b_enc, int64_t k, cudaStream_t stream) {
  const int64_t N = pre.size(0), F = pre.size(1), P = N * k;
  auto i32 = pre.options().dtype(at::kInt), i64 = pre.options().dtype(at::kLong);
  at::Tensor state = at::zeros({8}, i32), hist = at::zeros({4096}, i32);
  MLXTERP_CUDA_OK(K::batch_topk_threshold(pre.data_ptr(), pre.stride(0), b_enc.data_ptr<float>(), int(N), int(F), P,
                                          state.data_ptr<int>(), reinterpret_cast<unsigned*>(hist.data_ptr<int>()),
                                          stream));
  at::Tensor cnt_gt = at::empty({N}, i32), cnt_eq = at::empty({N}, i32);
  MLXTERP_CUDA_OK(K::batch_topk_count(pre.data_ptr(), pre.stride(0), b_enc.data_ptr<float>(), int(N), int(F),
                                      state.data_ptr<int>(), cnt_gt.data_ptr<int>(), cnt_eq.data_ptr<int>(), stream));
  // Ties at the threshold go to the earliest rows: row n takes what is left after rows < n.
  at::Tensor ceq = cnt_eq.to(at::kLong);
  at::Tensor eq_before = ceq.cumsum(0) - ceq;
  at::Tensor needed_eq = state.narrow(0, K::kStateNeededEq, 1).to(at::kLong);
  at::Tensor take = at::minimum((needed_eq - eq_before).clamp_min(0), ceq).contiguous();
  Selected s;
  s.row_ptr = at::zeros({N + 1}, i64);
  s.row_ptr.narrow(0, 1, N).copy_((cnt_gt.to(at::kLong) + take).cumsum(0));
  s.lat32 = at::empty({P}, i32);
  s.tok32 = at::empty({P}, i32);
  s.values = at::empty({P}, pre.options().dtype(at::kFloat));
  MLXTERP_CUDA_OK(K::batch_topk_collect(pre.data_ptr(), pre.stride(0), b_enc.data_ptr<float>(), int(N), int(F),
                                        state.data_ptr<int>(), s.row_ptr.data_ptr<int64_t>(),
                                        take.data_ptr<int64_t>(), s.lat32.data_ptr<int>(), s.values.data_ptr<float>(),
                                        s.tok32.data_ptr<int>(), stream));
  s.threshold = state.narrow(0, K::kStateThreshold, 1).view(at::kFloat).squeeze(0).clone();
  return s;
}

}  // namespace

// ---- the pieces --------------------------------------------------------------------------------------------

namespace cuda {

std::pair<at::Tensor, at::Tensor> topk_rows(const at::Tensor& pre, const at::Tensor& b_enc, int64_t k,
                                            const at::Tensor& mask, const at::Tensor& guess, at::Tensor* kth) {
  const char* where = "sae_kernels::cuda::topk_rows";
  check_selection_input(pre, b_enc, k, where);
  at::Tensor mask8;
  if (mask.defined()) {
    MLXTERP_CHECK(mask.numel() == pre.size(1), where, ": mask must be [", pre.size(1), "]");
    mask8 = mask.to(at::kByte).contiguous();
  }
  MLXTERP_CHECK(k <= K::kTopkMaxK, where, ": k = ", k, " exceeds the kernel's limit ", K::kTopkMaxK);
  if (guess.defined())
    MLXTERP_CHECK(MLXTERP_ON_GPU(guess) && guess.numel() == 1 && guess.scalar_type() == at::kFloat, where,
                  ": guess must be one float32 on the device");
  MLXTERP_DEVICE_GUARD(pre.device());
  const int64_t N = pre.size(0);
  at::Tensor g = guess.defined() ? guess.contiguous() : at::Tensor();
  if (kth) *kth = at::empty({N}, pre.options().dtype(at::kFloat));
  auto i32 = pre.options().dtype(at::kInt);
  // Poisoned, so a selection the kernel fails to write shows up in the comparison.
  at::Tensor lat = at::full({N, k}, -1, i32), tok = at::full({N, k}, -1, i32);
  at::Tensor val = at::full({N, k}, -1.0, pre.options().dtype(at::kFloat));
  MLXTERP_CUDA_OK(K::topk_rows(pre.data_ptr(), pre.stride(0), b_enc.data_ptr<float>(), int(N), int(pre.size(1)),
                               int(k), 0, lat.data_ptr<int>(), val.data_ptr<float>(), tok.data_ptr<int>(),
                               current_stream(), mask8.defined() ? mask8.data_ptr<uint8_t>() : nullptr, nullptr,
                               g.defined() ? g.data_ptr<float>() : nullptr, kth ? kth->data_ptr<float>() : nullptr));
  return {lat.to(at::kLong), val};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_topk(const at::Tensor& pre, const at::Tensor& b_enc, int64_t k) {
  const char* where = "sae_kernels::cuda::batch_topk";
  check_selection_input(pre, b_enc, k, where);
  MLXTERP_CHECK(pre.size(0) * pre.size(1) < (int64_t(1) << 31), where, ": more than 2^31 activations");
  MLXTERP_DEVICE_GUARD(pre.device());
  Selected s = select_batch_topk(pre, b_enc, k, current_stream());
  return {s.row_ptr, s.lat32.to(at::kLong), s.values};
}

at::Tensor sparse_decode_residual(const at::Tensor& row_ptr, const at::Tensor& latents, const at::Tensor& values,
                                  const at::Tensor& W, const at::Tensor& b_dec, const at::Tensor& x) {
  const char* where = "sae_kernels::cuda::sparse_decode_residual";
  check_cuda_tensor(W, at::kBFloat16, "W", where);
  check_cuda_tensor(b_dec, at::kFloat, "b_dec", where);
  check_cuda_tensor(row_ptr, at::kLong, "row_ptr", where);
  MLXTERP_CHECK(MLXTERP_ON_GPU(x) && x.dim() == 2 && x.size(1) == W.size(1), where, ": x must be [N, ", W.size(1), "]");
  const int64_t N = x.size(0), d = x.size(1);
  MLXTERP_CHECK(d % 8 == 0 && d <= K::kMaxDim, where, ": d = ", d, " must be a multiple of 8 and <= ", K::kMaxDim);
  MLXTERP_DEVICE_GUARD(x.device());
  at::Tensor xx = x.scalar_type() == at::kBFloat16 ? x.contiguous() : x.to(at::kFloat).contiguous();
  at::Tensor lat32 = latents.to(at::kInt).contiguous(), val = values.to(at::kFloat).contiguous();
  at::Tensor Wc = W.contiguous(), rp = row_ptr.contiguous(), bd = b_dec.contiguous();
  at::Tensor e32 = at::full({N, d}, NAN, x.options().dtype(at::kFloat));
  at::Tensor e16 = at::empty({N, d}, x.options().dtype(at::kBFloat16));
  at::Tensor err2 = at::empty({N}, x.options().dtype(at::kFloat));
  MLXTERP_CUDA_OK(K::sparse_decode(int(N), int(d), 0, rp.data_ptr<int64_t>(), lat32.data_ptr<int>(),
                                   val.data_ptr<float>(), Wc.data_ptr(), bd.data_ptr<float>(), xx.data_ptr(),
                                   xx.scalar_type() == at::kBFloat16, e32.data_ptr<float>(), e16.data_ptr(),
                                   err2.data_ptr<float>(), current_stream()));
  return e32;
}

// ---- the fused step ----------------------------------------------------------------------------------------

StepStats step(Params& p, AdamState& s, at::Tensor& since_fired, const at::Tensor& x_in, const StepConfig& c,
               at::Tensor& W_enc16, at::Tensor& W_dec16, AuxDenseHint* hint) {
  const char* where = "sae_kernels::cuda::step";
  detail::check_step_inputs(p, s, since_fired, x_in, c, where);
  const std::string why = cuda_unsupported_reason(p, x_in, c);
  MLXTERP_CHECK(why.empty(), where, ": ", why);
  for (const at::Tensor* t : {&s.W_enc_m, &s.W_enc_v, &s.W_dec_m, &s.W_dec_v, &s.b_enc_m, &s.b_enc_v, &s.b_dec_m,
                              &s.b_dec_v, &since_fired})
    MLXTERP_CHECK(t->is_contiguous(), where, ": the Adam state and since_fired must be contiguous");
  MLXTERP_CHECK(W_enc16.defined() && W_enc16.sizes() == p.W_enc.sizes() && W_enc16.scalar_type() == at::kBFloat16 &&
                    W_enc16.is_contiguous() && W_dec16.defined() && W_dec16.sizes() == p.W_dec.sizes() &&
                    W_dec16.scalar_type() == at::kBFloat16 && W_dec16.is_contiguous(),
                where, ": the bf16 weight copies must be contiguous [d_sae, d_in] bfloat16");

  MLXTERP_DEVICE_GUARD(x_in.device());
  cudaStream_t stream = current_stream();
  at::NoGradGuard no_grad;
  const int64_t N = x_in.size(0), d = p.d_in(), F = p.d_sae(), k = c.k;
  const bool aux_on = c.auxk_coef > 0;
  const int64_t ka = aux_on ? std::min(c.k_aux, F) : 0;
  auto f32 = x_in.options().dtype(at::kFloat), i32 = x_in.options().dtype(at::kInt);
  auto i64 = x_in.options().dtype(at::kLong), bf16 = x_in.options().dtype(at::kBFloat16);

  const bool x_bf16 = x_in.scalar_type() == at::kBFloat16;
  at::Tensor x = x_bf16 ? x_in.contiguous() : x_in.to(at::kFloat).contiguous();  // [N, d] as the decoder reads it
  // The encoder input xc16 = bf16(x - b_dec) and the total variance sum_{n,j} (x[n, j] - mean_j)^2, 1024 rows
  // at a time: a float32 copy of x and its temporaries would set the step's peak memory (~190 MB at d=4096).
  constexpr int64_t kRows = 1024;
  auto rows_f32 = [&](int64_t r0) { return x.narrow(0, r0, std::min<int64_t>(kRows, N - r0)).to(at::kFloat); };
  at::Tensor xc16 = at::empty({N, d}, bf16);  // [N, d] encoder input
  at::Tensor total_var = at::zeros({}, f32);
  {
    at::Tensor mean = at::zeros({1, d}, f32);
    for (int64_t r0 = 0; r0 < N; r0 += kRows) mean += rows_f32(r0).sum(0, true);
    mean /= double(N);
    for (int64_t r0 = 0; r0 < N; r0 += kRows) {
      at::Tensor xr = rows_f32(r0);
      xc16.narrow(0, r0, xr.size(0)).copy_(xr - p.b_dec);
      total_var += (xr - mean).pow(2).sum();
    }
  }
  at::Tensor denom = c.loss_norm == LossNorm::FVU          ? total_var
                     : c.loss_norm == LossNorm::MeanSquare ? at::scalar_tensor(double(N * d), f32)
                                                           : at::scalar_tensor(double(N), f32);
  // AuxK's dead latents, from the counters before this step.
  at::Tensor dead, dead8, any_dead;
  int64_t cap = 0;  // dead latents done densely
  if (aux_on) {
    dead = since_fired >= c.dead_tokens;
    dead8 = dead.to(at::kByte).contiguous();
    const at::Tensor n_dead = dead.sum();
    any_dead = (n_dead > 0).to(at::kInt).reshape({1}).contiguous();
    cap = aux_dense_cap(c, N, F, ka, hint);
    if (c.aux_dense_cap < 0) exchange_dead_count(hint, n_dead);  // only the adaptive cap reads it
  }

  // 1. Encoder GEMM (cuBLAS, bf16 in/out, fp32 accumulation) and selection.
  Selected sel;
  at::Tensor alat, aval, atok;  // AuxK selections [N * ka]
  StepStats st;
  if (aux_on) {
    alat = at::empty({N * ka}, i32);
    aval = at::empty({N * ka}, f32);
    atok = at::empty({N * ka}, i32);
  }
  auto select_aux = [&](const at::Tensor& pre, int64_t r0, int64_t rows) {
    if (!aux_on) return;
    MLXTERP_CUDA_OK(K::topk_rows(pre.data_ptr(), pre.stride(0), p.b_enc.data_ptr<float>(), int(rows), int(F),
                                 int(ka), int(r0), alat.data_ptr<int>(), aval.data_ptr<float>(), atok.data_ptr<int>(),
                                 stream, dead8.data_ptr<uint8_t>(), any_dead.data_ptr<int>()));
  };
  if (c.selection == Selection::TopK) {
    const int64_t P = N * k;
    sel.lat32 = at::empty({P}, i32);
    sel.tok32 = at::empty({P}, i32);
    sel.values = at::empty({P}, f32);
    // Rows per GEMM: at most gemm_chunk_bytes() of encoder output alive at a time.
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, gemm_chunk_bytes() / (F * 2)));
    // The first chunk's k-th values give the later chunks a guess (their 2nd percentile): most rows are
    // then selected in one read of the encoder output instead of two. Exact whatever the guess.
    at::Tensor kth0, guess;
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t rows = std::min(chunk, N - r0);
      at::Tensor pre = at::mm(xc16.narrow(0, r0, rows), W_enc16.t());  // [rows, F] bf16
      if (r0 == 0 && rows < N) kth0 = at::empty({rows}, f32);
      MLXTERP_CUDA_OK(K::topk_rows(pre.data_ptr(), pre.stride(0), p.b_enc.data_ptr<float>(), int(rows), int(F),
                                   int(k), int(r0), sel.lat32.data_ptr<int>(), sel.values.data_ptr<float>(),
                                   sel.tok32.data_ptr<int>(), stream, nullptr, nullptr,
                                   guess.defined() ? guess.data_ptr<float>() : nullptr,
                                   r0 == 0 && kth0.defined() ? kth0.data_ptr<float>() : nullptr));
      if (r0 == 0 && kth0.defined()) guess = std::get<0>(at::kthvalue(kth0, std::max<int64_t>(1, rows / 50))).contiguous();
      select_aux(pre, r0, rows);
    }
    sel.row_ptr = at::arange(0, (N + 1) * k, k, i64);
  } else {
    at::Tensor pre = at::mm(xc16, W_enc16.t());  // [N, F] bf16: the threshold is over the whole batch
    sel = select_batch_topk(pre, p.b_enc, k, stream);
    select_aux(pre, 0, N);
  }
  const int64_t P = sel.lat32.numel(), PA = N * ka;
  st.kept_min = at::where(sel.values > 0, sel.values, at::full_like(sel.values, INFINITY)).min();

  // 2. Sparse decoder: e = x_hat - x, into the first N rows of the gradient-row matrix G16.
  at::Tensor e32 = at::empty({N, d}, f32), G16 = at::empty({aux_on ? 2 * N : N, d}, bf16);
  at::Tensor err2 = at::empty({N}, f32);
  const bool topk = c.selection == Selection::TopK;
  MLXTERP_CUDA_OK(K::sparse_decode(int(N), int(d), int(k), topk ? nullptr : sel.row_ptr.data_ptr<int64_t>(),
                                   sel.lat32.data_ptr<int>(), sel.values.data_ptr<float>(), W_dec16.data_ptr(),
                                   p.b_dec.data_ptr<float>(), x.data_ptr(), x_bf16, e32.data_ptr<float>(),
                                   G16.data_ptr(), err2.data_ptr<float>(), stream));
  st.residual = e32;
  st.sq_err = err2.sum();
  st.mse = st.sq_err / double(N);
  st.fvu = st.sq_err / total_var;
  st.loss = st.sq_err / denom;
  // Gradient-row coefficients: [main, aux].
  at::Tensor coef = at::zeros({2}, f32);
  coef.narrow(0, 0, 1).copy_((2.0 / denom).reshape({1}));
  st.aux = at::zeros({}, f32);
  // Dense AuxK: the first `cap` dead latents (slot j = rank among the dead) as GEMMs over A [N, cap], their
  // aux activations; their pairs leave the per-pair lists (value 0 there).
  at::Tensor slot, A, Wd;  // slot [F] int32 (-1: per pair); A [N, cap] bf16 (row stride cap + 64); Wd [cap, d]
  if (aux_on && cap > 0) {
    at::Tensor pos = dead.to(at::kInt).cumsum(0, at::kInt) - 1;
    slot = at::where(dead.logical_and(pos < cap), pos, at::full_like(pos, -1)).contiguous();
    at::Tensor idx = at::zeros({cap + 1}, i64);  // idx[j] = slot j's latent (0 when unused: A's column is 0)
    idx.scatter_(0, at::where(slot >= 0, slot, at::full_like(slot, int(cap))).to(at::kLong), at::arange(F, i64));
    Wd = W_dec16.index_select(0, idx.narrow(0, 0, cap));
    at::Tensor aslot = slot.index_select(0, alat.to(at::kLong));  // [N * ka]
    at::Tensor dense_pair = (aslot >= 0).logical_and(aval > 0);
    at::Tensor col = at::where(dense_pair, aslot, at::full_like(aslot, int(cap))).to(at::kLong).view({N, ka});
    at::Tensor Apad = at::zeros({N, cap + 64}, bf16);  // column cap collects the pairs that are not dense
    Apad.view({-1}).scatter_(0, (at::arange(N, i64).unsqueeze(1) * (cap + 64) + col).view({-1}),
                             aval.to(at::kBFloat16));
    A = Apad.narrow(1, 0, cap);
    aval.masked_fill_(dense_pair, 0.f);  // per pair: only the rest
  }
  if (aux_on) {
    // e_hat - r (r = x - x_hat = -e) into rows N.. of G16: decode with no bias against r (less the dense
    // latents' part of e_hat).
    at::Tensor r = (-e32).contiguous(), q32 = at::empty({N, d}, f32), qerr2 = at::empty({N}, f32);
    at::Tensor target = A.defined() ? (r - at::mm(A, Wd).to(at::kFloat)).contiguous() : r;
    MLXTERP_CUDA_OK(K::sparse_decode(int(N), int(d), int(ka), nullptr, alat.data_ptr<int>(), aval.data_ptr<float>(),
                                     W_dec16.data_ptr(), nullptr, target.data_ptr(), false, q32.data_ptr<float>(),
                                     G16.narrow(0, N, N).data_ptr(), qerr2.data_ptr<float>(), stream));
    at::Tensor num = qerr2.sum() / double(N);
    at::Tensor den = (r - r.mean(0, true)).pow(2).sum() / double(N);
    at::Tensor ratio = num / den;
    at::Tensor valid = at::isfinite(ratio).logical_and(any_dead.reshape({}) > 0);
    st.aux = at::where(valid, ratio, at::zeros_like(ratio));
    st.loss = st.loss + c.auxk_coef * st.aux;
    coef.narrow(0, 1, 1).copy_(at::where(valid, c.auxk_coef * 2.0 / (double(N) * den), at::zeros_like(den)).reshape({1}));
  }
  // The dense latents' gradient rows, Q = the AuxK rows of G16: Gd = A^T Q (decoder; the kernel scales it by
  // coef[1]); gpre = coef[1] * Q Wd^T where A > 0 (relu'); Ge = gpre^T xc16 (encoder); gb = gpre's column sums.
  at::Tensor Gd, Ge, gb_dense;
  K::DenseRows dense_rows;
  if (A.defined()) {
    at::Tensor Q = G16.narrow(0, N, N);
    Gd = at::mm(A.t(), Q).contiguous();                       // [cap, d] bf16
    at::Tensor gpre = at::mm(Q, Wd.t()) * coef.select(0, 1);  // [N, cap] bf16
    gpre.masked_fill_(A <= 0, 0);
    Ge = at::mm(gpre.t(), xc16).contiguous();  // [cap, d] bf16
    gb_dense = gpre.sum(0, false, at::kFloat).contiguous();
    dense_rows = {slot.data_ptr<int>(), reinterpret_cast<const uint16_t*>(Gd.data_ptr()),
                  reinterpret_cast<const uint16_t*>(Ge.data_ptr()), gb_dense.data_ptr<float>()};
  }
  // Updates happen only if the loss is finite (and allow_update; with clipping or finite_grad_gate, also
  // only if the gradient norm is finite).
  at::Tensor gate_b = at::isfinite(st.loss);
  if (c.allow_update.defined()) gate_b = gate_b.logical_and(c.allow_update.to(at::kBool).reshape({}));

  // 3. Group the (token, latent) pairs by latent; AuxK pairs carry token + N, their zero ones a sentinel key.
  const int64_t PT = P + PA;
  at::Tensor keys = at::empty({PT}, i32), packed = at::empty({PT}, i64);
  at::Tensor keys_sorted = at::empty({PT}, i32), packed_sorted = at::empty({PT}, i64);
  at::Tensor offsets = at::empty({F + 1}, i32);
  MLXTERP_CUDA_OK(K::pack_pairs(sel.tok32.data_ptr<int>(), sel.lat32.data_ptr<int>(), sel.values.data_ptr<float>(),
                                int(P), 0, false, int(F), keys.data_ptr<int>(), u64_ptr(packed), stream));
  if (aux_on)
    MLXTERP_CUDA_OK(K::pack_pairs(atok.data_ptr<int>(), alat.data_ptr<int>(), aval.data_ptr<float>(), int(PA),
                                  int(N), true, int(F), keys.data_ptr<int>() + P, u64_ptr(packed) + P, stream));
  const size_t temp_bytes = K::sort_pairs_temp_bytes(int(PT), int(F));
  at::Tensor temp = at::empty({int64_t(std::max<size_t>(temp_bytes, 1))}, x_in.options().dtype(at::kByte));
  MLXTERP_CUDA_OK(K::sort_pairs(temp.data_ptr(), temp_bytes, keys.data_ptr<int>(), keys_sorted.data_ptr<int>(),
                                u64_ptr(packed), u64_ptr(packed_sorted), int(PT), int(F), stream));
  MLXTERP_CUDA_OK(K::segment_offsets(keys_sorted.data_ptr<int>(), int(PT), int(F), offsets.data_ptr<int>(), stream));
  const K::LatentPairs pairs{offsets.data_ptr<int>(), u64_ptr(packed_sorted), int(N)};

  // 4. Per-latent backward + AdamW (+ parallel-gradient removal and renorm for W_dec), then b_dec.
  const int G = K::latent_grid_size(int(d));
  MLXTERP_CHECK(G > 0, where, ": could not size the latent grid (no CUDA device?)");
  at::Tensor gval = at::empty({PT}, f32);          // d loss / d val, in latent-sorted order
  at::Tensor bdec_part = at::empty({G, d}, f32);   // per-block sums of gb_enc[f] * W_enc[f]
  at::Tensor norm_dec = at::empty({G}, f32), norm_enc = at::empty({G}, f32);
  at::Tensor fire_count = at::empty({F}, i32);
  const K::AdamArgs adam = adam_args(c, true), bias_adam = adam_args(c, false);
  const bool moments16 = s.moment_dtype() == at::kBFloat16;
  const K::MomentArgs dec_mo{s.W_dec_m.data_ptr(), s.W_dec_v.data_ptr(), moments16, moment_seed(c.step, 1)};
  const K::MomentArgs enc_mo{s.W_enc_m.data_ptr(), s.W_enc_v.data_ptr(), moments16, moment_seed(c.step, 0)};
  at::Tensor gate = gate_b.to(at::kInt).reshape({1}).contiguous();
  auto dec = [&](K::LatentMode mode, const float* clip) {
    MLXTERP_CUDA_OK(K::decoder_update(mode, int(F), int(d), pairs, G16.data_ptr(), coef.data_ptr<float>(),
                                      p.W_dec.data_ptr<float>(), W_dec16.data_ptr(), dec_mo, gval.data_ptr<float>(),
                                      adam, clip,
                                      gate.data_ptr<int>(), c.remove_parallel_grad, c.normalize_decoder,
                                      norm_dec.data_ptr<float>(), dense_rows, stream));
  };
  auto enc = [&](K::LatentMode mode, const float* clip) {
    MLXTERP_CUDA_OK(K::encoder_update(mode, int(F), int(d), pairs, xc16.data_ptr(), gval.data_ptr<float>(),
                                      p.W_enc.data_ptr<float>(), W_enc16.data_ptr(), enc_mo, p.b_enc.data_ptr<float>(),
                                      s.b_enc_m.data_ptr<float>(), s.b_enc_v.data_ptr<float>(), adam, bias_adam,
                                      clip, gate.data_ptr<int>(), float(c.fire_threshold), fire_count.data_ptr<int>(),
                                      bdec_part.data_ptr<float>(), norm_enc.data_ptr<float>(), dense_rows, stream));
  };
  at::Tensor g_bdec, clip_t;
  st.clipped = at::zeros({}, f32);
  if (c.max_grad_norm > 0 || c.finite_grad_gate) {
    // Two passes: the gradient norm first (clipping scale, finiteness gate), then the update.
    dec(K::LatentMode::NormOnly, nullptr);
    enc(K::LatentMode::NormOnly, nullptr);
    g_bdec = (e32.sum(0) * coef[0] - bdec_part.sum(0)).contiguous();
    st.grad_norm = (norm_dec.sum() + norm_enc.sum() + g_bdec.pow(2).sum()).sqrt();
    if (c.max_grad_norm > 0) {
      at::Tensor clip = (c.max_grad_norm / (st.grad_norm + 1e-6)).clamp_max(1.0);
      st.clipped = (clip < 1).to(at::kFloat);
      clip_t = clip.to(at::kFloat).contiguous();
    }
    gate.copy_(gate_b.logical_and(at::isfinite(st.grad_norm)).to(at::kInt).reshape({1}));
    const float* clip_p = clip_t.defined() ? clip_t.data_ptr<float>() : nullptr;
    dec(K::LatentMode::UpdateOnly, clip_p);
    enc(K::LatentMode::UpdateOnly, clip_p);
  } else {
    dec(K::LatentMode::Fused, nullptr);
    enc(K::LatentMode::Fused, nullptr);
    g_bdec = (e32.sum(0) * coef[0] - bdec_part.sum(0)).contiguous();
    st.grad_norm = (norm_dec.sum() + norm_enc.sum() + g_bdec.pow(2).sum()).sqrt();
  }
  MLXTERP_CUDA_OK(K::adam_vector(int(d), p.b_dec.data_ptr<float>(), s.b_dec_m.data_ptr<float>(),
                                 s.b_dec_v.data_ptr<float>(), g_bdec.data_ptr<float>(), bias_adam,
                                 clip_t.defined() ? clip_t.data_ptr<float>() : nullptr, gate.data_ptr<int>(), stream));
  st.ok = (gate.reshape({}) > 0).logical_and(at::isfinite(st.grad_norm));
  at::Tensor tsf = at::where(fire_count > 0, at::zeros_like(since_fired), since_fired + N);
  since_fired.copy_(at::where(st.ok, tsf, since_fired));

  st.row_ptr = sel.row_ptr;
  st.latents = sel.lat32.to(at::kLong);
  st.values = sel.values;
  st.fire_count = fire_count;
  st.l0 = (sel.values > c.fire_threshold).sum().to(at::kFloat) / double(N);
  st.l1 = sel.values.abs().sum();
  return st;
}

}  // namespace cuda

// ---- device helpers ------------------------------------------------------------------------------------------

#ifdef MLXTERP_CUDA_EMULATE
DeviceInfo device_info(at::Device) { return {"cpu (CUDA emulation)", 0, 0}; }
void synchronize(at::Device) {}
void reset_peak_memory(at::Device) {}
int64_t peak_memory_bytes(at::Device) { return -1; }
int64_t allocated_memory_bytes(at::Device) { return -1; }
void empty_cache(at::Device) {}
#else
namespace {
// The caching allocator is set up lazily by the first CUDA allocation; its stats calls throw "Invalid
// device argument ...: did you call init?" before that, so touch the device once first.
c10::DeviceIndex index_of(at::Device device) {
  const c10::DeviceIndex index = device.has_index() ? device.index() : c10::cuda::current_device();
  static const bool initialised = [&] {
    (void)at::empty({1}, at::TensorOptions().device(at::Device(at::kCUDA, index)));
    return true;
  }();
  (void)initialised;
  return index;
}
}  // namespace

DeviceInfo device_info(at::Device device) {
  if (!device.is_cuda()) return {"cpu", 0, 0};
  c10::cuda::CUDAGuard guard(index_of(device));
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  return {prop->name, int64_t(prop->totalGlobalMem), prop->multiProcessorCount};
}

void synchronize(at::Device device) {
  if (!device.is_cuda()) return;
  c10::cuda::CUDAGuard guard(index_of(device));
  MLXTERP_CUDA_OK(cudaDeviceSynchronize());
}

void reset_peak_memory(at::Device device) {
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(index_of(device));
}

int64_t peak_memory_bytes(at::Device device) {
  if (!device.is_cuda()) return -1;
  auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index_of(device));
  return int64_t(stats.allocated_bytes[0].peak);  // [0] = all pools
}

int64_t allocated_memory_bytes(at::Device device) {
  if (!device.is_cuda()) return -1;
  auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index_of(device));
  return int64_t(stats.allocated_bytes[0].current);
}

void empty_cache(at::Device device) {
  if (!device.is_cuda()) return;
  (void)index_of(device);
  c10::cuda::CUDACachingAllocator::emptyCache();
}

#endif  // MLXTERP_CUDA_EMULATE

}  // namespace mlxterp::sae_kernels
