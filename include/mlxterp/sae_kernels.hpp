// mlxterp/sae_kernels.hpp — one training step of a TopK / BatchTopK SAE: fused CUDA kernels, and the plain
// libtorch reference they are tested against. The SAE trainer (sae_step.hpp: sae_train_step) reaches the
// kernels through mlxterp::cuda::sae_train_step_topk (src/cuda/sae_train_step_cuda.cpp), which maps its
// state onto the types below; use this header directly for benchmarks or your own loop.
//
//   using namespace mlxterp::sae_kernels;
//   Params p = Params::init(/*d_in=*/4096, /*d_sae=*/131072, at::kCUDA, /*seed=*/0);
//   AdamState opt = AdamState::zeros_like(p);
//   at::Tensor since_fired = at::zeros({131072}, at::dtype(at::kLong).device(at::kCUDA));
//   StepConfig cfg;  cfg.k = 128;  cfg.lr = 2e-4;
//   Stepper stepper;                                   // Backend::Auto: CUDA kernels when compiled in and usable
//   for (int64_t t = 1; ...; ++t) {
//     cfg.step = t;                                    // Adam step number (bias correction); cfg.lr may change
//     StepStats s = stepper.step(p, opt, since_fired, x, cfg);   // x: [n_tokens, d_in] float32 / bfloat16
//     if (t % 100 == 0) printf("mse %.4f\n", s.mse.item<float>()); // stats stay on the device: no sync per step
//   }
//
// The step (what both backends compute; x has N rows):
//   xc      = x - b_dec                                          [N, d_in]   (rounded to the compute dtype)
//   pre     = xc W_enc^T (compute dtype, fp32 accumulation, rounded) + b_enc (fp32)   [N, d_sae]
//   acts    = relu(pre); select k per row (TopK) or N*k in the batch (BatchTopK); ties go to the lower
//             latent index (TopK) / the earlier (token, latent) (BatchTopK); selections are sorted by latent
//   x_hat   = b_dec + sum over selections val * W_dec[latent]    [N, d_in]    (W_dec in the compute dtype)
//   e       = x_hat - x;  main = sum(e^2) / denom  with denom = N (LossNorm::SumPerToken: mean over tokens of
//             the squared error, the mlxterp trainer's "mse"), sum((x - mean_0 x)^2) (FVU) or N * d_in (MeanSquare)
//   AuxK    (auxk_coef > 0): dead = since_fired >= dead_tokens (before the step); per token the k_aux largest
//             relu(pre) among dead latents; e_hat = sum val * W_dec[latent] (no b_dec); r = x - x_hat (no
//             gradient); aux = mean_t |r - e_hat|^2 / mean_t |r - mean_0 r|^2 (0 if not finite, or if no
//             latent is dead); loss = main + auxk_coef * aux
//   grads   = the exact gradients of the loss (relu' = [val > 0]); only selected latents' rows of W_enc / W_dec
//             get non-zero gradients; b_dec gets both its decoder and its encoder (-xc) terms
//   then: W_dec grad -= (g . w) w / max(|w|, 1e-12)^2 per row (remove_parallel_grad); grad_norm = the global
//   norm of all four gradients; clipping (max_grad_norm > 0: g *= min(1, max / (norm + 1e-6))); AdamW
//   (torch's formulas; weight decay on W_enc and W_dec only) on every row, skipped entirely unless the loss
//   is finite, `allow_update` (if given) is true and, when clipping or finite_grad_gate, the norm is finite;
//   W_dec rows
//   renormalised (normalize_decoder: w / max(|w|, 1e-12)); and, if that update happened and the norm is
//   finite (stats.ok), the dead counters: since_fired[f] = 0 if latent f fired (val > fire_threshold) on a
//   token, else += N.
//
// Memory (CUDA, TopK): the fp32 weights and Adam state, bf16 copies of W_enc and W_dec (kept by the
// Stepper), the encoder output for at most ~128 MB of rows at a time, and O(N * (d_in + k + k_aux)) scratch.
// BatchTopK needs the whole [N, d_sae] encoder output (its threshold is global).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>

