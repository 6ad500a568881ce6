// SAE training math: every architecture's loss and gradients against a dense PyTorch reference
// (tests/golden/sae/grads.json, made by tests/reference/sae_grad_reference.py), central finite differences,
// and whole training steps (projection, clipping, Adam, renormalisation, dead counters) against torch.optim.Adam;
// bfloat16 Adam moments (optimizer_state_dtype) against the float32 step they round.
#include <gmock/gmock.h>

#include <bit>

#include "common.hpp"
#include "mlxterp/sae_kernels.hpp"
#include "mlxterp/sae_step.hpp"
#include "sae/adam.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

const nlohmann::json& golden() {
  static const nlohmann::json j = nlohmann::json::parse(read_file(golden_path("sae/grads.json")));
  return j;
}

SaeStepArgs args_for(const nlohmann::json& c) {
  SaeStepArgs a;
  a.arch = parse_sae_arch(c["arch"].get<std::string>());
  a.k = c["k"];
  a.k_aux = c["k_aux"];
  a.auxk_coef = c["auxk_coef"];
  a.sparsity_coef = c["sparsity_coef"];
  a.jumprelu_bandwidth = c["bandwidth"];
  a.ghost_grads = c["ghost"];
  return a;
}

SaeParams params_for(const nlohmann::json& c, at::ScalarType dt) {
  const auto& p = c["params"];
  SaeParams s;
  s.W_enc = json_to_tensor(p["W_enc"]).to(dt);
  s.b_enc = json_to_tensor(p["b_enc"]).to(dt);
  s.W_dec = c["tied"].get<bool>() ? s.W_enc : json_to_tensor(p["W_dec"]).to(dt);
  s.b_dec = json_to_tensor(p["b_dec"]).to(dt);
  if (p.contains("threshold")) s.threshold = json_to_tensor(p["threshold"]).to(dt);
  return s;
}

at::Tensor dead_for(const nlohmann::json& c) {
  std::vector<int64_t> d;
  for (bool b : c["dead"]) d.push_back(b);
  return at::tensor(d, at::kLong).to(at::kBool);
}

// Max |a - b| relative to max |b| (so one scale per tensor).
double rel_err(const at::Tensor& a, const at::Tensor& b) {
  double scale = std::max(1e-12, b.to(at::kDouble).abs().max().item<double>());
  return max_abs_diff(a, b) / scale;
}

void check_case(const nlohmann::json& c, at::ScalarType dt, double tol) {
  const std::string name = c["name"];
  SaeParams p = params_for(c, dt);
  at::Tensor x = json_to_tensor(c["x"]).to(dt);
  SaeLossGrads g = sae_loss_and_grads(p, x, args_for(c), c["tied"], dead_for(c));
  const auto& t = c["terms"];
  EXPECT_NEAR(g.loss, c["loss"].get<double>(), tol * std::abs(c["loss"].get<double>())) << name;
  EXPECT_NEAR(g.mse, t["mse"].get<double>(), tol * std::abs(t["mse"].get<double>()) + 1e-12) << name;
  EXPECT_NEAR(g.aux, t["aux"].get<double>(), tol * std::abs(t["aux"].get<double>()) + 1e-12) << name;
  EXPECT_NEAR(g.ghost, t["ghost"].get<double>(), tol * std::abs(t["ghost"].get<double>()) + 1e-12) << name;
  EXPECT_NEAR(g.sparsity, t["sparsity"].get<double>(), tol * std::abs(t["sparsity"].get<double>()) + 1e-12) << name;
  const auto& G = c["grads"];
  std::map<std::string, at::Tensor> mine = {{"W_enc", g.grads.W_enc}, {"b_enc", g.grads.b_enc}, {"b_dec", g.grads.b_dec}};
  if (!c["tied"].get<bool>()) mine["W_dec"] = g.grads.W_dec;
  if (g.grads.threshold.defined()) mine["threshold"] = g.grads.threshold;
  ASSERT_EQ(mine.size(), G.size()) << name << ": gradient set differs";
  for (const auto& [k, v] : mine) {
    double e = rel_err(v, json_to_tensor(G[k]));
    EXPECT_LT(e, tol) << name << ": d loss / d " << k << " relative error " << e;
  }
}

TEST(SaeGrad, MatchesPyTorchFloat64) {
  for (const auto& c : golden()["cases"]) check_case(c, at::kDouble, 1e-9);
}

