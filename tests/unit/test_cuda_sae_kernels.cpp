// The SAE training step: the libtorch reference against a PyTorch golden (dense autograd + torch AdamW),
// and every CUDA kernel against the reference (CUDA build + GPU only; elsewhere those tests skip).
#include <cmath>

#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/sae_kernels.hpp"

using namespace mlxterp;
using namespace mlxterp::sae_kernels;
using namespace mlxterp::test;

namespace {

at::Tensor f32(const nlohmann::json& j) { return json_to_tensor(j).to(at::kFloat); }

double rel_err(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.to(at::kDouble).cpu(), w = want.to(at::kDouble).cpu();
  const double denom = w.norm().item<double>();
  return (g - w).norm().item<double>() / (denom > 0 ? denom : 1.0);
}

}  // namespace

// ---- the reference (runs everywhere) ----------------------------------------------------------------------

TEST(SaeKernelsReference, MatchesPyTorchGolden) {
  auto golden = nlohmann::json::parse(read_file(golden_path("sae_kernels/steps.json")));
  for (const auto& c : golden["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    Params p{f32(c["init"]["W_enc"]), f32(c["init"]["b_enc"]), f32(c["init"]["W_dec"]), f32(c["init"]["b_dec"])};
    AdamState s = AdamState::zeros_like(p);
    at::Tensor since = json_to_tensor(c["since_fired_init"]).to(at::kLong);
    at::Tensor x = f32(c["x"]);
    StepConfig cfg;
    cfg.k = c["k"];
    cfg.selection = c["selection"] == "topk" ? Selection::TopK : Selection::BatchTopK;
    cfg.loss_norm = c["loss_norm"] == "fvu"           ? LossNorm::FVU
                    : c["loss_norm"] == "mean_square" ? LossNorm::MeanSquare
                                                      : LossNorm::SumPerToken;
    cfg.compute_dtype = at::kFloat;
    cfg.lr = c["lr"];
    cfg.weight_decay = c["weight_decay"];
    cfg.max_grad_norm = c["max_grad_norm"];
    cfg.remove_parallel_grad = c["remove_parallel_grad"];
    cfg.normalize_decoder = c["normalize_decoder"];
    cfg.auxk_coef = c["auxk_coef"];
    cfg.k_aux = c["k_aux"];
    cfg.dead_tokens = c["dead_tokens"];
    const auto losses = c["losses"].get<std::vector<double>>();
    for (size_t t = 0; t < losses.size(); ++t) {
      cfg.step = int64_t(t) + 1;
      StepStats st = reference_step(p, s, since, x, cfg);
      EXPECT_NEAR(st.loss.item<double>(), losses[t], 1e-5 * std::abs(losses[t])) << "step " << t + 1;
      EXPECT_EQ(st.latents.numel(), x.size(0) * cfg.k);
      EXPECT_TRUE(st.ok.item<bool>());
      if (cfg.auxk_coef > 0) EXPECT_GT(st.aux.item<double>(), 0) << "AuxK had dead latents to use";
    }
    EXPECT_LT(max_abs_diff(p.W_enc, f32(c["final"]["W_enc"])), 2e-5);
    EXPECT_LT(max_abs_diff(p.b_enc, f32(c["final"]["b_enc"])), 2e-5);
    EXPECT_LT(max_abs_diff(p.W_dec, f32(c["final"]["W_dec"])), 2e-5);
    EXPECT_LT(max_abs_diff(p.b_dec, f32(c["final"]["b_dec"])), 2e-5);
    EXPECT_TRUE(at::equal(since, json_to_tensor(c["since_fired"]).to(at::kLong)));
  }
}

TEST(SaeKernelsReference, TopkTiesGoToTheLowerLatentAndZerosFillUp) {
  at::Tensor b = at::zeros({6});
  // Row 0: four equal maxima -> latents 0 and 1. Row 1: one positive value -> it, then the lowest zeros.
  at::Tensor pre = at::tensor({1.f, 1.f, 1.f, 1.f, 0.f, -2.f, -1.f, -1.f, -1.f, 3.f, -1.f, -1.f}).view({2, 6});
  auto [lat, val] = ref::topk_rows(pre, b, 2);
  EXPECT_TRUE(at::equal(lat, at::tensor({0L, 1L, 0L, 3L}).view({2, 2})));
  EXPECT_TRUE(at::equal(val, at::tensor({1.f, 1.f, 0.f, 3.f}).view({2, 2})));
  // BatchTopK: ties go to the earlier (row, latent).
  auto [row_ptr, blat, bval] = ref::batch_topk(pre, b, 2);  // 4 in total
  EXPECT_TRUE(at::equal(row_ptr, at::tensor({0L, 3L, 4L})));
  EXPECT_TRUE(at::equal(blat, at::tensor({0L, 1L, 2L, 3L})));
  EXPECT_TRUE(at::equal(bval, at::tensor({1.f, 1.f, 1.f, 3.f})));
}

TEST(SaeKernelsReference, SparseDecodeIsTheDenseProduct) {
  at::manual_seed(3);
  at::Tensor W = at::randn({10, 6}), b = at::randn({6}), x = at::randn({3, 6});
  at::Tensor row_ptr = at::tensor({0L, 2L, 2L, 5L});  // a token with no selections
  at::Tensor lat = at::tensor({1L, 7L, 0L, 4L, 9L}), val = at::tensor({0.5f, 2.f, 1.f, 0.25f, 3.f});
  at::Tensor z = at::zeros({3, 10});
  z[0][1] = 0.5f;
  z[0][7] = 2.f;
  z[2][0] = 1.f;
  z[2][4] = 0.25f;
  z[2][9] = 3.f;
  at::Tensor want = at::mm(z, W) + b - x;
  EXPECT_LT(max_abs_diff(ref::sparse_decode_residual(row_ptr, lat, val, W, b, x), want), 1e-5);
}

TEST(SaeKernelsReference, RejectsMismatchedInputs) {
  Params p = Params::init(8, 16, at::kCPU, 0);
  AdamState s = AdamState::zeros_like(p);
  at::Tensor since = at::zeros({16}, at::kLong);
  StepConfig cfg;
  cfg.k = 4;
  try {
    reference_step(p, s, since, at::randn({5, 9}), cfg);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x must be [n_tokens, 8]; got [5, 9]"), std::string::npos) << e.what();
  }
  cfg.k = 17;
  EXPECT_THROW(reference_step(p, s, since, at::randn({5, 8}), cfg), Error);
  cfg.k = 4;
  at::Tensor bad_since = at::zeros({16}, at::kInt);
  EXPECT_THROW(reference_step(p, s, bad_since, at::randn({5, 8}), cfg), Error);
}

namespace {

// A step whose loss is finite but whose gradient norm overflows float32: latent 0 has a zero decoder row and
// a huge encoder bias, so every token selects it with activation 1e30 (adding nothing to x_hat), and its
// W_dec gradient (~1e30 * residual) squares to inf.
struct OverflowCase {
  Params p;
  AdamState s;
  at::Tensor since, x;
};

OverflowCase overflow_case(at::Device dev) {
  OverflowCase c;
  c.p = Params::init(64, 256, dev, 3);
  c.p.W_dec[0].zero_();
  c.p.b_enc[0].fill_(1e30);
  c.s = AdamState::zeros_like(c.p);
  c.since = at::full({256}, 7, at::TensorOptions().dtype(at::kLong).device(dev));
  c.x = at::randn({32, 64}, at::TensorOptions().device(dev));
  return c;
}

// Runs one step (reference or CUDA) of the overflow case; checks what finite_grad_gate promises.
void check_overflow_step(at::Device dev, bool use_cuda) {
  for (bool gate : {true, false}) {
    SCOPED_TRACE(std::string("finite_grad_gate ") + (gate ? "on" : "off") + (use_cuda ? ", CUDA" : ", reference"));
    OverflowCase c = overflow_case(dev);
    Params before = c.p.clone();
    StepConfig cfg;
    cfg.k = 4;
    cfg.step = 3;
    cfg.finite_grad_gate = gate;
    cfg.compute_dtype = use_cuda ? at::kBFloat16 : at::kFloat;
    StepStats st = use_cuda ? Stepper(Backend::Cuda).step(c.p, c.s, c.since, c.x, cfg)
                            : reference_step(c.p, c.s, c.since, c.x, cfg);
    EXPECT_TRUE(std::isfinite(st.loss.item<double>()));
    EXPECT_FALSE(std::isfinite(st.grad_norm.item<double>()));
    EXPECT_FALSE(st.ok.item<bool>());
    EXPECT_EQ(c.since.min().item<int64_t>(), 7) << "no update, no counter changes";
    const bool unchanged = at::equal(c.p.W_enc.cpu(), before.W_enc.cpu()) && at::equal(c.p.b_enc.cpu(), before.b_enc.cpu()) &&
                           at::equal(c.p.W_dec.cpu(), before.W_dec.cpu()) && at::equal(c.p.b_dec.cpu(), before.b_dec.cpu());
    // Gated: nothing moves (the SAE trainer's rule). Not gated and not clipping: the update is applied.
    EXPECT_EQ(unchanged, gate);
    if (gate) EXPECT_EQ(c.s.W_dec_v.abs().max().item<float>(), 0.f);
  }
}

}  // namespace

TEST(SaeKernelsReference, FiniteGradGateSkipsAnUpdateWithAnOverflowingGradient) {
  check_overflow_step(at::kCPU, /*use_cuda=*/false);
}

TEST(SaeKernelsReference, StepperUsesTheReferenceOffTheGpu) {
  Params p = Params::init(8, 16, at::kCPU, 0);
  AdamState s = AdamState::zeros_like(p);
  at::Tensor since = at::zeros({16}, at::kLong);
  StepConfig cfg;
  cfg.k = 2;
  Stepper auto_stepper;
  auto_stepper.step(p, s, since, at::randn({4, 8}), cfg);
  EXPECT_EQ(auto_stepper.last_backend(), Backend::Reference);
  EXPECT_FALSE(cuda_unsupported_reason(p, at::randn({4, 8}), cfg).empty());
  Stepper cuda_stepper(Backend::Cuda);
  EXPECT_THROW(cuda_stepper.step(p, s, since, at::randn({4, 8}), cfg), Error);
}

// ---- bfloat16 Adam moments: the stochastic rounding's bits and the reference step ----------------------------

namespace {

uint32_t fmix32_scalar(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}

}  // namespace

TEST(SaeKernelsReference, MomentHashFollowsItsDefinitionPast32BitIndices) {
  // The header's formula, computed with uint32 arithmetic, against the int64 tensor version.
  const std::vector<int64_t> idx{0, 1, 2, 12345, (1LL << 31) - 1, (1LL << 32) - 1, 1LL << 32, (1LL << 32) + 7,
                                 (1LL << 40) + 3};
  for (const int64_t step : {1LL, 77LL, (1LL << 33) + 5}) {
    for (int matrix : {0, 1}) {
      const uint32_t seed = moment_seed(step, matrix);
      EXPECT_EQ(seed, fmix32_scalar(uint32_t(step) * 0x9E3779B9u + uint32_t(matrix) * 0x632BE5ABu + 0x2545F491u));
      at::Tensor h = moment_hash(at::tensor(idx, at::kLong), seed);
      for (size_t j = 0; j < idx.size(); ++j) {
        const uint64_t i = uint64_t(idx[j]);
        const uint32_t want = fmix32_scalar((uint32_t(i) * 0x9E3779B9u) ^ (seed + uint32_t(i >> 32) * 0x85EBCA77u));
        EXPECT_EQ(h[int64_t(j)].item<int64_t>(), int64_t(want)) << "index " << i << ", step " << step;
      }
    }
  }
  EXPECT_NE(moment_seed(5, 0), moment_seed(5, 1));
  EXPECT_NE(moment_seed(5, 0), moment_seed(6, 0));
}

TEST(SaeKernelsReference, StochasticRoundingPicksANeighbourWithoutBias) {
  const int64_t n = 1 << 20;
  at::Tensor h = moment_hash(n, moment_seed(3, 0), at::kCPU);
  // 1 + 2^-9 is a quarter of the way from bf16 1.0 to the next value, 1 + 2^-7; -3e-5 is anywhere.
  for (const float x : {1.0f + 0x1p-9f, -3.0e-5f, 7.0f}) {
    for (const bool high : {false, true}) {
      at::Tensor r = round_bf16_stochastic(at::full({n}, x), h, high).to(at::kFloat);
      const float lo = at::scalar_tensor(x).to(at::kBFloat16).item<float>();  // one neighbour (nearest)
      at::Tensor is_lo = r.eq(lo);
      at::Tensor other = r.masked_select(~is_lo);
      if (other.numel() > 0) {
        const float o = other[0].item<float>();
        EXPECT_TRUE(other.eq(o).all().item<bool>()) << x << ": more than two values";
        EXPECT_TRUE((lo <= x && x <= o) || (o <= x && x <= lo)) << x << ": " << o << " is not a neighbour";
      }
      const double mean = r.to(at::kDouble).mean().item<double>();
      EXPECT_LT(std::abs(mean / x - 1), 2e-4) << x << " high " << high << ": biased, mean " << mean;
    }
  }
  // Exact bf16 values stay put; NaN stays NaN; infinities stay infinite.
  at::Tensor exact = at::randn({4096}).to(at::kBFloat16).to(at::kFloat);
  EXPECT_TRUE(at::equal(round_bf16_stochastic(exact, h.narrow(0, 0, 4096), true), exact.to(at::kBFloat16)));
  at::Tensor special = round_bf16_stochastic(
      at::tensor({std::nanf(""), INFINITY, -INFINITY}), h.narrow(0, 0, 3), false).to(at::kFloat);
  EXPECT_TRUE(std::isnan(special[0].item<float>()));
  EXPECT_EQ(special[1].item<float>(), INFINITY);
  EXPECT_EQ(special[2].item<float>(), -INFINITY);
}

TEST(SaeKernelsReference, Bf16MomentsStoreTheFloat32StepStochasticallyRounded) {
  // Same step from the same (bf16-representable) moments, kept in float32 and in bfloat16: the weights move
  // identically (the update uses the unrounded float32 moments) and the bf16 moments are the float32 ones
  // rounded with moment_hash's bits.
  Params p = Params::init(64, 256, at::kCPU, 5);
  AdamState s32 = AdamState::zeros_like(p);
  for (at::Tensor* m : {&s32.W_enc_m, &s32.W_dec_m}) *m = (at::randn_like(*m) * 1e-3).to(at::kBFloat16).to(at::kFloat);
  for (at::Tensor* v : {&s32.W_enc_v, &s32.W_dec_v}) *v = (at::rand_like(*v) * 1e-5).to(at::kBFloat16).to(at::kFloat);
  AdamState s16 = s32.clone();
  for (at::Tensor* m : {&s16.W_enc_m, &s16.W_enc_v, &s16.W_dec_m, &s16.W_dec_v}) *m = m->to(at::kBFloat16);
  EXPECT_EQ(AdamState::zeros_like(p, at::kBFloat16).moment_dtype(), at::kBFloat16);
  Params p32 = p.clone(), p16 = p.clone();
  at::Tensor since32 = at::zeros({256}, at::kLong), since16 = since32.clone();
  StepConfig cfg;
  cfg.k = 8;
  cfg.step = 40;
  cfg.lr = 1e-3;
  at::Tensor x = at::randn({128, 64});
  reference_step(p32, s32, since32, x, cfg);
  reference_step(p16, s16, since16, x, cfg);
  EXPECT_TRUE(at::equal(p32.W_enc, p16.W_enc));
  EXPECT_TRUE(at::equal(p32.W_dec, p16.W_dec));
  const int64_t n = p.W_enc.numel();
  struct M {
    const char* name;
    at::Tensor got, f32;
    int matrix;
    bool high;
  };
  for (const M& q : {M{"W_enc_m", s16.W_enc_m, s32.W_enc_m, 0, false}, M{"W_enc_v", s16.W_enc_v, s32.W_enc_v, 0, true},
                     M{"W_dec_m", s16.W_dec_m, s32.W_dec_m, 1, false}, M{"W_dec_v", s16.W_dec_v, s32.W_dec_v, 1, true}}) {
    ASSERT_EQ(q.got.scalar_type(), at::kBFloat16) << q.name;
    at::Tensor want = round_bf16_stochastic(q.f32, moment_hash(n, moment_seed(cfg.step, q.matrix), at::kCPU), q.high);
    EXPECT_TRUE(at::equal(q.got, want)) << q.name;
    EXPECT_FALSE(at::equal(q.got, q.f32.to(at::kBFloat16))) << q.name << ": rounded to nearest, not stochastically";
  }
  // Mixed moment dtypes are refused.
  s16.W_dec_v = s16.W_dec_v.to(at::kFloat);
  EXPECT_THROW(reference_step(p16, s16, since16, x, cfg), Error);
}

// ---- CUDA kernels against the reference ------------------------------------------------------------------

#ifdef MLXTERP_HAVE_CUDA_KERNELS
#define MLXTERP_REQUIRE_CUDA_KERNELS() \
  do {                                 \
    if (!::mlxterp::sae_kernels::cuda_kernels_available())                                         \
      GTEST_SKIP() << "the CUDA kernels are built in, but no GPU is visible";                    \
  } while (0)
#else
#define MLXTERP_REQUIRE_CUDA_KERNELS() \
  GTEST_SKIP() << "built without the CUDA kernels (configure with -DMLXTERP_CUDA=ON against a CUDA libtorch)"
#endif

#ifdef MLXTERP_HAVE_CUDA_KERNELS
namespace {

#ifdef MLXTERP_CUDA_EMULATE
const at::Device kGpu(at::kCPU);  // tests/emu: the kernels run on CPU threads
#else
const at::Device kGpu(at::kCUDA, 0);
#endif

struct SelectCase {
  const char* name;
  int64_t n, f, k;
  const char* kind;  // random | ties | few_positive | all_negative
};

at::Tensor make_pre(const SelectCase& c) {
  auto o = at::TensorOptions().device(kGpu);
  at::Tensor pre;
  if (std::string(c.kind) == "ties")
    pre = (at::randn({c.n, c.f}, o) * 2).round() / 4;  // a handful of distinct values
  else if (std::string(c.kind) == "few_positive")
    pre = at::randn({c.n, c.f}, o) - 3.5;
  else if (std::string(c.kind) == "all_negative")
    pre = -at::rand({c.n, c.f}, o) - 0.1;
  else
    pre = at::randn({c.n, c.f}, o);
  return pre.to(at::kBFloat16);
}

at::Tensor make_bias(const SelectCase& c) {
  auto o = at::TensorOptions().device(kGpu);
  return std::string(c.kind) == "random" ? at::randn({c.f}, o) * 0.1 : at::zeros({c.f}, o);
}

const SelectCase kSelectCases[] = {
    {"random_small", 37, 4096, 32, "random"},          {"random_wide", 6, 131072, 128, "random"},
    {"k_equals_f", 3, 1024, 1024, "random"},           {"k_1000", 5, 8192, 1000, "random"},
    {"k_1", 9, 2048, 1, "random"},                     {"ties", 7, 65536, 64, "ties"},
    {"few_positive", 11, 8192, 64, "few_positive"},    {"all_negative", 3, 4096, 16, "all_negative"},
};

}  // namespace
#endif

TEST(CudaSaeKernels, TopkRowsMatchesReference) {
  MLXTERP_REQUIRE_CUDA_KERNELS();
#ifdef MLXTERP_HAVE_CUDA_KERNELS
  at::manual_seed(11);
  for (const SelectCase& c : kSelectCases) {
    SCOPED_TRACE(c.name);
    at::Tensor pre = make_pre(c), b = make_bias(c);
    at::Tensor kth;
    auto [lat, val] = cuda::topk_rows(pre, b, c.k, {}, {}, &kth);
    auto [rlat, rval] = ref::topk_rows(pre, b, c.k);
    ASSERT_EQ(lat.sizes(), rlat.sizes());
    EXPECT_TRUE(at::equal(lat.cpu(), rlat.cpu())) << "latents differ in "
                                                  << lat.ne(rlat).sum().item<int64_t>() << " places";
    EXPECT_TRUE(at::equal(val.cpu(), rval.cpu()));
    // Each row's k-th largest is its smallest selected value.
    EXPECT_TRUE(at::equal(kth.cpu(), std::get<0>(rval.min(1)).cpu()));
    // A guess only changes how the rows are read: one a little below most rows' k-th value (the one-read
    // path), 0 (every positive key is a candidate: too many unless few are positive), one above every
    // value (too few candidates), a negative one, and the k-th value itself (its ties are not above it).
    const float q = std::get<0>(at::kthvalue(kth.cpu(), std::max<int64_t>(1, c.n / 50))).item<float>();
    for (float g : {q * 0.99f, 0.f, 1e30f, -1.f, q}) {
      SCOPED_TRACE("guess " + std::to_string(g));
      at::Tensor guess = at::full({}, g, at::TensorOptions().device(kGpu).dtype(at::kFloat));
      auto [glat, gval] = cuda::topk_rows(pre, b, c.k, {}, guess);
      EXPECT_TRUE(at::equal(glat.cpu(), rlat.cpu())) << "latents differ in "
                                                     << glat.ne(rlat).sum().item<int64_t>() << " places";
      EXPECT_TRUE(at::equal(gval.cpu(), rval.cpu()));
    }
  }
  // AuxK's selection: only latents in the mask count (others are 0); large k uses > 48 KB of shared memory.
  for (int64_t k : {64, 2048, 4096}) {
    SCOPED_TRACE("masked k=" + std::to_string(k));
    const SelectCase c{"masked", 3, 16384, k, "random"};
    at::Tensor pre = make_pre(c), b = make_bias(c);
    at::Tensor mask = at::rand({c.f}, at::TensorOptions().device(kGpu)) < 0.3;
    auto [lat, val] = cuda::topk_rows(pre, b, k, mask);
    auto [rlat, rval] = ref::topk_rows(pre, b, k, mask);
    EXPECT_TRUE(at::equal(lat.cpu(), rlat.cpu()));
    EXPECT_TRUE(at::equal(val.cpu(), rval.cpu()));
    at::Tensor picked_positive = val.gt(0).cpu();
    at::Tensor in_mask = mask.cpu().index_select(0, lat.cpu().flatten()).view_as(picked_positive);
    EXPECT_TRUE(in_mask.logical_or(picked_positive.logical_not()).all().item<bool>()) << "a positive outside the mask";
  }
  // A strided view (rows of a wider matrix) reads only its own columns.
  at::Tensor wide = at::randn({4, 4096 + 64}, at::TensorOptions().device(kGpu)).to(at::kBFloat16);
  at::Tensor view = wide.narrow(1, 0, 4096);
  at::Tensor b = at::zeros({4096}, at::TensorOptions().device(kGpu));
  EXPECT_TRUE(at::equal(cuda::topk_rows(view, b, 50).first.cpu(), ref::topk_rows(view, b, 50).first.cpu()));
#endif
}

TEST(CudaSaeKernels, BatchTopkMatchesReference) {
  MLXTERP_REQUIRE_CUDA_KERNELS();
#ifdef MLXTERP_HAVE_CUDA_KERNELS
  at::manual_seed(12);
  for (const SelectCase& c : kSelectCases) {
    if (c.k > 256) continue;
    SCOPED_TRACE(c.name);
    at::Tensor pre = make_pre(c), b = make_bias(c);
    auto [rp, lat, val] = cuda::batch_topk(pre, b, c.k);
    auto [rrp, rlat, rval] = ref::batch_topk(pre, b, c.k);
    EXPECT_TRUE(at::equal(rp.cpu(), rrp.cpu()));
    ASSERT_EQ(lat.sizes(), rlat.sizes());
    EXPECT_TRUE(at::equal(lat.cpu(), rlat.cpu()));
    EXPECT_TRUE(at::equal(val.cpu(), rval.cpu()));
  }
#endif
}

TEST(CudaSaeKernels, SparseDecodeMatchesReference) {
  MLXTERP_REQUIRE_CUDA_KERNELS();
#ifdef MLXTERP_HAVE_CUDA_KERNELS
  at::manual_seed(13);
  auto o = at::TensorOptions().device(kGpu);
  for (int64_t d : {256, 2048, 4096, 12288}) {
    SCOPED_TRACE(d);
    const int64_t n = 50, f = 1000;
    at::Tensor counts = at::randint(0, 300, {n}, o.dtype(at::kLong));  // up to 300: > one staging round
    counts[3] = 0;
    at::Tensor rp = at::zeros({n + 1}, o.dtype(at::kLong));
    rp.narrow(0, 1, n).copy_(counts.cumsum(0));
    const int64_t P = rp[n].item<int64_t>();
    at::Tensor lat = at::randint(0, f, {P}, o.dtype(at::kLong)), val = at::rand({P}, o);
    at::Tensor W = (at::randn({f, d}, o) * 0.05).to(at::kBFloat16), b = at::randn({d}, o);
    for (bool x_bf16 : {false, true}) {
      at::Tensor x = at::randn({n, d}, o);
      if (x_bf16) x = x.to(at::kBFloat16);
      at::Tensor e = cuda::sparse_decode_residual(rp, lat, val, W, b, x);
      at::Tensor r = ref::sparse_decode_residual(rp, lat, val, W, b, x);
      EXPECT_LT(rel_err(e, r), 1e-5) << "x bf16: " << x_bf16;
      EXPECT_FALSE(e.isnan().any().item<bool>());
    }
  }
#endif
}

#ifdef MLXTERP_HAVE_CUDA_KERNELS
namespace {

struct StepCase {
  const char* name;
  int64_t n, d, f, k;
  Selection selection;
  LossNorm loss_norm;
  double max_grad_norm;
  bool x_bf16, remove_parallel, normalize;
  double auxk_coef = 0;
  int64_t k_aux = 0;
  double dead_frac = 0;       // latents that start dead (since_fired = dead_tokens)
  double fire_threshold = 0;
  bool finite_grad_gate = false;  // two passes without clipping
  bool moments_bf16 = false;      // W_enc / W_dec Adam moments in bfloat16 (stochastic rounding)
};

constexpr int64_t kDeadTokens = 5000;

const StepCase kStepCases[] = {
    {"topk_fvu", 512, 256, 2048, 16, Selection::TopK, LossNorm::FVU, 0, false, true, true},
    {"topk_clip_bf16_input", 384, 512, 4096, 32, Selection::TopK, LossNorm::MeanSquare, 0.05, true, true, true},
    {"topk_d2048", 256, 2048, 1024, 64, Selection::TopK, LossNorm::SumPerToken, 0, false, true, true},
    {"topk_d12288_wide_rows", 64, 12288, 256, 8, Selection::TopK, LossNorm::FVU, 0, false, true, true},
    {"batch_topk", 256, 256, 2048, 16, Selection::BatchTopK, LossNorm::FVU, 0, false, true, true},
    {"batch_topk_clip_plain", 256, 128, 1024, 8, Selection::BatchTopK, LossNorm::SumPerToken, 0.5, false, false,
     false},
    {"topk_auxk_clip", 256, 256, 2048, 16, Selection::TopK, LossNorm::SumPerToken, 1.0, false, true, true, 1.0 / 32,
     128, 0.3, 0.05},
    {"topk_auxk_big_k_aux", 128, 256, 4096, 32, Selection::TopK, LossNorm::SumPerToken, 0, false, true, true, 0.5,
     2048, 0.6},
    {"batch_topk_auxk", 256, 256, 2048, 16, Selection::BatchTopK, LossNorm::SumPerToken, 0, true, true, true, 1.0 / 32,
     64, 0.1},
    {"topk_auxk_nothing_dead", 256, 256, 2048, 16, Selection::TopK, LossNorm::SumPerToken, 0, false, true, true,
     1.0 / 32, 128, 0.0},
    {"topk_finite_grad_gate", 256, 256, 2048, 16, Selection::TopK, LossNorm::SumPerToken, 0, false, true, true, 1.0 / 32,
     64, 0.2, 0, true},
    {"topk_bf16_moments", 256, 512, 2048, 16, Selection::TopK, LossNorm::SumPerToken, 0, true, true, true, 0, 0, 0, 0,
     false, true},
    {"topk_auxk_clip_bf16_moments", 256, 256, 2048, 16, Selection::TopK, LossNorm::SumPerToken, 1.0, false, true, true,
     1.0 / 32, 128, 0.3, 0.05, false, true},
};

}  // namespace
#endif

TEST(CudaSaeStep, MatchesReferenceStep) {
  MLXTERP_REQUIRE_CUDA_KERNELS();
#ifdef MLXTERP_HAVE_CUDA_KERNELS
  auto o = at::TensorOptions().device(kGpu);
  const char* only = std::getenv("MLXTERP_STEP_CASE");  // debugging: run one case
  for (const StepCase& c : kStepCases) {
    if (only && std::string(only) != c.name) continue;
    // AuxK three ways: dense GEMMs sized from the previous step's dead count (the default; step 1 is per pair),
    // per (token, latent) pair only, and 50 dense latents with the rest per pair.
    std::vector<int64_t> dense_caps{-1};
    if (c.auxk_coef > 0) dense_caps = {-1, 0, 50};
    for (const int64_t dense_cap : dense_caps) {
      SCOPED_TRACE(std::string(c.name) + ", aux_dense_cap " + std::to_string(dense_cap));
      Params p = Params::init(c.d, c.f, kGpu, 21);
      p.b_enc = at::randn({c.f}, o) * 0.05;
      p.b_dec = at::randn({c.d}, o) * 0.1;
      // A run in progress: Adam moments populated, so the update is linear in the gradient (a first Adam
      // step is ~lr * sign(g) and would hide gradient errors).
      AdamState s = AdamState::zeros_like(p);
      for (at::Tensor* m : {&s.W_enc_m, &s.b_enc_m, &s.W_dec_m, &s.b_dec_m}) *m = at::randn_like(*m) * 1e-3;
      for (at::Tensor* v : {&s.W_enc_v, &s.b_enc_v, &s.W_dec_v, &s.b_dec_v}) *v = at::rand_like(*v) * 1e-5 + 1e-7;
      at::Tensor since = at::randint(0, 1000, {c.f}, o.dtype(at::kLong));
      const int64_t n_dead = c.auxk_coef > 0 ? int64_t(c.dead_frac * c.f) : 0;
      since.narrow(0, 0, int64_t(c.dead_frac * c.f)).fill_(kDeadTokens);
      // The dead latents' first moments start at 0: their AuxK gradients can be read back from m (below).
      for (at::Tensor* m : {&s.W_enc_m, &s.W_dec_m, &s.b_enc_m}) m->narrow(0, 0, n_dead).zero_();
      if (c.moments_bf16)
        for (at::Tensor* m : {&s.W_enc_m, &s.W_enc_v, &s.W_dec_m, &s.W_dec_v}) *m = m->to(at::kBFloat16);
      Params pc = p.clone();
      AdamState sc = s.clone();
      at::Tensor since_c = since.clone();
      StepConfig cfg;
      cfg.k = c.k;
      cfg.selection = c.selection;
      cfg.loss_norm = c.loss_norm;
      cfg.lr = 1e-3;
      cfg.weight_decay = 0.01;
      cfg.max_grad_norm = c.max_grad_norm;
      cfg.finite_grad_gate = c.finite_grad_gate;
      cfg.remove_parallel_grad = c.remove_parallel;
      cfg.normalize_decoder = c.normalize;
      cfg.auxk_coef = c.auxk_coef;
      cfg.k_aux = c.k_aux;
      cfg.dead_tokens = kDeadTokens;
      cfg.fire_threshold = c.fire_threshold;
      cfg.aux_dense_cap = dense_cap;
      Stepper stepper(Backend::Cuda), twin(Backend::Cuda);
      for (int t = 0; t < 3; ++t) {
        SCOPED_TRACE("step " + std::to_string(t + 1));
        cfg.step = 10 + t;
        at::Tensor x = at::randn({c.n, c.d}, o) * 1.5 + 0.2;
        if (c.x_bf16) x = x.to(at::kBFloat16);
        // Every step starts the reference from the CUDA path's state (the trajectories would otherwise drift
        // apart by bf16 rounding, and near-ties at the k-th value would flip): identical inputs each step.
        Params pr = pc.clone(), before = pc.clone();
        AdamState sr = sc.clone(), sbefore = sc.clone();
        at::Tensor since_r = since_c.clone();
        // bf16 moments: the same CUDA step from the same state with the moments in float32 (a second Stepper,
        // so its AuxK sizing history matches): it must move the weights identically, and the bf16 moments
        // must be its float32 moments rounded with moment_hash's bits.
        Params pt = pc.clone();
        AdamState st32 = sc.clone();
        at::Tensor since_t = since_c.clone();
        if (c.moments_bf16) {
          for (at::Tensor* m : {&st32.W_enc_m, &st32.W_enc_v, &st32.W_dec_m, &st32.W_dec_v}) *m = m->to(at::kFloat);
          twin.step(pt, st32, since_t, x, cfg);
        }
        StepStats a = stepper.step(pc, sc, since_c, x, cfg);
        StepStats r = reference_step(pr, sr, since_r, x, cfg);
        ASSERT_EQ(stepper.last_backend(), Backend::Cuda);
        // Same GEMM inputs (the step keeps its bf16 copies equal to the rounded weights), same selection rule:
        // identical selections, values and dead-latent counters.
        EXPECT_TRUE(at::equal(a.row_ptr.cpu(), r.row_ptr.cpu()));
        EXPECT_EQ(a.latents.eq(r.latents).to(at::kDouble).mean().item<double>(), 1.0);
        EXPECT_TRUE(at::equal(a.values.cpu(), r.values.cpu()));
        EXPECT_TRUE(at::equal(a.fire_count.cpu(), r.fire_count.cpu()));
        EXPECT_TRUE(at::equal(since_c.cpu(), since_r.cpu()));
        EXPECT_EQ(a.kept_min.item<float>(), r.kept_min.item<float>());
        EXPECT_EQ(a.clipped.item<float>(), r.clipped.item<float>());
        if (c.max_grad_norm > 0 && t == 0) EXPECT_EQ(a.clipped.item<float>(), 1.f) << "the case should clip";
        if (c.auxk_coef > 0) {
          EXPECT_LT(std::abs(a.aux.item<double>() - r.aux.item<double>()), 1e-3 * std::abs(r.aux.item<double>()) + 1e-9);
          EXPECT_EQ(a.aux.item<double>() > 0, c.dead_frac > 0) << "AuxK active exactly when latents are dead";
        }
        EXPECT_LT(std::abs(a.loss.item<double>() / r.loss.item<double>() - 1), 1e-3);
        EXPECT_LT(std::abs(a.l0.item<double>() - r.l0.item<double>()), 0.05 * c.k);
        EXPECT_LT(std::abs(a.grad_norm.item<double>() / r.grad_norm.item<double>() - 1), 1e-2);
        EXPECT_TRUE(a.ok.item<bool>());
        EXPECT_LT(rel_err(a.residual, r.residual), 1e-2);
        // The update of every tensor (after - before) agrees to bf16-gradient accuracy.
        struct Pair {
          const char* name;
          at::Tensor got, want, prev;
        };
        for (const Pair& q : {Pair{"W_enc", pc.W_enc, pr.W_enc, before.W_enc}, Pair{"b_enc", pc.b_enc, pr.b_enc, before.b_enc},
                              Pair{"W_dec", pc.W_dec, pr.W_dec, before.W_dec}, Pair{"b_dec", pc.b_dec, pr.b_dec, before.b_dec},
                              Pair{"W_enc_m", sc.W_enc_m, sr.W_enc_m, sbefore.W_enc_m},
                              Pair{"W_dec_v", sc.W_dec_v, sr.W_dec_v, sbefore.W_dec_v},
                              Pair{"b_dec_m", sc.b_dec_m, sr.b_dec_m, sbefore.b_dec_m}}) {
          EXPECT_FALSE(q.got.isnan().any().item<bool>()) << q.name;
          const at::Tensor prev = q.prev.to(at::kFloat);  // bf16 moments: subtract in float32
          EXPECT_LT(rel_err(q.got.to(at::kFloat) - prev, q.want.to(at::kFloat) - prev), 3e-2) << q.name;
        }
        if (c.moments_bf16) {
          EXPECT_TRUE(at::equal(pc.W_enc, pt.W_enc) && at::equal(pc.W_dec, pt.W_dec) && at::equal(pc.b_enc, pt.b_enc))
              << "bf16 moments changed this step's update (it uses the float32 moments before rounding)";
          const int64_t n = pc.W_enc.numel();
          struct M {
            const char* name;
            at::Tensor got, f32, prev;
            int matrix;
            bool high;
          };
          for (const M& q : {M{"W_enc_m", sc.W_enc_m, st32.W_enc_m, sbefore.W_enc_m, 0, false},
                             M{"W_enc_v", sc.W_enc_v, st32.W_enc_v, sbefore.W_enc_v, 0, true},
                             M{"W_dec_m", sc.W_dec_m, st32.W_dec_m, sbefore.W_dec_m, 1, false},
                             M{"W_dec_v", sc.W_dec_v, st32.W_dec_v, sbefore.W_dec_v, 1, true}}) {
            ASSERT_EQ(q.got.scalar_type(), at::kBFloat16) << q.name;
            at::Tensor want = round_bf16_stochastic(q.f32, moment_hash(n, moment_seed(cfg.step, q.matrix), kGpu), q.high);
            EXPECT_TRUE(at::equal(q.got, want)) << q.name << ": not the float32 moments stochastically rounded";
            // v's 0.1% decay per step is below bf16's spacing: rounded to nearest most of v would never change.
            EXPECT_GT(q.got.ne(q.prev).to(at::kDouble).mean().item<double>(), 0.1) << q.name << " did not move";
          }
        }
        // Dead latents no token selected this step: AuxK is their whole gradient (dense or per pair; next to
        // a main gradient it is ~1e-4 of it and would be invisible). Their first moments started at 0, so
        // m - beta1 * m_before = (1 - beta1) * clip * g is read without cancellation.
        if (n_dead > 0) {
          at::Tensor pure = at::zeros({c.f}, at::TensorOptions().dtype(at::kBool).device(kGpu));
          pure.narrow(0, 0, n_dead).fill_(true);
          pure.index_fill_(0, a.latents, false);
          at::Tensor rows = pure.nonzero().squeeze(1);
          EXPECT_GT(rows.numel(), 0) << "no dead latent without a main selection: the check below is empty";
          for (const Pair& q : {Pair{"W_enc_m", sc.W_enc_m, sr.W_enc_m, sbefore.W_enc_m},
                                Pair{"b_enc_m", sc.b_enc_m, sr.b_enc_m, sbefore.b_enc_m},
                                Pair{"W_dec_m", sc.W_dec_m, sr.W_dec_m, sbefore.W_dec_m}}) {
            auto grad = [&](const at::Tensor& m) {
              return (m.to(at::kFloat) - cfg.beta1 * q.prev.to(at::kFloat)).index_select(0, rows);
            };
            EXPECT_GT(grad(q.want).abs().max().item<double>(), 0) << q.name;
            EXPECT_LT(rel_err(grad(q.got), grad(q.want)), 3e-2) << q.name << ", AuxK-only rows";
          }
        }
        // The bf16 copies the next step's GEMM and decoder read are the updated weights, rounded.
        EXPECT_TRUE(at::equal(stepper.W_enc_bf16(), pc.W_enc.to(at::kBFloat16)));
        EXPECT_TRUE(at::equal(stepper.W_dec_bf16(), pc.W_dec.to(at::kBFloat16)));
        if (c.normalize) {
          EXPECT_LT(max_abs_diff(pc.W_dec.norm(2, {1}), at::ones({c.f})), 1e-5);
        }
      }
    }
  }
#endif
}

TEST(CudaSaeStep, FiniteGradGateSkipsAnUpdateWithAnOverflowingGradient) {
  MLXTERP_REQUIRE_CUDA_KERNELS();
#ifdef MLXTERP_HAVE_CUDA_KERNELS
  check_overflow_step(kGpu, /*use_cuda=*/true);
#endif
}

TEST(CudaSaeStep, AllowUpdateFalseChangesNothing) {
  MLXTERP_REQUIRE_CUDA_KERNELS();
#ifdef MLXTERP_HAVE_CUDA_KERNELS
  auto o = at::TensorOptions().device(kGpu);
  Params p = Params::init(128, 1024, kGpu, 5);
  AdamState s = AdamState::zeros_like(p);
  at::Tensor since = at::zeros({1024}, o.dtype(at::kLong));
  StepConfig cfg;
  cfg.k = 8;
  cfg.allow_update = at::zeros({}, o.dtype(at::kBool));
  Params before = p.clone();
  Stepper stepper(Backend::Cuda);
  StepStats st = stepper.step(p, s, since, at::randn({64, 128}, o), cfg);
  EXPECT_FALSE(st.ok.item<bool>());
  EXPECT_TRUE(at::equal(p.W_enc, before.W_enc) && at::equal(p.W_dec, before.W_dec) &&
              at::equal(p.b_enc, before.b_enc) && at::equal(p.b_dec, before.b_dec));
  EXPECT_EQ(s.W_dec_m.abs().max().item<float>(), 0.f);
  EXPECT_EQ(since.abs().max().item<int64_t>(), 0);  // counters advance only with an update
  EXPECT_TRUE(at::isfinite(st.loss).item<bool>());
  // The next step (updates allowed) starts from copies that still match the weights.
  cfg.allow_update = at::Tensor();
  stepper.step(p, s, since, at::randn({64, 128}, o), cfg);
  EXPECT_TRUE(at::equal(stepper.W_enc_bf16(), p.W_enc.to(at::kBFloat16)));
#endif
}

TEST(CudaSaeStep, UnsupportedShapesFallBackToTheReference) {
  MLXTERP_REQUIRE_CUDA_KERNELS();
#ifdef MLXTERP_HAVE_CUDA_KERNELS
  Params p = Params::init(12, 64, kGpu, 0);  // d_in = 12: not a multiple of 8
  AdamState s = AdamState::zeros_like(p);
  at::Tensor since = at::zeros({64}, at::TensorOptions().device(kGpu).dtype(at::kLong));
  StepConfig cfg;
  cfg.k = 4;
  at::Tensor x = at::randn({16, 12}, at::TensorOptions().device(kGpu));
  EXPECT_NE(cuda_unsupported_reason(p, x, cfg).find("d_in = 12"), std::string::npos);
  Stepper stepper;
  stepper.step(p, s, since, x, cfg);
  EXPECT_EQ(stepper.last_backend(), Backend::Reference);
  Stepper forced(Backend::Cuda);
  EXPECT_THROW(forced.step(p, s, since, x, cfg), Error);
#endif
}