namespace mlxterp::sae_kernels {

// The SAE's trainable tensors, float32, updated in place. Rows are latents.
struct Params {
  at::Tensor W_enc;  // [d_sae, d_in]
  at::Tensor b_enc;  // [d_sae]
  at::Tensor W_dec;  // [d_sae, d_in]  unit rows
  at::Tensor b_dec;  // [d_in]
  int64_t d_in() const { return W_enc.size(1); }
  int64_t d_sae() const { return W_enc.size(0); }
  // Decoder rows uniform on the sphere, W_enc = W_dec (tied init, as sparsify), biases 0.
  static Params init(int64_t d_in, int64_t d_sae, at::Device device, uint64_t seed);
  Params clone() const;
};

// Adam moments, one pair per parameter (same shapes). The bias moments are float32; the four weight-matrix
// moments (W_enc_m, W_enc_v, W_dec_m, W_dec_v) are all float32 (exact torch AdamW) or all bfloat16: then each
// step computes the moments in float32 and stores them stochastically rounded (moment_bits below), which halves
// the optimizer's memory and its share of the step's DRAM traffic (26 -> 18 bytes per parameter per step).
struct AdamState {
  at::Tensor W_enc_m, W_enc_v, b_enc_m, b_enc_v, W_dec_m, W_dec_v, b_dec_m, b_dec_v;
  // moment_dtype: at::kFloat or at::kBFloat16 (the weight matrices' moments only).
  static AdamState zeros_like(const Params& p, at::ScalarType moment_dtype = at::kFloat);
  AdamState clone() const;
  at::ScalarType moment_dtype() const { return W_enc_m.scalar_type(); }
};

// ---- bfloat16 Adam moments: stochastic rounding ---------------------------------------------------------
// A moment rounded to nearest in bfloat16 stops moving once an update is below half its last place: with
// beta2 = 0.999, v changes by 0.1% per step, under bfloat16's 0.4% spacing. Stochastic rounding rounds up with
// probability (discarded fraction), so E[stored] = value and the moments track their float32 counterparts in
// expectation. The random bits are a counter-based hash, the same on every backend, so the CUDA kernels and
// the reference store identical moments from identical float32 values:
//   seed   = fmix32(uint32(step) * 0x9E3779B9 + uint32(matrix) * 0x632BE5AB + 0x2545F491)  (matrix 0 W_enc, 1 W_dec)
//   h[i]   = fmix32((uint32(i) * 0x9E3779B9) ^ (seed + uint32(i >> 32) * 0x85EBCA77))  (i: flat element index)
//   m uses the low 16 bits of h[i], v the high 16; bf16 bits = (float32 bits + r) >> 16 (NaN stays NaN)
// fmix32 is MurmurHash3's finaliser; all arithmetic is modulo 2^32.
uint32_t moment_seed(int64_t step, int matrix);
// h[i] for flat indices `index` (int64, any shape) -> int64 tensor of the same shape, values in [0, 2^32).
at::Tensor moment_hash(const at::Tensor& index, uint32_t seed);
// h[i] for i = 0 .. numel-1 (on `device`): the bits for a whole moment tensor.
at::Tensor moment_hash(int64_t numel, uint32_t seed, at::Device device);
// float32 x -> bfloat16 (same shape), rounded with r = (high ? h >> 16 : h & 0xffff) from hash (moment_hash).
at::Tensor round_bf16_stochastic(const at::Tensor& x, const at::Tensor& hash, bool high);
// A weight matrix's float32 moments of Adam step `step` -> the bf16 moments every backend stores
// (matrix 0 W_enc, 1 W_dec): m with the hash's low half, v with its high half.
std::pair<at::Tensor, at::Tensor> round_moments_bf16(const at::Tensor& m32, const at::Tensor& v32, int64_t step,
                                                     int matrix);

enum class Selection { TopK, BatchTopK };
enum class LossNorm { FVU, MeanSquare, SumPerToken };

struct StepConfig {
  int64_t k = 32;  // latents per token (TopK) / mean latents per token (BatchTopK)
  Selection selection = Selection::TopK;
  LossNorm loss_norm = LossNorm::SumPerToken;
  at::ScalarType compute_dtype = at::kBFloat16;  // encoder GEMM / decoder weights; kFloat for full precision
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;    // AdamW's decoupled decay, on W_enc and W_dec (not the biases)
  int64_t step = 1;             // Adam step t >= 1 (bias corrections 1 - beta^t)
  double max_grad_norm = 0.0;   // > 0: clip the global norm of all gradients first
  // Skip the update also when the gradient norm is not finite (always so when clipping). The SAE trainer's
  // rule; without clipping it costs the CUDA step a second pass over the latents (norm, then update).
  bool finite_grad_gate = false;
  bool remove_parallel_grad = true;
  bool normalize_decoder = true;
  double fire_threshold = 0.0;  // a latent fires on a token when its activation is > this
  double auxk_coef = 0.0;       // AuxK loss weight (0 = off)
  int64_t k_aux = 0;            // AuxK latents per token
  int64_t dead_tokens = 0;      // a latent is dead once it has not fired for this many tokens
  at::Tensor allow_update;      // optional [] bool on the device: false = compute everything, change nothing
  // CUDA step, AuxK: up to this many dead latents get their AuxK terms from dense GEMMs over the dead latents
  // (the others, per (token, latent) pair). -1: sized from the dead count of an earlier step of the same
  // Stepper (read without waiting for the device; 0 until one has arrived); 0: per pair only.
  int64_t aux_dense_cap = -1;
};

// What a step reports. Every tensor stays on the device of x (reading one synchronises).
struct StepStats {
  at::Tensor loss;            // []  main + auxk_coef * aux
  at::Tensor sq_err;          // []  sum(e^2)
  at::Tensor mse;             // []  sum(e^2) / N
  at::Tensor fvu;             // []  sum(e^2) / sum((x - mean)^2)
  at::Tensor aux;             // []  AuxK loss before its coefficient (0 when off)
  at::Tensor l0;              // []  mean number of latents per token with val > fire_threshold
  at::Tensor l1;              // []  sum over tokens and selections of |val|
  at::Tensor grad_norm;       // []  global gradient norm before clipping
  at::Tensor clipped;         // []  1 if clipping scaled the gradients, else 0 (float32)
  at::Tensor ok;              // []  bool: the update was applied and the norm is finite
  at::Tensor kept_min;        // []  smallest selected activation > 0 (inf if none): BatchTopK's threshold
  at::Tensor residual;        // [N, d_in] float32: x_hat - x
  at::Tensor row_ptr;         // [N + 1] int64: token n's selections are [row_ptr[n], row_ptr[n+1])
  at::Tensor latents;         // [N * k] int64, sorted by latent within each token
  at::Tensor values;          // [N * k] float32 (relu'd activations; 0 where fewer than k were positive)
  at::Tensor fire_count;      // [d_sae] int32: tokens of this batch on which each latent fired
};

enum class Backend { Auto, Reference, Cuda };

// Whether the CUDA kernels were compiled in (CMake -DMLXTERP_CUDA=ON) and a GPU is visible.
bool cuda_kernels_available();
// Why `step` with Backend::Auto would not use the CUDA kernels for these inputs ("" if it would).
std::string cuda_unsupported_reason(const Params& p, const at::Tensor& x, const StepConfig& cfg);

// The reference step: plain libtorch ops, any device and dtype. Updates p, opt, since_fired in place.
StepStats reference_step(Params& p, AdamState& opt, at::Tensor& since_fired, const at::Tensor& x,
                         const StepConfig& cfg);

// Holds what persists between CUDA steps: bf16 copies of W_enc / W_dec, refreshed by the step itself. A
// change to p made outside `step` through libtorch ops (loading, resampling latents, ...) bumps the tensors'
// version counters and is noticed; after writing through raw pointers, call invalidate().
// Carried by a Stepper from step to step: the dead-latent count of an earlier step, copied to pinned host
// memory without waiting (StepConfig::aux_dense_cap = -1 sizes the dense AuxK buffers from it).
struct AuxDenseHint {
  at::Tensor host;    // [1] int64 (pinned on CUDA); -1 while a copy is in flight
  bool in_flight = false;
  int64_t dead = -1;  // the last count that arrived (-1: none yet)
};

class Stepper {
 public:
  explicit Stepper(Backend backend = Backend::Auto) : backend_(backend) {}
  StepStats step(Params& p, AdamState& opt, at::Tensor& since_fired, const at::Tensor& x, const StepConfig& cfg);
  void invalidate() { shadows_valid_ = false; }
  // The backend the last step ran on (Reference or Cuda).
  Backend last_backend() const { return last_; }
  // bf16 copies (CUDA backend); undefined before the first CUDA step.
  const at::Tensor& W_enc_bf16() const { return W_enc_bf16_; }
  const at::Tensor& W_dec_bf16() const { return W_dec_bf16_; }