TEST(SaeGrad, MatchesPyTorchFloat32) {
  for (const auto& c : golden()["cases"]) check_case(c, at::kFloat, 2e-4);
}

// Central differences in float64 where the loss is a true function of the parameters: AuxK (whose target
// residual is detached by definition) and JumpReLU's θ (a straight-through estimate) are covered by the golden.
TEST(SaeGrad, FiniteDifferences) {
  for (const char* arch : {"topk", "batchtopk", "relu", "jumprelu"}) {
    at::manual_seed(3);
    const int64_t N = 12, D = 6, F = 20;
    SaeParams p;
    p.W_enc = at::randn({F, D}, at::kDouble) * 0.5;
    p.b_enc = at::randn({F}, at::kDouble) * 0.1;
    p.W_dec = at::randn({F, D}, at::kDouble);
    p.b_dec = at::randn({D}, at::kDouble) * 0.1;
    at::Tensor x = at::randn({N, D}, at::kDouble) * 2;
    at::Tensor dead = at::rand({F}, at::kDouble) < 0.4;
    SaeStepArgs a;
    a.arch = parse_sae_arch(arch);
    a.k = 3;
    a.k_aux = 4;
    a.sparsity_coef = a.arch == SaeArch::ReLU || a.arch == SaeArch::JumpReLU ? 0.3 : 0.0;
    if (a.arch == SaeArch::JumpReLU) p.threshold = at::rand({F}, at::kDouble) * 0.5 + 0.05;
    SaeLossGrads g = sae_loss_and_grads(p, x, a, false, dead);
    std::map<std::string, std::pair<at::Tensor*, at::Tensor>> leaves = {{"W_enc", {&p.W_enc, g.grads.W_enc}},
                                                                        {"b_enc", {&p.b_enc, g.grads.b_enc}},
                                                                        {"W_dec", {&p.W_dec, g.grads.W_dec}},
                                                                        {"b_dec", {&p.b_dec, g.grads.b_dec}}};
    const double h = 1e-6;
    for (auto& [name, lp] : leaves) {
      at::Tensor& t = *lp.first;
      at::Tensor flat = t.view(-1);
      for (int64_t i = 0; i < flat.numel(); i += std::max<int64_t>(1, flat.numel() / 15)) {
        double v0 = flat[i].item<double>();
        flat[i] = v0 + h;
        double up = sae_loss_and_grads(p, x, a, false, dead).loss;
        flat[i] = v0 - h;
        double down = sae_loss_and_grads(p, x, a, false, dead).loss;
        flat[i] = v0;
        double fd = (up - down) / (2 * h), an = lp.second.view(-1)[i].item<double>();
        EXPECT_NEAR(an, fd, 1e-5 * std::max(1.0, std::abs(fd))) << arch << " d/d" << name << "[" << i << "]";
      }
    }
  }
}

// The hand-written sparse backward that TopK / BatchTopK training uses (CPU loops in src/sae/cpu_kernels.cpp,
// with AuxK on dead latents, tied and untied) equals the same loss through libtorch autograd, in float64 and
// float32 (where the loops accumulate in a different order than the dense products).
TEST(SaeGrad, SparsePathEqualsAutograd) {
  for (const char* arch : {"topk", "batchtopk"})
    for (bool tied : {false, true})
      for (at::ScalarType dt : {at::kDouble, at::kFloat}) {
        at::manual_seed(11);
        const int64_t N = 37, D = 24, F = 96;
        SaeParams p;
        p.W_enc = (at::randn({F, D}, at::kDouble) * 0.3).to(dt);
        p.b_enc = (at::randn({F}, at::kDouble) * 0.1).to(dt);
        p.W_dec = tied ? p.W_enc : at::randn({F, D}, at::kDouble).to(dt);
        p.b_dec = (at::randn({D}, at::kDouble) * 0.1).to(dt);
        at::Tensor x = (at::randn({N, D}, at::kDouble) * 2).to(dt);
        at::Tensor dead = at::rand({F}, at::kDouble) < 0.3;
        SaeStepArgs a;
        a.arch = parse_sae_arch(arch);
        a.k = 6;
        a.k_aux = 8;
        a.auxk_coef = 0.5;
        a.compute_dtype = dt;
        SaeLossGrads s = sae_loss_and_grads(p, x, a, tied, dead);
        SaeLossGrads r = sae_loss_and_grads_autograd(p, x, a, tied, dead);
        const double tol = dt == at::kDouble ? 1e-10 : 2e-5;
        const std::string what = cat(arch, tied ? " tied " : " untied ", dt == at::kDouble ? "f64" : "f32");
        EXPECT_NEAR(s.loss, r.loss, tol * std::abs(r.loss)) << what;
        EXPECT_NEAR(s.aux, r.aux, tol * std::abs(r.aux) + 1e-12) << what;
        EXPECT_GT(r.aux, 0.0) << what << ": AuxK must be active for this test to mean anything";
        EXPECT_TRUE(at::equal(s.z > 0, r.z > 0)) << what << ": different latents kept";
        std::map<std::string, std::pair<at::Tensor, at::Tensor>> g = {{"W_enc", {s.grads.W_enc, r.grads.W_enc}},
                                                                      {"b_enc", {s.grads.b_enc, r.grads.b_enc}},
                                                                      {"b_dec", {s.grads.b_dec, r.grads.b_dec}}};
        if (!tied) g["W_dec"] = {s.grads.W_dec, r.grads.W_dec};
        for (const auto& [k, v] : g) EXPECT_LT(rel_err(v.first, v.second), tol * 10) << what << " d/d" << k;
      }
}

