// The SAE trainer's hook into the CUDA kernels: mlxterp::cuda::sae_train_step_topk (declared in
// mlxterp/sae_step.hpp, the trainer's contract) maps SaeTrainState / SaeStepArgs onto sae_kernels' Params /
// StepConfig, runs the fused step, then does the trainer's bookkeeping (bad steps, density window, BatchTopK
// threshold EMA, metric sums) with device-side tensor ops: no host synchronisation.
//
// Compiled in the CUDA build only, and only does something once the trainer's header is in the tree.
#if __has_include("mlxterp/sae_step.hpp")

#include <ATen/ATen.h>

#include <memory>
#include <mutex>
#include <vector>

#include "mlxterp/sae_kernels.hpp"
#include "mlxterp/torch_compat.hpp"  // at::NoGradGuard on libtorch 2.x
#include "mlxterp/sae_step.hpp"

namespace mlxterp::cuda {

namespace {

namespace sk = mlxterp::sae_kernels;

// One Stepper (it owns the bf16 weight copies) per live SAE, keyed by its W_enc; entries whose tensor has
// been freed are dropped.
struct CachedStepper {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> owner;
  const c10::TensorImpl* impl;
  std::unique_ptr<sk::Stepper> stepper;
};

sk::Stepper& stepper_for(const at::Tensor& W_enc) {
  static std::mutex mu;
  // Never destroyed: a Stepper holds CUDA memory (the bf16 copies, a pinned count for AuxK), and freeing it
  // from a static destructor, after the CUDA runtime has shut down, aborts the process at exit.
  static auto& cache = *new std::vector<CachedStepper>();
  std::lock_guard<std::mutex> lock(mu);
  std::vector<CachedStepper> live;
  for (auto& c : cache)
    if (!c.owner.expired()) live.push_back(std::move(c));
  cache = std::move(live);
  for (auto& c : cache)
    if (c.impl == W_enc.unsafeGetTensorImpl()) return *c.stepper;
  cache.push_back({c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(W_enc.getIntrusivePtr()),
                   W_enc.unsafeGetTensorImpl(), std::make_unique<sk::Stepper>(sk::Backend::Cuda)});
  return *cache.back().stepper;
}

}  // namespace

bool sae_train_step_topk(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a) {
  if (a.arch != SaeArch::TopK && a.arch != SaeArch::BatchTopK) return false;
  // Not fused: tied weights, ghost grads, float32 / float16 compute (the kernels are bf16).
  if (st.tied || a.ghost_grads || a.compute_dtype != at::kBFloat16) return false;
  if (a.k < 1 || a.k > st.d_sae || x.dim() != 2 || x.size(1) != st.d_in || x.size(0) < 1) return false;
  sk::Params p{st.params.W_enc, st.params.b_enc, st.params.W_dec, st.params.b_dec};
  sk::AdamState s{st.adam_m.W_enc, st.adam_v.W_enc, st.adam_m.b_enc, st.adam_v.b_enc,
                  st.adam_m.W_dec, st.adam_v.W_dec, st.adam_m.b_dec, st.adam_v.b_dec};
  sk::StepConfig c;
  c.k = a.k;
  c.selection = a.arch == SaeArch::TopK ? sk::Selection::TopK : sk::Selection::BatchTopK;
  c.loss_norm = sk::LossNorm::SumPerToken;  // mse = mean over tokens of sum over d
  c.compute_dtype = at::kBFloat16;
  c.lr = a.lr;
  c.beta1 = a.beta1;
  c.beta2 = a.beta2;
  c.eps = a.eps;
  c.weight_decay = a.weight_decay;
  c.step = st.adam_step + 1;
  c.max_grad_norm = a.clip;
  c.finite_grad_gate = true;  // the trainer's ok = finite loss && finite norm && no earlier bad step
  c.remove_parallel_grad = a.decoder_unit_norm;
  c.normalize_decoder = a.decoder_unit_norm;
  c.fire_threshold = a.fire_threshold;
  c.auxk_coef = a.auxk_coef;
  c.k_aux = a.k_aux;
  c.dead_tokens = a.dead_window_tokens;
  c.allow_update = st.bad_steps == 0;
#ifndef MLXTERP_CUDA_EMULATE
  if (!x.is_cuda()) return false;
#endif
  if (!sk::cuda_unsupported_reason(p, x, c).empty()) return false;
  for (const at::Tensor* t : {&s.W_enc_m, &s.W_enc_v, &s.W_dec_m, &s.W_dec_v, &s.b_enc_m, &s.b_enc_v, &s.b_dec_m,
                              &s.b_dec_v, &st.tokens_since_fired})
    if (!t->is_contiguous()) return false;

  at::NoGradGuard no_grad;
  const int64_t N = x.size(0);
  // Updates params, Adam moments and tokens_since_fired (the latter only where r.ok).
  sk::StepStats r = stepper_for(st.params.W_enc).step(p, s, st.tokens_since_fired, x, c);

  at::Tensor ok = r.ok, okl = ok.to(at::kLong);
  st.bad_steps.add_((~ok).to(at::kLong));
  st.fire_count.add_(r.fire_count.to(at::kLong) * okl);
  st.window_tokens.add_(okl * N);
  if (a.arch == SaeArch::BatchTopK) {
    at::Tensor th_b = r.kept_min.to(at::kDouble);
    at::Tensor ema = st.threshold_ema;
    at::Tensor upd = at::where(ema < 0, th_b, ema * a.threshold_decay + th_b * (1 - a.threshold_decay));
    st.threshold_ema.copy_(at::where(ok.logical_and(at::isfinite(th_b)), upd, ema));
  }

  // Metrics, raw activation space where it matters (x * sigma + mu).
  at::Tensor xf = x.to(at::kFloat), xh = xf + r.residual;
  at::Tensor xr = xf, xhr = xh;
  if (a.metric_scale.defined()) {
    xr = xf * a.metric_scale + a.metric_mean;
    xhr = xh * a.metric_scale + a.metric_mean;
  }
  at::Tensor sse = (xr - xhr).pow(2).sum();
  at::Tensor sst = (xr - xr.mean(0, true)).pow(2).sum();
  at::Tensor cos = (xr * xhr).sum(1) / (xr.norm(2, {1}) * xhr.norm(2, {1})).clamp_min(1e-12);
  auto d = [](const at::Tensor& t) { return t.detach().to(at::kDouble).reshape({}); };
  at::Tensor zero = at::zeros({}, xf.options());
  at::Tensor row = at::stack({d(at::ones({}, xf.options())), d(at::full({}, double(N), xf.options())), d(r.loss),
                              d(r.mse), d(sse), d(sst), d(r.fire_count.sum()), d(r.l1), d(r.aux), d(zero), d(zero),
                              d(r.grad_norm), d(cos.sum()), d(r.clipped)});
  st.metric_sums.add_(row);
  return true;
}

}  // namespace mlxterp::cuda

#endif  // __has_include("mlxterp/sae_step.hpp")
