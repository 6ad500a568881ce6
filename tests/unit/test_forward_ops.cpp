// The fused forward kernels (src/cuda/forward_kernels.cu) against the libtorch ops they replace: RMSNorm,
// SiLU(gate) * up and the rotary embedding on bf16, and a whole bf16 forward of the embedded model with and
// without them. The kernel comparisons need the CUDA build and MLXTERP_TEST_DEVICE=cuda (elsewhere they
// skip, saying so); the dispatch rules (which inputs the fused path declines) are checked everywhere.
#include "common.hpp"
#include "cuda/forward_ops.hpp"
#include "mlxterp/model.hpp"
#include "models/blocks.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

// Restores the fused path's switch when a test ends.
struct FusedSwitch {
  bool was = forward_ops::enabled();
  ~FusedSwitch() { forward_ops::set_enabled(was); }
};

// Runs f with the fused kernels off (the libtorch ops).
template <class F>
at::Tensor unfused(F f) {
  FusedSwitch keep;
  forward_ops::set_enabled(false);
  return f();
}

// The kernels run on the GPU, or on the CPU under tests/emu (kernels emulated on host tensors).
#ifdef MLXTERP_CUDA_EMULATE
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif
bool fused_device() { return forward_ops::built() && (kEmulated || test_device().is_cuda()); }

#define REQUIRE_FUSED_DEVICE()                                                                                     \
  do {                                                                                                             \
    if (!forward_ops::built()) GTEST_SKIP() << "the fused forward kernels need the CUDA build (-DMLXTERP_CUDA=ON)"; \
    if (!fused_device()) GTEST_SKIP() << "the fused forward kernels run on a GPU: MLXTERP_TEST_DEVICE=cuda";       \
  } while (0)

at::Tensor bf16_randn(at::IntArrayRef shape, double scale = 1.0) {
  return (at::randn(shape) * scale).to(test_device()).to(at::kBFloat16);
}

// Elements that differ, and whether every difference is at most one bf16 ulp of the reference.
struct Diff {
  int64_t differing = 0;
  bool within_one_ulp = true;
};
Diff compare_bf16(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.to(at::kFloat).cpu(), w = want.to(at::kFloat).cpu();
  at::Tensor ne = g.ne(w);
  Diff d;
  d.differing = ne.sum().item<int64_t>();
  if (d.differing) {
    // One bf16 ulp at |w|: 2^(exponent(w) - 7).
    at::Tensor ulp = at::pow(2.0, at::floor(at::log2(w.abs().clamp_min(1e-30))) - 7);
    d.within_one_ulp = ((g - w).abs() <= ulp * 1.0001).logical_or(ne.logical_not()).all().item<bool>();
  }
  return d;
}

}  // namespace

TEST(ForwardOps, DeclineWhatTheKernelsDoNotTake) {
  // CPU tensors, float32, autograd inputs and odd widths all go to the libtorch ops (undefined = declined).
  at::Tensor x = at::randn({4, 16}), w = at::randn({16});
  if (!kEmulated) {  // (emulated, host tensors stand for device ones)
    for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
      at::Tensor xt = x.to(t), wt = w.to(t);
      EXPECT_FALSE(forward_ops::rms_norm(xt, wt, 1e-5, false).defined());
      EXPECT_FALSE(forward_ops::silu_mul(xt, xt).defined());
      EXPECT_FALSE(forward_ops::rope(xt.view({1, 1, 4, 16}), at::randn({1, 4, 16}), at::randn({1, 4, 16})).defined());
    }
  }
  if (!fused_device()) return;
  const at::Device dev = test_device();
  at::Tensor xf = x.to(dev), wf = w.to(dev);
  EXPECT_FALSE(forward_ops::rms_norm(xf, wf, 1e-5, false).defined()) << "float32";
  at::Tensor xb = xf.to(at::kBFloat16), wb = wf.to(at::kBFloat16);
  EXPECT_TRUE(forward_ops::rms_norm(xb, wb, 1e-5, false).defined());
  EXPECT_FALSE(forward_ops::rms_norm(xb.narrow(1, 0, 12), wb.narrow(0, 0, 12), 1e-5, false).defined())
      << "rows that are not contiguous";
  EXPECT_FALSE(forward_ops::rms_norm(xb.clone().requires_grad_(true), wb, 1e-5, false).defined()) << "autograd";
  EXPECT_TRUE(forward_ops::silu_mul(xb, xb * 2).defined());
  EXPECT_FALSE(forward_ops::silu_mul(xb, xb.view({16, 4})).defined()) << "shapes differ";
  {
    FusedSwitch keep;
    forward_ops::set_enabled(false);
    EXPECT_FALSE(forward_ops::rms_norm(xb, wb, 1e-5, false).defined()) << "switched off";
  }
}