// Four full steps against torch.optim.Adam with the same projection, clipping, renormalisation and counters.
TEST(SaeStep, TrainingStepsMatchPyTorch) {
  const auto& c = golden()["train"];
  SaeTrainState st;
  st.arch = SaeArch::TopK;
  st.params = params_for(c, at::kFloat);
  st.d_sae = st.params.W_enc.size(0);
  st.d_in = st.params.W_enc.size(1);
  auto zeros = [&](const SaeParams& p) {
    return SaeParams{at::zeros_like(p.W_enc), at::zeros_like(p.b_enc), at::zeros_like(p.W_dec), at::zeros_like(p.b_dec), {}};
  };
  st.adam_m = zeros(st.params);
  st.adam_v = zeros(st.params);
  st.tokens_since_fired = at::zeros({st.d_sae}, at::kLong);
  st.fire_count = at::zeros({st.d_sae}, at::kLong);
  st.window_tokens = at::zeros({}, at::kLong);
  st.threshold_ema = at::full({}, -1.0, at::kDouble);
  st.bad_steps = at::zeros({}, at::kLong);
  st.metric_sums = at::zeros({kSaeMetricCount}, at::kDouble);
  SaeStepArgs a = args_for(c);
  a.lr = c["lr"];
  a.beta1 = c["beta1"];
  a.beta2 = c["beta2"];
  a.eps = c["eps"];
  a.clip = c["clip"];
  a.dead_window_tokens = c["dead_window_tokens"];
  a.decoder_unit_norm = true;
  for (size_t s = 0; s < c["xs"].size(); ++s) {
    at::Tensor x = json_to_tensor(c["xs"][s]).to(at::kFloat);
    sae_train_step_reference(st, x, a);
    st.adam_step += 1;
    const auto& want = c["after"][s];
    auto m = sae_read_metrics(st, a);
    EXPECT_NEAR(m["loss"], want["loss"].get<double>(), 1e-4 * want["loss"].get<double>()) << "step " << s;
    EXPECT_NEAR(m["aux_loss"], want["aux"].get<double>(), 1e-4) << "step " << s;
    EXPECT_NEAR(m["grad_norm"], want["grad_norm"].get<double>(), 1e-4 * want["grad_norm"].get<double>()) << "step " << s;
    for (const char* k : {"W_enc", "b_enc", "W_dec", "b_dec"}) {
      at::Tensor mine = st.params.named().at(k);
      double e = rel_err(mine, json_to_tensor(want["params"][k]));
      EXPECT_LT(e, 1e-4) << "step " << s << " " << k << " relative error " << e;
    }
    at::Tensor tsf = json_to_tensor(want["tokens_since_fired"]).to(at::kLong);
    EXPECT_TRUE(at::equal(st.tokens_since_fired, tsf)) << "step " << s << ": dead-latent counters differ";
  }
  EXPECT_EQ(st.bad_steps.item<int64_t>(), 0);
}