 private:
  Backend backend_, last_ = Backend::Reference;
  at::Tensor W_enc_bf16_, W_dec_bf16_;
  bool shadows_valid_ = false;
  const void* seen_ptr_[2] = {nullptr, nullptr};  // W_enc, W_dec the copies were made of
  int64_t seen_version_[2] = {-1, -1};
  AuxDenseHint aux_hint_;
};

// ---- the pieces, each with a reference (used by the tests; the CUDA versions need CUDA tensors) -----

// Gradients of the loss (before parallel-gradient removal and clipping).
struct Grads {
  at::Tensor W_enc, b_enc, W_dec, b_dec;
};

namespace ref {
// The forward pass and the exact gradients; *stats (if given) gets the step's statistics (all but grad_norm,
// clipped, ok). `dead` [d_sae] bool: AuxK's dead latents (undefined: AuxK off).
Grads gradients(const Params& p, const at::Tensor& x, const StepConfig& cfg, const at::Tensor& dead = {},
                StepStats* stats = nullptr);
// Top-k of relu(pre + b_enc) per row; ties to the lower latent; (latents, values) sorted by latent.
//   pre [N, F] any float dtype, b_enc [F] float32 -> latents [N, k] int64, values [N, k] float32
//   mask [F] bool (optional): latents outside it count as 0 (AuxK's dead latents)
std::pair<at::Tensor, at::Tensor> topk_rows(const at::Tensor& pre, const at::Tensor& b_enc, int64_t k,
                                            const at::Tensor& mask = {});
// BatchTopK: the N*k largest of relu(pre + b_enc) over the whole batch; ties to the earlier (row, latent).
//   -> row_ptr [N + 1] int64, latents [N*k] int64, values [N*k] float32 (CSR by row, sorted by latent)
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_topk(const at::Tensor& pre, const at::Tensor& b_enc, int64_t k);
// e = b_dec + sum_j val_j * W[latent_j] - x per row (float32).  W [F, d] any dtype, x [N, d].
at::Tensor sparse_decode_residual(const at::Tensor& row_ptr, const at::Tensor& latents, const at::Tensor& values,
                                  const at::Tensor& W, const at::Tensor& b_dec, const at::Tensor& x);
}  // namespace ref

#ifdef MLXTERP_HAVE_CUDA_KERNELS
namespace cuda {
// Same contracts as ref:: (int64 outputs), computed by the CUDA kernels. pre must be bfloat16.
// topk_rows: guess (optional 0-dim float32 on the device), a value a little below the rows' k-th largest,
// lets a row be selected in one read of pre instead of two; the result does not depend on it. *kth (if
// given) gets each row's k-th largest relu(pre + b_enc) [N] float32 (0 for a row with fewer positive).
std::pair<at::Tensor, at::Tensor> topk_rows(const at::Tensor& pre, const at::Tensor& b_enc, int64_t k,
                                            const at::Tensor& mask = {}, const at::Tensor& guess = {},
                                            at::Tensor* kth = nullptr);
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_topk(const at::Tensor& pre, const at::Tensor& b_enc, int64_t k);
// W must be bfloat16 here.
at::Tensor sparse_decode_residual(const at::Tensor& row_ptr, const at::Tensor& latents, const at::Tensor& values,
                                  const at::Tensor& W, const at::Tensor& b_dec, const at::Tensor& x);
// The whole step on the CUDA kernels; W_enc_bf16 / W_dec_bf16 must equal p's weights rounded to bf16
// on entry and are kept so.
StepStats step(Params& p, AdamState& opt, at::Tensor& since_fired, const at::Tensor& x, const StepConfig& cfg,
               at::Tensor& W_enc_bf16, at::Tensor& W_dec_bf16, AuxDenseHint* aux_hint = nullptr);
}  // namespace cuda
#endif

// ---- device helpers for benchmarks (no CUDA headers needed by the caller) -----------------------------

struct DeviceInfo {
  std::string name;           // "NVIDIA H100 80GB HBM3", or "cpu"
  int64_t total_memory = 0;   // bytes (0 on CPU)
  int multiprocessors = 0;
};
DeviceInfo device_info(at::Device device);
void synchronize(at::Device device);                  // no-op on CPU
void reset_peak_memory(at::Device device);            // no-op on CPU
int64_t peak_memory_bytes(at::Device device);         // caching allocator's peak allocated bytes; -1 on CPU
int64_t allocated_memory_bytes(at::Device device);    // currently allocated; -1 on CPU
void empty_cache(at::Device device);                  // hands the allocator's unused blocks back (no-op on CPU)

}  // namespace mlxterp::sae_kernels
