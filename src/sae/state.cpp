// SAE training state: initialisation, schedule, metric read-out, threshold calibration, resampling.
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "mlxterp/error.hpp"
#include "mlxterp/sae_step.hpp"

namespace mlxterp {

namespace {

at::Generator cpu_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// Weiszfeld iterations (as dictionary_learning / OpenAI use for b_dec): the point minimising Σ‖x_i - y‖.
at::Tensor geometric_median(const at::Tensor& x, int iters = 100, double tol = 1e-5) {
  at::Tensor y = x.mean(0);
  for (int i = 0; i < iters; ++i) {
    at::Tensor w = 1.0 / (x - y).norm(2, 1).clamp_min(1e-8);  // [n]
    at::Tensor y_new = (w.unsqueeze(1) * x).sum(0) / w.sum();
    double moved = (y_new - y).norm().item<double>();
    y = y_new;
    if (moved < tol * std::max(1.0, y.norm().item<double>())) break;
  }
  return y;
}

// Adam moments: the weight matrices' in `matrix_dtype`, the rest like the parameters (float32).
SaeParams zeros_like_params(const SaeParams& p, bool tied, at::ScalarType matrix_dtype) {
  SaeParams z;
  z.W_enc = at::zeros_like(p.W_enc, p.W_enc.options().dtype(matrix_dtype));
  z.b_enc = at::zeros_like(p.b_enc);
  z.W_dec = tied ? at::Tensor() : at::zeros_like(p.W_dec, p.W_dec.options().dtype(matrix_dtype));
  z.b_dec = at::zeros_like(p.b_dec);
  if (p.threshold.defined()) z.threshold = at::zeros_like(p.threshold);
  return z;
}

}  // namespace

double sae_learning_rate(const SAEConfig& c, int64_t step, int64_t total_steps) {
  const double lr = c.learning_rate;
  const int64_t W = c.warmup_steps;
  if (step < W) return lr * double(step + 1) / double(W);
  if (c.lr_scheduler == "constant") return lr;
  const int64_t end = c.lr_decay_steps ? *c.lr_decay_steps : total_steps;
  if (end <= W) return lr;
  const double p = std::clamp(double(step - W) / double(end - W), 0.0, 1.0);
  const double lo = lr * c.lr_min_ratio;
  if (c.lr_scheduler == "linear") return lo + (lr - lo) * (1.0 - p);
  return lo + (lr - lo) * 0.5 * (1.0 + std::cos(M_PI * p));
}

SaeStepArgs sae_step_args(const SAEConfig& c, int64_t d_in, int64_t step, int64_t total_steps) {
  SaeStepArgs a;
  a.arch = parse_sae_arch(c.sae_type);
  const int64_t F = c.d_sae(d_in);
  a.k = std::min(c.k, F);
  if (c.k_anneal_steps > 0 && step < c.k_anneal_steps) {
    const int64_t k0 = std::max(a.k, std::min(F, d_in));
    a.k = int64_t(std::llround(double(k0) + double(a.k - k0) * double(step) / double(c.k_anneal_steps)));
  }
  a.k_aux = c.k_aux_for(d_in);
  // AuxK's term is a ratio (residual MSE / residual variance: OpenAI, dictionary_learning) while the main MSE
  // scales with the inputs' squared norm. auxk_coef = 1/32 is dictionary_learning's weight for inputs
  // normalised to E‖x‖² = 1; normalize_input trains on E‖x‖² = d_in, where the MSE is d_in times larger, so
  // the same objective (times d_in) needs the AuxK term times d_in. Without it AuxK was d_in (64 on
  // stories260K) times too weak: its loss stayed ~1.0 (nothing reconstructed) and dead latents stayed dead
  // (docs/sae-results.md). normalize_input=false: raw units, the weight as given.
  a.auxk_coef = c.auxk_coef * (c.normalize_input ? double(d_in) : 1.0);
  a.dead_window_tokens = c.dead_window_tokens();
  a.lr = sae_learning_rate(c, step, total_steps);
  a.beta1 = c.adam_beta1;
  a.beta2 = c.adam_beta2;
  a.eps = c.adam_eps;
  a.weight_decay = c.weight_decay;
  a.clip = c.gradient_clip ? *c.gradient_clip : 0.0;
  double warm = 1.0;
  if (c.sparsity_warm_up_steps && *c.sparsity_warm_up_steps > 0)
    warm = std::min(1.0, double(step + 1) / double(*c.sparsity_warm_up_steps));
  a.sparsity_coef = c.lambda_sparse * warm;
  a.jumprelu_bandwidth = c.jumprelu_bandwidth;
  a.fire_threshold = c.dead_neuron_threshold;
  a.threshold_decay = c.threshold_decay;
  a.decoder_unit_norm = c.decoder_unit_norm;
  a.ghost_grads = c.use_ghost_grads;
  a.compute_dtype = parse_dtype(c.dtype);
  return a;
}

SaeTrainState sae_init_state(const SAEConfig& c, int64_t d_in, const at::Tensor& first_buffer, at::Device device) {
  c.validate_for(d_in);
  MLXTERP_CHECK(first_buffer.dim() == 2 && first_buffer.size(1) == d_in && first_buffer.size(0) > 0,
                "SAE init: expected a first buffer of activations [n, ", d_in, "], got ", shape_str(first_buffer.sizes()));
  at::NoGradGuard ng;
  SaeTrainState st;
  st.arch = parse_sae_arch(c.sae_type);
  st.d_in = d_in;
  st.d_sae = c.d_sae(d_in);
  st.tied = c.tied_weights;
  const int64_t F = st.d_sae, D = d_in;
  auto f32 = at::TensorOptions().dtype(at::kFloat);

  // Decoder rows: random directions (CPU generator, so every device starts identically).
  at::Generator gen = cpu_generator(uint64_t(c.seed));
  at::Tensor W = at::randn({F, D}, gen, f32);
  W = W / W.norm(2, 1, true).clamp_min(1e-12);
  if (!c.decoder_unit_norm) W = W * 0.1;  // Anthropic April-2024 init when the norm is free
  st.params.W_dec = W.to(device);
  st.params.W_enc = st.tied ? st.params.W_dec : W.clone().to(device);
  if (st.tied) st.params.W_dec = st.params.W_enc;
  st.params.b_enc = at::zeros({F}, f32.device(device));

  at::Tensor buf = first_buffer.to(at::kFloat).to(device);
  at::Tensor xn = buf;
  if (c.normalize_input) {
    // One dataset-level scale s with E‖x/s‖² = d (Anthropic April 2024, SAELens "expected_average_only_in",
    // dictionary_learning's norm_factor up to √d): a scalar rescale leaves the minimiser of the raw-space MSE
    // unchanged, so the SAE optimises the metric it is judged by. A per-dimension standardisation (the earlier
    // default) re-weights the loss by 1/σ_j² per dimension and cost ~6-8% held-out FVU (docs/sae-results.md).
    // The mean is not subtracted (b_dec absorbs any offset). Stored as [d_in] vectors: the file format and
    // the export fold stay those of a per-dimension affine map.
    const double ms = buf.pow(2).sum(1).mean().item<double>() / double(D);
    const double s = std::sqrt(std::max(ms, 1e-24));
    st.input_mean = at::zeros({D}, buf.options());
    st.input_std = at::full({D}, s, buf.options());
    xn = buf / s;
  }
  if (c.b_dec_init == "mean") st.params.b_dec = xn.mean(0);
  else if (c.b_dec_init == "geometric_median") st.params.b_dec = geometric_median(xn.narrow(0, 0, std::min<int64_t>(xn.size(0), 32768)));
  else st.params.b_dec = at::zeros({D}, f32.device(device));
  st.params.b_dec = st.params.b_dec.contiguous();
  if (st.arch == SaeArch::JumpReLU) st.params.threshold = at::full({F}, c.jumprelu_init_threshold, f32.device(device));

  st.adam_m = zeros_like_params(st.params, st.tied, sae_moment_dtype(c));
  st.adam_v = zeros_like_params(st.params, st.tied, sae_moment_dtype(c));
  auto i64 = at::TensorOptions().dtype(at::kLong).device(device);
  auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  st.tokens_since_fired = at::zeros({F}, i64);
  st.fire_count = at::zeros({F}, i64);
  st.window_tokens = at::zeros({}, i64);
  st.threshold_ema = at::full({}, -1.0, f64);
  st.calib_hist = at::zeros({kSaeHistBins + 2}, f64);
  st.bad_steps = at::zeros({}, i64);
  st.metric_sums = at::zeros({kSaeMetricCount}, f64);
  return st;
}

TensorMap SaeTrainState::to_map() const {
  TensorMap m;
  auto put = [&](const std::string& prefix, const SaeParams& p) {
    for (const auto& [n, t] : p.named())
      if (!(tied && n == "W_dec")) m[prefix + n] = t;
  };
  put("params.", params);
  put("adam_m.", adam_m);
  put("adam_v.", adam_v);
  m["state.tokens_since_fired"] = tokens_since_fired;
  m["state.fire_count"] = fire_count;
  m["state.window_tokens"] = window_tokens;
  m["state.threshold_ema"] = threshold_ema;
  m["state.calib_hist"] = calib_hist;
  m["state.bad_steps"] = bad_steps;
  m["state.metric_sums"] = metric_sums;
  m["state.adam_step"] = at::full({}, adam_step, at::kLong);
  if (input_mean.defined()) {
    m["state.input_mean"] = input_mean;
    m["state.input_std"] = input_std;
  }
  return m;
}

void SaeTrainState::from_map(const TensorMap& m, at::Device device) {
  auto get = [&](const std::string& name) -> at::Tensor {
    auto it = m.find(name);
    MLXTERP_CHECK(it != m.end(), "checkpoint: tensor '", name, "' is missing (a checkpoint from another version?)");
    return it->second.clone().to(device);
  };
  auto get_opt = [&](const std::string& name) -> at::Tensor {
    return m.count(name) ? m.at(name).clone().to(device) : at::Tensor();
  };
  auto load = [&](const std::string& prefix, SaeParams& p) {
    p.W_enc = get(prefix + "W_enc");
    p.b_enc = get(prefix + "b_enc");
    p.W_dec = tied ? (prefix == "params." ? p.W_enc : at::Tensor()) : get(prefix + "W_dec");
    p.b_dec = get(prefix + "b_dec");
    p.threshold = get_opt(prefix + "threshold");
  };
  load("params.", params);
  load("adam_m.", adam_m);
  load("adam_v.", adam_v);
  tokens_since_fired = get("state.tokens_since_fired");
  fire_count = get("state.fire_count");
  window_tokens = get("state.window_tokens");
  threshold_ema = get("state.threshold_ema");
  calib_hist = get("state.calib_hist");
  bad_steps = get("state.bad_steps");
  metric_sums = get("state.metric_sums");
  adam_step = m.at("state.adam_step").item<int64_t>();
  input_mean = get_opt("state.input_mean");
  input_std = get_opt("state.input_std");
  MLXTERP_CHECK(params.W_enc.sizes() == at::IntArrayRef({d_sae, d_in}), "checkpoint: W_enc has shape ",
                shape_str(params.W_enc.sizes()), "; expected [", d_sae, ", ", d_in, "]");
  // Weight-matrix moments: all float32 or all bfloat16 (optimizer_state_dtype); everything else float32.
  const at::ScalarType mdt = moment_dtype();
  MLXTERP_CHECK(mdt == at::kFloat || mdt == at::kBFloat16, "checkpoint: tensor 'adam_m.W_enc' is ", dtype_str(mdt),
                "; expected f32 or bf16 (optimizer_state_dtype float32 or bfloat16)");
  const std::pair<const char*, const SaeParams*> groups[] = {
      {"params.", &params}, {"adam_m.", &adam_m}, {"adam_v.", &adam_v}};
  for (const auto& [prefix, p] : groups) {
    for (const auto& [n, t] : p->named()) {
      const bool matrix = p != &params && (n == "W_enc" || n == "W_dec");
      const at::ScalarType want = matrix ? mdt : at::kFloat;
      MLXTERP_CHECK(t.scalar_type() == want, "checkpoint: tensor '", prefix, n, "' is ", dtype_str(t.scalar_type()),
                    "; expected ", dtype_str(want),
                    matrix ? " like adam_m.W_enc (the weight matrices' Adam moments share one dtype)"
                           : " (master weights and the bias / threshold moments are float32)");
    }
  }
}

bool SaeTrainState::set_moment_dtype(at::ScalarType dtype) {
  MLXTERP_CHECK(dtype == at::kFloat || dtype == at::kBFloat16,
                "SaeTrainState::set_moment_dtype: the weight-matrix Adam moments are float32 or bfloat16; got ",
                dtype_str(dtype));
  if (moment_dtype() == dtype) return false;
  for (SaeParams* s : {&adam_m, &adam_v}) {
    s->W_enc = s->W_enc.to(dtype).contiguous();  // to bfloat16: round to nearest even
    if (s->W_dec.defined()) s->W_dec = s->W_dec.to(dtype).contiguous();
  }
  return true;
}

at::ScalarType sae_moment_dtype(const SAEConfig& c) {
  if (c.optimizer_state_dtype == "bfloat16") return at::kBFloat16;
  MLXTERP_CHECK(c.optimizer_state_dtype == "float32", "optimizer_state_dtype must be one of \"float32\", ",
                "\"bfloat16\", got ", quote(c.optimizer_state_dtype));
  return at::kFloat;
}

void sae_threshold_histogram_update(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a) {
  at::NoGradGuard ng;
  at::Tensor pre = at::addmm(st.params.b_enc, x - st.params.b_dec, st.params.W_enc.t()).reshape(-1);
  at::Tensor pos = (pre > 0).to(at::kDouble);
  const double w = (kSaeHistLogMax - kSaeHistLogMin) / double(kSaeHistBins);
  at::Tensor b = ((pre.clamp_min(1e-30).log() - kSaeHistLogMin) / w).floor() + 1;
  b = b.clamp(0, double(kSaeHistBins + 1)).to(at::kLong);
  st.calib_hist.scatter_add_(0, b, pos);
}

double sae_threshold_from_histogram(const at::Tensor& hist0, int64_t k, int64_t n_tokens) {
  at::Tensor hist = hist0.to(at::kCPU, at::kDouble).contiguous();
  const double* h = hist.data_ptr<double>();
  const int64_t B = kSaeHistBins;
  const double w = (kSaeHistLogMax - kSaeHistLogMin) / double(B);
  const double target = double(k) * double(n_tokens);
  double cum = 0;
  for (int64_t b = B + 1; b >= 0; --b) {
    const double c = h[b];
    if (c > 0 && cum + c >= target) {
      if (b == B + 1) return std::exp(kSaeHistLogMax);
      if (b == 0) return std::exp(kSaeHistLogMin);
      // Values in bin b lie in [lo + (b-1)w, lo + b·w) (log space); assume uniform within it.
      const double frac = (target - cum) / c;
      return std::exp(kSaeHistLogMin + double(b) * w - frac * w);
    }
    cum += c;
  }
  return 0.0;  // fewer than k·n positive pre-activations: every positive one is kept
}

int64_t sae_resample_dead(SaeTrainState& st, const at::Tensor& x, const SaeStepArgs& a, uint64_t seed) {
  at::NoGradGuard ng;
  at::Tensor dead = st.tokens_since_fired >= a.dead_window_tokens;
  at::Tensor dead_idx = dead.nonzero().reshape(-1);
  const int64_t n_dead = dead_idx.size(0);
  if (n_dead == 0) return 0;
  SAE cur = sae_from_state(st, a.k, std::max(0.0, st.threshold_ema.item<double>()));
  cur.input_mean = at::Tensor();  // x is already standardised
  cur.input_std = at::Tensor();
  if (cur.arch == SaeArch::BatchTopK && !cur.params.threshold.defined()) cur.arch = SaeArch::TopK;
  cur = cur.to(x.device());
  at::Tensor loss = (x - cur.reconstruct(x)).norm(2, 1);  // [N]
  const int64_t n = std::min(n_dead, x.size(0));
  at::Generator gen = cpu_generator(seed);
  at::Tensor probs = loss.to(at::kCPU).clamp_min(1e-12);
  at::Tensor pick = at::multinomial(probs, n, /*replacement=*/false, gen).to(x.device());
  at::Tensor v = x.index_select(0, pick) - st.params.b_dec;
  v = v / v.norm(2, 1, true).clamp_min(1e-12);  // [n, D] unit directions
  at::Tensor targets = dead_idx.narrow(0, 0, n);
  at::Tensor alive = ~dead;
  double alive_norm = alive.any().item<bool>() ? st.params.W_enc.index_select(0, alive.nonzero().reshape(-1)).norm(2, 1).mean().item<double>() : 1.0;
  st.params.W_enc.index_copy_(0, targets, v * (0.2 * alive_norm));
  if (!st.tied) st.params.W_dec.index_copy_(0, targets, v);
  st.params.b_enc.index_fill_(0, targets, 0.0);
  for (SaeParams* s : {&st.adam_m, &st.adam_v}) {
    s->W_enc.index_fill_(0, targets, 0.0);
    if (!st.tied) s->W_dec.index_fill_(0, targets, 0.0);
    s->b_enc.index_fill_(0, targets, 0.0);
  }
  st.tokens_since_fired.index_fill_(0, targets, 0);
  return n;
}

std::map<std::string, double> sae_read_metrics(SaeTrainState& st, const SaeStepArgs& a) {
  at::Tensor s = st.metric_sums.to(at::kCPU).clone();
  st.metric_sums.zero_();
  const double* v = s.data_ptr<double>();
  const double steps = std::max(1.0, v[kMetSteps]), tokens = std::max(1.0, v[kMetTokens]);
  std::map<std::string, double> m;
  m["steps"] = v[kMetSteps];
  m["tokens"] = v[kMetTokens];
  m["loss"] = v[kMetLoss] / steps;
  m["mse"] = v[kMetMse] / steps;
  m["fvu"] = v[kMetSstRaw] > 0 ? v[kMetSseRaw] / v[kMetSstRaw] : NAN;
  m["explained_variance"] = 1.0 - m["fvu"];
  m["l0"] = v[kMetL0] / tokens;
  m["l0_sparsity"] = m["l0"] / double(st.d_sae);
  m["l1"] = v[kMetL1] / tokens;
  m["l1_magnitude"] = v[kMetL1] / (tokens * double(st.d_sae));
  m["aux_loss"] = v[kMetAux] / steps;
  m["ghost_loss"] = v[kMetGhost] / steps;
  m["sparsity_loss"] = v[kMetSparsity] / steps;
  m["grad_norm"] = v[kMetGradNorm] / steps;
  m["cosine"] = v[kMetCos] / tokens;
  m["clipped_frac"] = v[kMetClipped] / steps;
  m["dead_frac"] = (st.tokens_since_fired >= a.dead_window_tokens).to(at::kDouble).mean().item<double>();
  m["bad_steps"] = double(st.bad_steps.item<int64_t>());
  if (st.arch == SaeArch::BatchTopK) m["threshold"] = st.threshold_ema.item<double>();
  return m;
}

SaeDensity sae_take_density(SaeTrainState& st, double density) {
  SaeDensity d;
  d.window_tokens = st.window_tokens.item<int64_t>();
  if (d.window_tokens > 0) {
    at::Tensor freq = st.fire_count.to(at::kDouble) / double(d.window_tokens);
    d.dense_frac = (freq > density).to(at::kDouble).mean().item<double>();
    d.never_frac = (st.fire_count == 0).to(at::kDouble).mean().item<double>();
  }
  st.fire_count.zero_();
  st.window_tokens.zero_();
  return d;
}

SAE sae_from_state(const SaeTrainState& st, int64_t k, double batchtopk_threshold) {
  SAE s;
  s.arch = st.arch;
  s.d_in = st.d_in;
  s.d_sae = st.d_sae;
  s.k = k;
  s.tied = st.tied;
  s.params = st.params.to(at::kCPU).clone();
  if (st.arch == SaeArch::BatchTopK && batchtopk_threshold >= 0)
    s.params.threshold = at::full({st.d_sae}, batchtopk_threshold, at::kFloat);
  if (st.input_mean.defined()) {
    s.input_mean = st.input_mean.to(at::kCPU).clone();
    s.input_std = st.input_std.to(at::kCPU).clone();
  }
  return s;
}

}  // namespace mlxterp