// A non-finite batch: the update is skipped, the weights stay finite, and bad_steps counts it.
TEST(SaeStep, NonFiniteStepIsSkipped) {
  SAEConfig cfg;
  cfg.expansion_factor = 4;
  cfg.k = 4;
  at::manual_seed(0);
  at::Tensor first = at::randn({64, 8});
  SaeTrainState st = sae_init_state(cfg, 8, first, at::kCPU);
  SaeStepArgs a = sae_step_args(cfg, 8, 10, 100);
  SaeParams before = st.params.clone();
  at::Tensor x = at::randn({32, 8});
  x[3][2] = NAN;
  sae_train_step_reference(st, x, a);
  EXPECT_EQ(st.bad_steps.item<int64_t>(), 1);
  for (const auto& [k, v] : st.params.named()) EXPECT_TRUE(at::equal(v, before.named().at(k))) << k << " changed";
  // And every later step is skipped too (training stops at the next sync).
  sae_train_step_reference(st, at::randn({32, 8}), a);
  EXPECT_EQ(st.bad_steps.item<int64_t>(), 2);
  for (const auto& [k, v] : st.params.named()) EXPECT_TRUE(at::isfinite(v).all().item<bool>()) << k;
}

// normalize_input is one scalar rescale with E‖x/s‖² = d (not a per-dimension standardisation, which re-weights
// the loss per dimension and made the held-out raw-space FVU 6-8% worse: docs/sae-results.md).
TEST(SaeStep, NormalizeInputIsOneScalarWithMeanSquaredNormD) {
  SAEConfig cfg;
  cfg.expansion_factor = 2;
  cfg.k = 2;
  cfg.b_dec_init = "mean";
  at::manual_seed(3);
  // Dimensions with very different scales and offsets.
  at::Tensor first = at::randn({256, 6}) * at::tensor({0.1, 1.0, 5.0, 0.5, 2.0, 10.0}) + at::tensor({1.0, -2.0, 0.0, 3.0, 0.0, 4.0});
  first = first.to(at::kFloat);
  SaeTrainState st = sae_init_state(cfg, 6, first, at::kCPU);
  ASSERT_TRUE(st.input_std.defined());
  const double s = std::sqrt(first.to(at::kDouble).pow(2).sum(1).mean().item<double>() / 6.0);
  EXPECT_TRUE(at::allclose(st.input_std, at::full({6}, s, at::kFloat), 1e-5, 0)) << st.input_std;
  EXPECT_TRUE(at::equal(st.input_mean, at::zeros({6}))) << st.input_mean;
  at::Tensor xn = (first - st.input_mean) / st.input_std;
  EXPECT_NEAR(xn.pow(2).sum(1).mean().item<double>(), 6.0, 1e-3);
  EXPECT_TRUE(at::allclose(st.params.b_dec, first.mean(0) / s, 1e-5, 1e-6));  // b_dec init in the scaled space
}

// AuxK's term is a ratio (residual MSE / residual variance) while the MSE scales with E‖x‖². auxk_coef = 1/32 is
// the weight for inputs of unit mean squared norm (dictionary_learning); normalize_input trains on E‖x‖² = d,
// so the step must weigh AuxK by auxk_coef · d: then the whole objective is d times dictionary_learning's on
// x/√d. With the weight taken as is, AuxK was d = 64 times too weak on stories260K and left latents dead
// (docs/sae-results.md).
TEST(SaeStep, AuxKWeightIsThatOfUnitMeanSquaredNormInputs) {
  for (const char* arch : {"topk", "batchtopk"}) {
    SAEConfig cfg;
    cfg.sae_type = arch;
    cfg.expansion_factor = 4;
    cfg.k = 4;
    const int64_t D = 16;
    at::manual_seed(5);
    at::Tensor raw = at::randn({256, D}) * 3 + 1;
    SaeTrainState st = sae_init_state(cfg, D, raw, at::kCPU);
    SaeStepArgs a = sae_step_args(cfg, D, 50, 100);
    EXPECT_DOUBLE_EQ(a.auxk_coef, cfg.auxk_coef * double(D)) << arch;
    at::Tensor x = ((raw - st.input_mean) / st.input_std).to(at::kDouble);  // E‖x‖² = D
    SaeParams p = st.params.clone();
    for (at::Tensor* t : {&p.W_enc, &p.b_enc, &p.W_dec, &p.b_dec}) *t = t->to(at::kDouble);
    at::Tensor dead = at::arange(st.d_sae) % 3 == 0;
    SaeLossGrads ours = sae_loss_and_grads(p, x, a, false, dead);
    // The same SAE on x/√D: biases scale with x, weights stay; dictionary_learning's weight 1/32 as is.
    const double r = std::sqrt(double(D));
    SaeParams u = p.clone();
    u.b_enc = p.b_enc / r;
    u.b_dec = p.b_dec / r;
    SaeStepArgs au = a;
    au.auxk_coef = cfg.auxk_coef;
    SaeLossGrads unit = sae_loss_and_grads(u, x / r, au, false, dead);
    ASSERT_GT(ours.aux, 0.01) << arch << ": AuxK must be active for this test to mean anything";
    EXPECT_NEAR(ours.aux, unit.aux, 1e-9) << arch;
    EXPECT_NEAR(ours.mse, double(D) * unit.mse, 1e-9 * ours.mse) << arch;
    EXPECT_NEAR(ours.loss, double(D) * unit.loss, 1e-9 * ours.loss) << arch << ": AuxK weighed differently from the MSE";
    // Raw units (normalize_input = false): the weight as given.
    cfg.normalize_input = false;
    EXPECT_DOUBLE_EQ(sae_step_args(cfg, D, 50, 100).auxk_coef, cfg.auxk_coef) << arch;
  }
}

