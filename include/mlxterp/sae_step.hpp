// mlxterp/sae_step.hpp — one SAE training step as a replaceable function, and the state it updates.
//
//   mlxterp::SaeTrainState st = mlxterp::sae_init_state(cfg, d_in, first_buffer, device);
//   mlxterp::SaeStepArgs a = mlxterp::sae_step_args(cfg, d_in, step, total_steps);   // lr, k, λ for `step`
//   mlxterp::sae_train_step(st, x, a);      // x [N, d_in] float32, already standardised, on st's device
//   auto m = mlxterp::sae_read_metrics(st);  // the only host synchronisation: averages since the last read
//
// Everything the optimiser owns is a plain tensor in SaeTrainState (weights, Adam moments, counters), so a
// checkpoint is just these tensors and resuming is exact. sae_train_step never synchronises with the host:
// the dead-latent counters, the non-finite flag and the metric sums stay on the device.
//
// ---- contract for a fused (CUDA) implementation ----
// When MLXTERP_HAVE_CUDA_KERNELS is defined, sae_train_step first calls
//     bool cuda::sae_train_step_topk(SaeTrainState&, const at::Tensor& x, const SaeStepArgs&)
// for CUDA tensors; it returns false for configurations it does not handle (then the libtorch reference
// sae_train_step_reference runs). To be interchangeable it must, for arch TopK / BatchTopK:
//  1. pre = (x - b_dec) @ W_encᵀ + b_enc (compute dtype a.compute_dtype, accumulate fp32) [N, F];
//     TopK: keep each row's top a.k values; BatchTopK: the top a.k·N of ReLU(pre) over the whole batch;
//     z = ReLU(kept) ; x̂ = z @ W_dec + b_dec (sparse: gather the kept rows of W_dec).
//  2. loss = mse + a.auxk_coef · aux · any_dead, mse = mean_t Σ_d (x̂ - x)²;
//     aux (AuxK): dead = tokens_since_fired >= a.dead_window_tokens; top a.k_aux of where(dead, ReLU(pre), -inf)
//     per row (entries that are not dead contribute nothing); ê = z_aux @ W_dec (no b_dec); e = (x - x̂) detached;
//     aux = mean_t ‖e - ê‖² / mean_t ‖e - ē‖² (ē the batch mean of e), NaN -> 0.
//  3. grads of loss w.r.t. W_enc, b_enc, W_dec, b_dec (tied: W_dec is W_enc, grads summed);
//     if a.decoder_unit_norm: g_W_dec -= (g_W_dec · w) w per row (w = the unit decoder row);
//     norm = sqrt(Σ over all grads of g²); if a.clip > 0: g *= min(1, a.clip / (norm + 1e-6)).
//  4. ok = isfinite(loss) && isfinite(norm) && bad_steps == 0. Only if ok (decided on the device):
//     AdamW with bias correction, t = st.adam_step + 1 (the host counter; the caller increments it):
//       m = β1 m + (1-β1) g ; v = β2 v + (1-β2) g² ; p -= lr·wd·p (W_enc, W_dec only) ;
//       p -= lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + eps)
//     then (decoder_unit_norm) W_dec rows renormalised to unit norm; otherwise nothing changes and
//     bad_steps += 1. bfloat16 moments of W_enc / W_dec (SAEConfig::optimizer_state_dtype): m, v are upcast,
//     the formulas above run in float32 and use the unrounded m, v for p; then m, v are stored rounded by
//     sae_kernels::round_bf16_stochastic with sae_kernels::moment_hash(numel, moment_seed(t, 0 W_enc / 1 W_dec)).
//  5. counters (only if ok): fired_i = any_t z[t,i] > a.fire_threshold;
//     tokens_since_fired = fired ? 0 : tokens_since_fired + N ; fire_count += #tokens where z > fire_threshold ;
//     window_tokens += N. BatchTopK: θ_b = min of the kept values > 0 ; threshold_ema = (ema < 0) ? θ_b :
//     a.threshold_decay·ema + (1-a.threshold_decay)·θ_b (unchanged when no kept value is > 0).
//  6. metric_sums (float64, always, even when !ok) += the per-step values in SaeMetric order below.
// The test SaeStep.CudaMatchesReference (tests/unit/test_sae_step.cpp) runs both on the same inputs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>

#include "mlxterp/sae.hpp"
#include "mlxterp/sae_config.hpp"