TEST(ForwardOps, RmsNormMatchesLibtorchOps) {
  REQUIRE_FUSED_DEVICE();
  at::manual_seed(3);
  for (bool plus_one : {false, true}) {
    for (auto shape : {std::vector<int64_t>{64, 4096}, std::vector<int64_t>{3, 5, 72}, std::vector<int64_t>{7, 8}}) {
      SCOPED_TRACE((plus_one ? "plus_one, d=" : "d=") + std::to_string(shape.back()));
      at::Tensor x = bf16_randn(shape, 3.0), w = bf16_randn({shape.back()}, 0.5);
      at::Tensor got = forward_ops::rms_norm(x, w, 1e-5, plus_one);
      ASSERT_TRUE(got.defined());
      at::Tensor want = unfused([&] { return blocks::rms_norm(x, w, 1e-5, plus_one); });
      ASSERT_EQ(got.sizes(), want.sizes());
      ASSERT_EQ(got.scalar_type(), at::kBFloat16);
      // The sum of squares is reduced in another order: a rounding may flip, by one ulp, rarely.
      const Diff d = compare_bf16(got, want);
      EXPECT_LE(d.differing, want.numel() / 500 + 1);
      EXPECT_TRUE(d.within_one_ulp);
    }
  }
  // Through the model-facing entry point: blocks::rms_norm takes the fused path itself.
  at::Tensor x = bf16_randn({16, 256}), w = bf16_randn({256});
  EXPECT_EQ(compare_bf16(blocks::rms_norm(x, w, 1e-6), forward_ops::rms_norm(x, w, 1e-6, false)).differing, 0);
}

TEST(ForwardOps, SiluTimesUpMatchesLibtorch) {
  REQUIRE_FUSED_DEVICE();
  at::manual_seed(4);
  for (int64_t n : {int64_t(8), int64_t(4096 * 3 + 8), int64_t(1) << 20}) {
    at::Tensor g = bf16_randn({n}, 6.0), u = bf16_randn({n}, 2.0);
    g.index_put_({0}, -100.0);  // exp overflow side: silu -> -0
    at::Tensor got = forward_ops::silu_mul(g, u);
    ASSERT_TRUE(got.defined());
    SCOPED_TRACE("n=" + std::to_string(n));
    // CUDA's bf16 silu computes in float32 and rounds once; so does the kernel.
    at::Tensor by_float = (at::silu(g.to(at::kFloat)).to(at::kBFloat16).to(at::kFloat) * u.to(at::kFloat))
                              .to(at::kBFloat16);
    const Diff d = compare_bf16(got, by_float);  // exp may differ by an ulp between libms: rare flips
    EXPECT_LE(d.differing, n / 1000 + 1);
    EXPECT_TRUE(d.within_one_ulp);
    // On the GPU the libtorch ops are the same float32 formula: bitwise equal. (Not under the emulator: CPU
    // libtorch's bf16 silu rounds its intermediate steps to bf16.)
    if (!kEmulated) {
      at::Tensor want = unfused([&] { return blocks::gated_activation("silu", g, u); });
      EXPECT_EQ(compare_bf16(got, want).differing, 0);
    }
  }
}

TEST(ForwardOps, RopeIsBitwiseTheLibtorchResult) {
  REQUIRE_FUSED_DEVICE();
  at::manual_seed(5);
  const at::Device dev = test_device();
  struct Case {
    int64_t b, t, h, d;
    double partial;
    const char* type;
  };
  for (const Case& c : {Case{2, 33, 4, 64, 1.0, "llama3"}, Case{1, 17, 3, 64, 0.5, "default"},
                        Case{3, 9, 2, 128, 1.0, "yarn"}}) {
    SCOPED_TRACE(c.type);
    RopeParams p;
    p.type = c.type;
    p.theta = 500000;
    p.partial_rotary_factor = c.partial;
    p.factor = 8;
    p.original_max_position_embeddings = 16;
    blocks::Rope rope = blocks::make_rope(p, c.d, 64);
    // Positions as the models make them: [b, t] (an expanded arange), and an offset one (a cache).
    at::Tensor pos = blocks::default_positions(c.b, c.t, 5, {}, dev);
    auto [cos, sin] = blocks::rope_cos_sin(rope, pos);  // [b, t, rot] float32
    // q as attention sees it: [b, t, h, d] projected, viewed as [b, h, t, d] (not contiguous).
    at::Tensor q = bf16_randn({c.b, c.t, c.h, c.d}, 2.0).transpose(1, 2);
    at::Tensor got = forward_ops::rope(q, cos, sin);
    ASSERT_TRUE(got.defined());
    at::Tensor want = unfused([&] { return blocks::apply_rope(q, cos, sin); });
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_EQ(compare_bf16(got, want).differing, 0);
  }
}

TEST(ForwardOps, EmbeddedModelForwardInBf16MatchesTheUnfusedForward) {
  REQUIRE_FUSED_DEVICE();
  LoadOptions o;
  o.device = test_device();
  o.dtype = at::kBFloat16;
  o.load_tokenizer = false;
  LoadedModel m = load_model(join_path(MLXTERP_TEST_SOURCE_DIR, "models/kjv-llama"), o);
  at::manual_seed(6);
  at::Tensor ids = at::randint(0, m.model->config().d_vocab, {2, 48}, at::TensorOptions().dtype(at::kLong));
  at::Tensor fused = m.model->forward(ids).to(at::kFloat).cpu();
  at::Tensor plain = unfused([&] { return m.model->forward(ids); }).to(at::kFloat).cpu();
  // Only RMSNorm may differ (a flipped rounding now and then), so the logits agree closely.
  const double scale = plain.abs().max().item<double>();
  EXPECT_LT(max_abs_diff(fused, plain), 0.03 * scale);
  EXPECT_GT(fused.argmax(-1).eq(plain.argmax(-1)).to(at::kFloat).mean().item<double>(), 0.97);
  EXPECT_GT(at::cosine_similarity(fused.flatten(), plain.flatten(), 0).item<double>(), 0.9999);
}