TEST(SaeStep, TopKL0IsExactlyK) {
  SAEConfig cfg;
  cfg.expansion_factor = 8;
  cfg.k = 5;
  at::manual_seed(1);
  SaeTrainState st = sae_init_state(cfg, 16, at::randn({128, 16}) + 3, at::kCPU);
  SaeStepArgs a = sae_step_args(cfg, 16, 0, 10);
  SaeLossGrads g = sae_loss_and_grads(st.params, at::randn({40, 16}) + 3, a, false);
  EXPECT_TRUE(at::equal((g.z > 0).sum(1), at::full({40}, 5, at::kLong))) << "some token has L0 != k";
}

TEST(SaeStep, ScheduleWarmupCosineLinearConstant) {
  SAEConfig c;
  c.learning_rate = 1.0;
  c.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(sae_learning_rate(c, 0, 110), 0.1);  // step 0 already learns (the original's lr was 0)
  EXPECT_DOUBLE_EQ(sae_learning_rate(c, 9, 110), 1.0);
  EXPECT_DOUBLE_EQ(sae_learning_rate(c, 10, 110), 1.0);
  EXPECT_NEAR(sae_learning_rate(c, 60, 110), 0.5, 1e-12);  // cosine midpoint
  EXPECT_NEAR(sae_learning_rate(c, 110, 110), 0.0, 1e-12);
  c.lr_min_ratio = 0.1;
  EXPECT_NEAR(sae_learning_rate(c, 110, 110), 0.1, 1e-12);
  c.lr_scheduler = "linear";
  EXPECT_NEAR(sae_learning_rate(c, 60, 110), 0.55, 1e-12);
  c.lr_scheduler = "constant";
  EXPECT_DOUBLE_EQ(sae_learning_rate(c, 100, 110), 1.0);
  c.lr_scheduler = "cosine";
  c.lr_decay_steps = 20;  // decay ends at step 20, then holds
  EXPECT_NEAR(sae_learning_rate(c, 50, 110), 0.1, 1e-12);
  // sparsity warm-up and k annealing
  c.sparsity_warm_up_steps = 4;
  c.lambda_sparse = 2.0;
  c.k = 8;
  c.k_anneal_steps = 10;
  c.expansion_factor = 4;
  SaeStepArgs a = sae_step_args(c, 16, 1, 100);
  EXPECT_DOUBLE_EQ(a.sparsity_coef, 1.0);
  EXPECT_EQ(a.k, 15);  // 16 -> 8 over 10 steps: round(16 - 0.8)
  EXPECT_EQ(sae_step_args(c, 16, 10, 100).k, 8);
}

TEST(SaeStep, ThresholdHistogramCalibration) {
  // 1000 tokens x 50 latents of known values: θ must keep on average k per token.
  at::manual_seed(5);
  SAEConfig cfg;
  cfg.sae_type = "batchtopk";
  cfg.expansion_factor = 1;
  cfg.k = 7;
  cfg.normalize_input = false;
  cfg.b_dec_init = "zeros";
  SaeTrainState st = sae_init_state(cfg, 50, at::randn({10, 50}), at::kCPU);
  st.params.W_enc = at::eye(50);  // pre = x
  at::Tensor x = at::rand({1000, 50}).pow(3) * 5;
  SaeStepArgs a = sae_step_args(cfg, 50, 0, 1);
  sae_threshold_histogram_update(st, x, a);
  double th = sae_threshold_from_histogram(st.calib_hist, 7, 1000);
  double l0 = (x > th).sum().item<double>() / 1000.0;
  EXPECT_NEAR(l0, 7.0, 0.02) << "threshold " << th;
}