namespace mlxterp {

// Slots of SaeTrainState::metric_sums (float64 [kSaeMetricCount]); sums since the last sae_read_metrics.
enum SaeMetric : int64_t {
  kMetSteps = 0,     // steps
  kMetTokens,        // tokens
  kMetLoss,          // Σ_steps total loss
  kMetMse,           // Σ_steps mean_t Σ_d (x̂ - x)²  (standardised space)
  kMetSseRaw,        // Σ_tokens ‖x - x̂‖²  in raw activation space (uses SaeStepArgs::metric_scale)
  kMetSstRaw,        // Σ_tokens ‖x - x̄_batch‖² in raw space (FVU = SseRaw / SstRaw)
  kMetL0,            // Σ_tokens #{i : z_i > fire_threshold}
  kMetL1,            // Σ_tokens Σ_i |z_i|
  kMetAux,           // Σ_steps AuxK loss (before its coefficient)
  kMetGhost,         // Σ_steps ghost-grad loss
  kMetSparsity,      // Σ_steps sparsity loss (λ·L1 or λ·L0, after the coefficient)
  kMetGradNorm,      // Σ_steps gradient norm (before clipping)
  kMetCos,           // Σ_tokens cos(x, x̂) in raw space
  kMetClipped,       // steps whose gradient was clipped
  kSaeMetricCount
};

// Everything that changes during training, on the training device.
struct SaeTrainState {
  SaeArch arch = SaeArch::TopK;
  int64_t d_in = 0, d_sae = 0;
  bool tied = false;
  SaeParams params;              // float32 masters (threshold: jumprelu only; batchtopk keeps threshold_ema)
  SaeParams adam_m, adam_v;      // Adam moments, same shapes (threshold only for jumprelu); float32, except that
                                 // W_enc's and W_dec's may all be bfloat16 (SAEConfig::optimizer_state_dtype)
  int64_t adam_step = 0;         // updates applied so far (host; bias correction uses adam_step + 1)
  at::Tensor tokens_since_fired; // [d_sae] int64
  at::Tensor fire_count;         // [d_sae] int64 firings in the current density window
  at::Tensor window_tokens;      // [] int64 tokens in the current density window
  at::Tensor threshold_ema;      // [] float64 batchtopk running threshold (< 0: none yet)
  at::Tensor calib_hist;         // [kSaeHistBins + 2] float64 batchtopk calibration histogram (see below)
  at::Tensor bad_steps;          // [] int64 steps whose loss or gradient was not finite (update skipped)
  at::Tensor metric_sums;        // [kSaeMetricCount] float64
  at::Tensor input_mean, input_std;  // [d_in] standardisation (undefined when off)

