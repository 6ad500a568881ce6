// The trainer's CUDA hook (mlxterp::cuda::sae_train_step_topk, src/cuda/sae_train_step_cuda.cpp) against the
// trainer's own reference step (sae_train_step_reference) on the same state and batches. Needs the trainer
// (mlxterp/sae_step.hpp), the CUDA build and a GPU; skips otherwise, saying which is missing.
#include "common.hpp"

#if __has_include("mlxterp/sae_step.hpp")
#include "mlxterp/sae_config.hpp"
#include "mlxterp/sae_step.hpp"
#define MLXTERP_HAVE_SAE_TRAINER 1
#endif

using namespace mlxterp;

#if defined(MLXTERP_HAVE_SAE_TRAINER) && defined(MLXTERP_HAVE_CUDA_KERNELS)
namespace {

double rel(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.to(at::kDouble).cpu(), w = want.to(at::kDouble).cpu();
  const double n = w.norm().item<double>();
  return (g - w).norm().item<double>() / (n > 0 ? n : 1.0);
}

struct Case {
  const char* sae_type;
  double auxk_coef, clip;
  const char* optimizer_state_dtype = "float32";
};

}  // namespace
#endif

TEST(CudaTrainStep, MatchesTheTrainersReferenceStep) {
#if !defined(MLXTERP_HAVE_SAE_TRAINER)
  GTEST_SKIP() << "the SAE trainer (mlxterp/sae_step.hpp) is not in this tree";
#elif !defined(MLXTERP_HAVE_CUDA_KERNELS)
  GTEST_SKIP() << "built without the CUDA kernels (configure with -DMLXTERP_CUDA=ON against a CUDA libtorch)";
#else
#ifdef MLXTERP_CUDA_EMULATE
  const at::Device gpu(at::kCPU);  // tests/emu: the kernels run on CPU threads
#else
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU visible";
  const at::Device gpu(at::kCUDA, 0);
#endif
  auto o = at::TensorOptions().device(gpu);
  const int64_t d_in = 256, n = 512;
  for (const Case& c : {Case{"topk", 0.0, 0.0}, Case{"topk", 1.0 / 32, 1.0}, Case{"batchtopk", 1.0 / 32, 0.0},
                        Case{"batchtopk", 0.0, 1.0}, Case{"topk", 1.0 / 32, 1.0, "bfloat16"}}) {
    SCOPED_TRACE(std::string(c.sae_type) + " auxk " + std::to_string(c.auxk_coef) + " clip " + std::to_string(c.clip) +
                 " moments " + c.optimizer_state_dtype);
    SAEConfig cfg;
    cfg.sae_type = c.sae_type;
    cfg.expansion_factor = 8;
    cfg.k = 16;
    cfg.dtype = "bfloat16";
    cfg.gradient_clip = c.clip;
    cfg.auxk_coef = c.auxk_coef;
    cfg.k_aux = 64;
    cfg.dead_tokens_window = 1000;
    cfg.weight_decay = 0.01;
    cfg.b_dec_init = "mean";
    cfg.optimizer_state_dtype = c.optimizer_state_dtype;
    cfg.warmup_steps = 0;
    cfg.validate_for(d_in);
    at::manual_seed(7);
    at::Tensor first = at::randn({2048, d_in}, o) * 1.5 + 0.2;
    SaeTrainState a = sae_init_state(cfg, d_in, first, gpu);
    const int64_t F = a.d_sae;
    // A run in progress: populated Adam moments (a first Adam step is ~lr * sign(g) and hides gradient
    // errors), a quarter of the latents dead.
    a.adam_step = 10;
    at::manual_seed(8);
    for (at::Tensor* m : {&a.adam_m.W_enc, &a.adam_m.b_enc, &a.adam_m.W_dec, &a.adam_m.b_dec})
      m->copy_(at::randn_like(*m) * 1e-3);
    for (at::Tensor* v : {&a.adam_v.W_enc, &a.adam_v.b_enc, &a.adam_v.W_dec, &a.adam_v.b_dec})
      v->copy_(at::rand_like(*v) * 1e-5 + 1e-7);
    for (int step = 0; step < 3; ++step) {
      SCOPED_TRACE("step " + std::to_string(step + 1));
      // Dead again at every step: AuxK revives latents quickly, and the test must exercise it each time.
      a.tokens_since_fired.narrow(0, 0, F / 4).fill_(100000);
      // The trainer's reference starts every step from the CUDA path's state (a checkpoint round trip).
      SaeTrainState b;
      b.arch = a.arch;
      b.d_in = a.d_in;
      b.d_sae = a.d_sae;
      b.tied = a.tied;
      b.from_map(a.to_map(), gpu);
      b.adam_step = a.adam_step;
      const SaeParams before = a.params.clone(), m_before = a.adam_m.clone(), v_before = a.adam_v.clone();
      at::Tensor ma0 = a.metric_sums.cpu().clone(), mb0 = b.metric_sums.cpu().clone();
      at::Tensor x = at::randn({n, d_in}, o) * 1.5 + 0.2;
      SaeStepArgs args = sae_step_args(cfg, d_in, a.adam_step, 1000);
      ASSERT_TRUE(cuda::sae_train_step_topk(a, x, args)) << "the CUDA path declined this configuration";
      sae_train_step_reference(b, x, args);
      ++a.adam_step;
      for (auto [name, got, want, prev] :
           {std::tuple{"W_enc", a.params.W_enc, b.params.W_enc, before.W_enc},
            std::tuple{"b_enc", a.params.b_enc, b.params.b_enc, before.b_enc},
            std::tuple{"W_dec", a.params.W_dec, b.params.W_dec, before.W_dec},
            std::tuple{"b_dec", a.params.b_dec, b.params.b_dec, before.b_dec}})
        EXPECT_LT(rel(got - prev, want - prev), 3e-2) << name;
      // The moments (bf16 ones kept bf16: the kernels round them as the trainer's reference does).
      const bool m16 = std::string(c.optimizer_state_dtype) == "bfloat16";
      for (auto [name, got, want, prev] : {std::tuple{"m W_enc", a.adam_m.W_enc, b.adam_m.W_enc, m_before.W_enc},
                                           std::tuple{"v W_dec", a.adam_v.W_dec, b.adam_v.W_dec, v_before.W_dec}}) {
        EXPECT_EQ(got.scalar_type(), m16 ? at::kBFloat16 : at::kFloat) << name;
        EXPECT_EQ(want.scalar_type(), got.scalar_type()) << name;
        const at::Tensor p32 = prev.to(at::kFloat);
        // bf16: a step changes v by ~0.1%, a quarter of its spacing, so the change is 0 or one step of 0.4%
        // wherever the two sides' float32 values (bf16 vs float32 residuals) straddle a rounding point.
        EXPECT_LT(rel(got.to(at::kFloat) - p32, want.to(at::kFloat) - p32), m16 ? 0.1 : 3e-2) << name;
      }
      // The trainer's reference decodes with float32 activations, the kernels with the bf16 GEMM's: the
      // losses agree to bf16 accuracy, the counters almost exactly. Compared: this step's metric sums.
      at::Tensor ma = a.metric_sums.cpu() - ma0, mb = b.metric_sums.cpu() - mb0;
      auto near = [&](int64_t slot, double tol, const char* what) {
        const double va = ma[slot].item<double>(), vb = mb[slot].item<double>();
        EXPECT_NEAR(va, vb, tol * std::abs(vb) + 1e-9) << what;
      };
      near(kMetSteps, 0, "steps");
      near(kMetTokens, 0, "tokens");
      near(kMetLoss, 1e-2, "loss");
      near(kMetMse, 1e-2, "mse");
      near(kMetSseRaw, 1e-2, "sse (raw)");
      near(kMetSstRaw, 1e-6, "sst (raw)");
      near(kMetAux, 2e-2, "aux");
      near(kMetGradNorm, 2e-2, "grad norm");
      near(kMetCos, 1e-3, "cos");
      near(kMetL0, 0.01, "l0");
      near(kMetL1, 1e-2, "l1");
      near(kMetClipped, 0, "clipped");
      if (c.auxk_coef > 0) EXPECT_GT(ma[kMetAux].item<double>(), 0) << "AuxK had dead latents";
      EXPECT_EQ(a.bad_steps.item<int64_t>(), 0);
      EXPECT_EQ(a.window_tokens.item<int64_t>(), b.window_tokens.item<int64_t>());
      const double same_dead = a.tokens_since_fired.eq(b.tokens_since_fired).to(at::kDouble).mean().item<double>();
      EXPECT_GT(same_dead, 0.99);
      EXPECT_LT(rel(a.fire_count, b.fire_count), 2e-2);
      if (std::string(c.sae_type) == "batchtopk") {
        EXPECT_NEAR(a.threshold_ema.item<double>(), b.threshold_ema.item<double>(),
                    2e-2 * std::abs(b.threshold_ema.item<double>()));
      }
    }
  }
#endif
}