// ---- bfloat16 Adam moments (optimizer_state_dtype = "bfloat16") ----

namespace sk = mlxterp::sae_kernels;

// The moments of W_enc (matrix 0) / W_dec (matrix 1) that step t stores, from its float32 moments.
at::Tensor sr_moment(const at::Tensor& m32, int64_t t, int matrix, bool high) {
  return sk::round_bf16_stochastic(m32, sk::moment_hash(m32.numel(), sk::moment_seed(t, matrix), m32.device()), high);
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && at::equal(a, b);
}

// One step from zero moments with known gradients (no projection, no clipping, no renormalisation): the float32
// moments are (1-β1) g and (1-β2) g², the parameter update uses them unrounded, and the stored bf16 moments are
// exactly round_bf16_stochastic of them with moment_hash(numel, moment_seed(1, matrix)). A second step from
// bf16 moments equals the float32 step from their upcast copies, rounded with step 2's bits.
TEST(SaeStep, Bf16MomentsAreTheFloat32StepStochasticallyRounded) {
  SAEConfig cfg;
  cfg.expansion_factor = 4;
  cfg.k = 4;
  cfg.weight_decay = 0.01;
  const int64_t D = 16;
  at::manual_seed(11);
  at::Tensor first = at::randn({256, D});
  SaeTrainState s32 = sae_init_state(cfg, D, first, at::kCPU);
  cfg.optimizer_state_dtype = "bfloat16";
  SaeTrainState s16 = sae_init_state(cfg, D, first, at::kCPU);
  ASSERT_EQ(s16.moment_dtype(), at::kBFloat16);
  for (const SaeParams* m : {&s16.adam_m, &s16.adam_v}) {
    EXPECT_EQ(m->W_enc.scalar_type(), at::kBFloat16);
    EXPECT_EQ(m->W_dec.scalar_type(), at::kBFloat16);
    EXPECT_EQ(m->b_enc.scalar_type(), at::kFloat);
    EXPECT_EQ(m->b_dec.scalar_type(), at::kFloat);
  }
  SaeStepArgs a = sae_step_args(cfg, D, 500, 1000);
  a.lr = 1e-2;
  a.decoder_unit_norm = false;
  a.clip = 0;
  const SaeParams p0 = s16.params.clone();
  at::Tensor x = at::randn({64, D});
  SaeLossGrads lg = sae_loss_and_grads(p0, x, a, /*tied=*/false);  // the gradients the step will use
  sae_train_step_reference(s32, x, a);
  sae_train_step_reference(s16, x, a);
  ASSERT_EQ(s16.bad_steps.item<int64_t>(), 0);

  const double bc1 = 1 - a.beta1, bc2 = 1 - a.beta2;  // t = 1
  const char* names[] = {"W_enc", "W_dec"};
  for (int i = 0; i < 2; ++i) {
    const std::string n = names[i];
    at::Tensor g = lg.grads.named().at(n);
    at::Tensor m32 = s32.adam_m.named().at(n), v32 = s32.adam_v.named().at(n);
    EXPECT_TRUE(at::allclose(m32, g * (1 - a.beta1), 1e-6, 0)) << n;
    EXPECT_TRUE(at::allclose(v32, g * g * (1 - a.beta2), 1e-6, 0)) << n;
    EXPECT_TRUE(same_bits(s16.adam_m.named().at(n), sr_moment(m32, 1, i, false))) << n << ": m";
    EXPECT_TRUE(same_bits(s16.adam_v.named().at(n), sr_moment(v32, 1, i, true))) << n << ": v";
    // Not simply round-to-nearest (the test would not see the hash otherwise).
    EXPECT_FALSE(at::equal(s16.adam_m.named().at(n), m32.to(at::kBFloat16))) << n;
    // The update: the same bits as the float32 step, and by hand with the unrounded moments, not the rounded.
    at::Tensor p1 = s16.params.named().at(n);
    EXPECT_TRUE(same_bits(p1, s32.params.named().at(n))) << n;
    at::Tensor delta = p1 - p0.named().at(n) * (1 - a.lr * a.weight_decay);
    auto update = [&](const at::Tensor& m, const at::Tensor& v) {
      return -a.lr * (m.to(at::kDouble) / bc1) / ((v.to(at::kDouble) / bc2).sqrt() + a.eps);
    };
    const double unrounded = max_abs_diff(delta, update(m32, v32));
    const double rounded = max_abs_diff(delta, update(s16.adam_m.named().at(n), s16.adam_v.named().at(n)));
    EXPECT_LT(unrounded, 1e-4 * a.lr) << n;
    EXPECT_GT(rounded, 1e-3 * a.lr) << n << ": the update should use the unrounded float32 moments";
  }
  for (const char* n : {"b_enc", "b_dec"}) {
    EXPECT_TRUE(same_bits(s16.params.named().at(n), s32.params.named().at(n))) << n;
    EXPECT_TRUE(same_bits(s16.adam_m.named().at(n), s32.adam_m.named().at(n))) << n;
    EXPECT_TRUE(same_bits(s16.adam_v.named().at(n), s32.adam_v.named().at(n))) << n;
  }

  // Step 2 from the stored bf16 moments: the float32 step from their exact upcasts, rounded with t = 2's bits.
  s16.adam_step = s32.adam_step = 1;
  for (auto [f, h] : {std::pair{&s32.adam_m, &s16.adam_m}, std::pair{&s32.adam_v, &s16.adam_v}}) {
    f->W_enc = h->W_enc.to(at::kFloat);
    f->W_dec = h->W_dec.to(at::kFloat);
  }
  a.decoder_unit_norm = true;  // and the whole step this time
  a.clip = 1.0;
  at::Tensor x2 = at::randn({64, D});
  sae_train_step_reference(s32, x2, a);
  sae_train_step_reference(s16, x2, a);
  for (int i = 0; i < 2; ++i) {
    const std::string n = names[i];
    EXPECT_TRUE(same_bits(s16.params.named().at(n), s32.params.named().at(n))) << n << " (step 2)";
    EXPECT_TRUE(same_bits(s16.adam_m.named().at(n), sr_moment(s32.adam_m.named().at(n), 2, i, false))) << n;
    EXPECT_TRUE(same_bits(s16.adam_v.named().at(n), sr_moment(s32.adam_v.named().at(n), 2, i, true))) << n;
  }

  // Resampling dead latents zeroes their rows of the bf16 moments and leaves the dtype alone.
  s16.tokens_since_fired.narrow(0, 0, 5).fill_(int64_t(1) << 40);
  ASSERT_EQ(sae_resample_dead(s16, x2, a, 7), 5);
  for (const SaeParams* m : {&s16.adam_m, &s16.adam_v}) {
    EXPECT_EQ(m->W_enc.scalar_type(), at::kBFloat16);
    EXPECT_EQ(m->W_dec.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(m->W_enc.narrow(0, 0, 5).eq(0).all().item<bool>());
    EXPECT_TRUE(m->W_dec.narrow(0, 0, 5).eq(0).all().item<bool>());
    EXPECT_TRUE(m->W_enc.narrow(0, 5, 59).ne(0).any().item<bool>());
  }
}

// Both branches of the trainer's AdamW (in place with `ok` read on the host; at::where with `ok` on the device),
// run here on CPU tensors: bf16 moments are that branch's float32 result rounded, and ok = false changes nothing.
TEST(SaeStep, Bf16MomentsInBothAdamBranches) {
  SaeStepArgs a;
  a.lr = 3e-3;
  a.weight_decay = 0.1;
  at::manual_seed(4);
  at::Tensor p = at::randn({96, 24}), g = at::randn({96, 24}) * 1e-2;
  at::Tensor m16 = (at::randn({96, 24}) * 1e-3).to(at::kBFloat16), v16 = (at::rand({96, 24}) * 1e-4).to(at::kBFloat16);
  const int64_t t = 57;
  for (const bool in_place : {true, false}) {
    for (const bool ok : {true, false}) {
      const at::Tensor okt = at::scalar_tensor(ok, at::kBool);
      at::Tensor p32 = p.clone(), m32 = m16.to(at::kFloat), v32 = v16.to(at::kFloat);
      sae_detail::adam_update(p32, g, m32, v32, okt, a, t, /*decay=*/true, /*matrix=*/-1, in_place);
      at::Tensor ph = p.clone(), mh = m16.clone(), vh = v16.clone();
      sae_detail::adam_update(ph, g, mh, vh, okt, a, t, /*decay=*/true, /*matrix=*/1, in_place);
      const std::string what = cat(in_place ? "in place" : "at::where", ", ok ", ok);
      EXPECT_TRUE(same_bits(ph, p32)) << what;
      if (ok) {
        EXPECT_FALSE(at::equal(ph, p)) << what;
        EXPECT_TRUE(same_bits(mh, sr_moment(m32, t, 1, false))) << what;
        EXPECT_TRUE(same_bits(vh, sr_moment(v32, t, 1, true))) << what;
      } else {
        EXPECT_TRUE(same_bits(ph, p) && same_bits(mh, m16) && same_bits(vh, v16)) << what << ": changed";
      }
    }
  }
  // Bias / threshold moments (matrix -1) must be float32.
  at::Tensor pb = p.clone(), mb = m16.clone(), vb = v16.clone();
  EXPECT_THAT(error_of([&] {
                sae_detail::adam_update(pb, g, mb, vb, at::scalar_tensor(true, at::kBool), a, 1, false, -1, true);
              }),
              ::testing::HasSubstr("bfloat16 for W_enc's and W_dec's only"));
}

// Stochastic rounding keeps an EMA moving: v <- 0.999 v + 0.001 c from 0 (Adam's v under a constant gradient)
// stored in bf16 each step tracks the float32 EMA, while round-to-nearest stalls once 0.001 (c - v) is below
// half of v's last place (v ~ c/4 here). And one value rounded many times: only its two bf16 neighbours, the
// mean is the value.
TEST(SaeStep, Bf16StochasticRoundingIsUnbiasedAndDoesNotStall) {
  const int64_t n = 4096, T = 3000;
  at::manual_seed(9);
  at::Tensor c = at::exp(at::rand({n}) * -12);  // g² over 12 e-folds
  at::Tensor v32 = at::zeros({n}), vsr = at::zeros({n}, at::kBFloat16), vrne = at::zeros({n}, at::kBFloat16);
  for (int64_t t = 1; t <= T; ++t) {
    v32 = v32 * 0.999 + c * 0.001;
    vsr = sr_moment(vsr.to(at::kFloat) * 0.999 + c * 0.001, t, 1, /*high=*/true);
    vrne = (vrne.to(at::kFloat) * 0.999 + c * 0.001).to(at::kBFloat16);
  }
  const double sr = (vsr.to(at::kDouble) / v32.to(at::kDouble)).mean().item<double>();
  const double rne = (vrne.to(at::kDouble) / v32.to(at::kDouble)).mean().item<double>();
  const double worst = (vsr.to(at::kDouble) / v32.to(at::kDouble) - 1).abs().max().item<double>();
  EXPECT_NEAR(sr, 1.0, 0.01) << "stochastic rounding: mean of v_bf16 / v_f32 after " << T << " steps";
  EXPECT_LT(worst, 0.25) << "stochastic rounding: some element strayed";
  EXPECT_LT(rne, 0.95) << "round-to-nearest should visibly stall (else this test does not discriminate)";

  const int64_t N = 1 << 16;
  at::Tensor h = sk::moment_hash(N, sk::moment_seed(12345, 0), at::kCPU);
  for (const float x : {0.1f, 3.3e-7f, -1234.56f, 1.0f + 0x1p-10f}) {
    const uint32_t cut = std::bit_cast<uint32_t>(x) & 0xffff0000u;  // bf16 toward zero, and one place further out
    const float down = std::bit_cast<float>(cut), up = std::bit_cast<float>(cut + 0x10000u);
    for (const bool high : {false, true}) {
      at::Tensor r = sk::round_bf16_stochastic(at::full({N}, x), h, high).to(at::kFloat);
      EXPECT_TRUE((r.eq(down) | r.eq(up)).all().item<bool>()) << x << ": a result is not a bf16 neighbour";
      EXPECT_TRUE(r.eq(down).any().item<bool>() && r.eq(up).any().item<bool>()) << x << ": always one side";
      const double mean = r.to(at::kDouble).mean().item<double>();
      EXPECT_LT(std::abs(mean / double(x) - 1), 1e-3) << x << " (high " << high << "): mean " << mean;
    }
  }
}

}  // namespace