  // All tensors by name (for checkpoints) and back. Names: "params.W_enc", "adam_m.W_enc", ... Moments keep
  // their dtype (from_map checks it: float32, or bfloat16 for all four weight-matrix moments).
  TensorMap to_map() const;
  void from_map(const TensorMap& m, at::Device device);
  // The dtype of the weight matrices' moments (kFloat or kBFloat16).
  at::ScalarType moment_dtype() const { return adam_m.W_enc.scalar_type(); }
  // Converts the weight matrices' moments to `dtype` (to float32 exactly; to bfloat16 rounded to nearest).
  // Returns whether they changed.
  bool set_moment_dtype(at::ScalarType dtype);
};

// SAEConfig::optimizer_state_dtype as a dtype: kFloat or kBFloat16.
at::ScalarType sae_moment_dtype(const SAEConfig& cfg);

// Per-step inputs (the schedule's values for this step and the fixed hyper-parameters).
struct SaeStepArgs {
  SaeArch arch = SaeArch::TopK;
  int64_t k = 0;                  // current k (after annealing)
  int64_t k_aux = 0;
  double auxk_coef = 0.0;         // AuxK weight in the loss; 0 = no AuxK (sae_step_args: SAEConfig::auxk_coef × d_in
                                  // under normalize_input, i.e. the weight for unit-mean-squared-norm inputs)
  int64_t dead_window_tokens = 0;
  double lr = 0.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  double clip = 0.0;              // 0 = no clipping
  double sparsity_coef = 0.0;     // λ after warm-up (relu: L1, jumprelu: L0)
  double jumprelu_bandwidth = 0.001;
  double fire_threshold = 0.0;
  double threshold_decay = 0.99;
  bool decoder_unit_norm = true;
  bool ghost_grads = false;
  at::ScalarType compute_dtype = at::kFloat;
  at::Tensor metric_scale;        // [d_in] σ: raw-space metrics use x·σ + μ (undefined: x is raw)
  at::Tensor metric_mean;         // [d_in] μ
};

// The schedule: LR (warm-up, then cosine/linear/constant decay), k annealing, sparsity warm-up.
double sae_learning_rate(const SAEConfig& cfg, int64_t step, int64_t total_steps);
SaeStepArgs sae_step_args(const SAEConfig& cfg, int64_t d_in, int64_t step, int64_t total_steps);

// Fresh state: W_dec rows random unit vectors (seeded, generated on the CPU so every device starts from
// the same numbers), W_enc = W_dec, b_enc = 0, b_dec from `first_buffer` (raw rows [n, d_in]: geometric
// median, mean or zeros of the standardised rows), μ/σ from `first_buffer` when normalize_input.
SaeTrainState sae_init_state(const SAEConfig& cfg, int64_t d_in, const at::Tensor& first_buffer, at::Device device);

// One step (dispatches to the CUDA kernels when available and applicable, else the reference).
void sae_train_step(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a);
// The libtorch reference implementation (autograd for the dense parts, gathers for the sparse ones).
void sae_train_step_reference(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a);

#ifdef MLXTERP_HAVE_CUDA_KERNELS
namespace cuda {
// Implemented by src/cuda/ (the fused TopK/BatchTopK step). Returns false if it does not handle `a`.
bool sae_train_step_topk(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a);
}  // namespace cuda
#endif

// Loss and gradients without an update (tests compare them with PyTorch and finite differences).
struct SaeLossGrads {
  double loss = 0, mse = 0, aux = 0, ghost = 0, sparsity = 0;
  SaeParams grads;   // same fields as the params (threshold: jumprelu only)
  at::Tensor z;      // [N, d_sae] latents of the step
};
// `dead` [d_sae] bool: the dead mask used by AuxK / ghost grads (undefined = none dead).
// TopK / BatchTopK (without ghost grads) take the hand-written sparse backward that the training step uses;
// sae_loss_and_grads_autograd is the same loss through libtorch autograd (every architecture), for tests.
SaeLossGrads sae_loss_and_grads(const SaeParams& p, const at::Tensor& x, const SaeStepArgs& a, bool tied,
                                const at::Tensor& dead = {});
SaeLossGrads sae_loss_and_grads_autograd(const SaeParams& p, const at::Tensor& x, const SaeStepArgs& a, bool tied,
                                         const at::Tensor& dead = {});

// ---- things the trainer does between steps ----
// Adds this batch's positive pre-activations to st.calib_hist (log-spaced bins, see kSaeHist*).
void sae_threshold_histogram_update(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a);
// The threshold θ with mean_t #{i : pre_ti > θ} = k over the histogrammed tokens (n_tokens of them).
double sae_threshold_from_histogram(const at::Tensor& hist, int64_t k, int64_t n_tokens);
constexpr int64_t kSaeHistBins = 8192;
constexpr double kSaeHistLogMin = -18.0, kSaeHistLogMax = 12.0;  // natural-log range of the bins

// Re-initialises dead latents from badly reconstructed inputs of `x` (Anthropic's resampling as in
// dictionary_learning: encoder row = 0.2·mean live encoder norm·unit(x_i - b_dec), decoder row = unit(x_i - b_dec),
// b_enc = 0, Adam moments zeroed, counters reset). Returns the number resampled. `seed` makes it repeatable.
int64_t sae_resample_dead(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a, uint64_t seed);

// Averages of the metric sums since the last call (resets them): loss, mse, fvu, l0, l1, aux, ghost,
// sparsity, grad_norm, cos, clipped_frac, plus dead_frac (windowed), bad_steps, threshold (batchtopk EMA).
std::map<std::string, double> sae_read_metrics(SaeTrainState& st, const SaeStepArgs& a);
// Fraction of latents that fired on more than `density` of the tokens in the current density window, and
// the number that fired never; resets the window.
struct SaeDensity {
  double dense_frac = 0, never_frac = 0;
  int64_t window_tokens = 0;
};
SaeDensity sae_take_density(SaeTrainState& st, double density = 0.1);

// The SAE that `st` describes (params cloned to the CPU; batchtopk gets `threshold` broadcast to [d_sae]).
SAE sae_from_state(const SaeTrainState& st, int64_t k, double batchtopk_threshold = -1.0);

}  // namespace mlxterp
