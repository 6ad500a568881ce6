// Activation patching: the sanity laws (full residual patch = 100%, no patch = 0%, final layer's
// last position = the clean run), head/component consistency, batching, metrics, alignment.
#include "analysis_fixtures.hpp"
#include "mlxterp/analysis_patching.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

PatchOptions logit_diff_options(const PromptPair& p, const std::string& component) {
  PatchOptions o;
  o.component = component;
  o.metric = {Metric::LogitDiff, p.answer, p.wrong, -1};
  return o;
}

// Law 1: patching the whole clean residual stream (all positions) at any layer recovers 100% (+-0.1%),
// for resid_pre, resid_mid and resid_post, on stories260K and on golden models.
void check_full_residual_patch(const InterpretableModel& m, const std::vector<int32_t>& clean,
                               const std::vector<int32_t>& corrupt, int32_t answer, int32_t wrong, const std::string& what) {
  for (const char* comp : {"resid_pre", "resid_mid", "resid_post"}) {
    PatchOptions o;
    o.component = comp;
    o.metric = {Metric::LogitDiff, answer, wrong, -1};
    PatchResult r = activation_patching(m, Prompt::ids(clean), Prompt::ids(corrupt), o);
    ASSERT_GT(std::abs(r.clean_value - r.corrupt_value), 1e-3) << what << ": the prompts do not differ in the metric";
    for (int64_t l = 0; l < r.recovery.size(0); ++l) {
      double rec = r.recovery[l][0][0].item<double>();
      EXPECT_NEAR(rec, 1.0, 1e-3) << what << " " << comp << " layer " << l;
    }
  }
}

TEST(AnalysisPatching, FullResidualPatchRecoversEverything) {
  MLXTERP_REQUIRE_STORIES();
  for (const auto& p : name_pairs()) check_full_residual_patch(stories(), p.clean, p.corrupt, p.answer, p.wrong, p.text);
  for (const char* g : {"llama", "mistral", "qwen3", "llama3_rope"}) {
    InterpretableModel m = golden(g);
    check_full_residual_patch(m, {1, 5, 9, 17, 33, 2, 8, 40}, {1, 5, 9, 21, 33, 2, 8, 40}, 3, 4, g);
  }
}

TEST(AnalysisPatching, NoPatchIsCorruptedAndFinalLastPositionIsClean) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const PromptPair p = name_pairs()[0];
  const int L = m.n_layers();
  const int64_t t = int64_t(p.corrupt.size());
  const std::string last = "model.layers." + std::to_string(L - 1);
  std::vector<PatchSpec> specs = {
      {},                                  // law 2: nothing patched
      {{last, {t - 1}, {}}},               // law 3: final block output at the last position
      {{last, {0, 5, 12, t - 2}, {}}},     // the final block at earlier positions cannot reach the last logits
  };
  PatchRuns runs = run_patches(m, p.clean, p.corrupt, specs);
  // The patched runs go in one batch, the corrupt run alone: some BLAS builds round a batched GEMM's rows
  // differently (OpenBLAS 0.3.21 on AMD EPYC: ~1e-5 on these logits), so "equal" is up to that.
  EXPECT_LT(max_abs_diff(runs.logits[0], runs.corrupt_logits), 1e-4);
  EXPECT_LT(max_abs_diff(runs.logits[1], runs.clean_logits), 1e-4);
  EXPECT_LT(max_abs_diff(runs.logits[2], runs.corrupt_logits), 1e-4);
  // And through the sweep API: recovery 1 at (last layer, last position), 0 elsewhere in that row.
  PatchOptions o = logit_diff_options(p, "resid_post");
  o.positions = PatchPositions::Each;
  o.layers = {L - 1};
  PatchResult r = activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o);
  for (int64_t q = 0; q < t; ++q) EXPECT_NEAR(r.recovery[0][q][0].item<double>(), q == t - 1 ? 1.0 : 0.0, 1e-4) << q;
}

TEST(AnalysisPatching, AllHeadsEqualAttentionOutputAndBatchingIsInvisible) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const PromptPair p = name_pairs()[1];
  const int64_t H = m.model().config().n_heads;
  std::vector<int64_t> all_heads;
  for (int64_t h = 0; h < H; ++h) all_heads.push_back(h);
  std::vector<PatchSpec> specs = {{{"model.layers.2.self_attn.z", {}, all_heads}},
                                  {{"model.layers.2.self_attn", {}, {}}},
                                  {{"model.layers.2.self_attn.z", {}, {3}}}};
  PatchRuns runs = run_patches(m, p.clean, p.corrupt, specs);
  EXPECT_LT(max_abs_diff(runs.logits[0], runs.logits[1]), 1e-4) << "patching every head's z must equal patching o_proj's output";
  EXPECT_GT(max_abs_diff(runs.logits[2], runs.corrupt_logits), 1e-6) << "one head's patch must change something";
  // Batch size 1 and 32 give the same sweep.
  PatchOptions o = logit_diff_options(p, "head");
  o.positions = PatchPositions::Each;
  o.position_list = {-1, -3};
  o.batch_size = 1;
  PatchResult a = activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o);
  o.batch_size = 32;
  PatchResult b = activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o);
  ASSERT_EQ(a.values.sizes(), (std::vector<int64_t>{m.n_layers(), 2, H}));
  EXPECT_LT(max_abs_diff(a.values, b.values), 1e-5);
}

TEST(AnalysisPatching, EveryComponentRuns) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const PromptPair p = name_pairs()[0];
  for (const char* c : {"resid_pre", "resid_mid", "resid_post", "attn", "mlp", "q", "k", "v", "o", "gate", "up", "down", "z",
                        "mlp.hidden"}) {
    PatchOptions o = logit_diff_options(p, c);
    o.layers = {1, 3};
    PatchResult r = activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o);
    EXPECT_EQ(r.values.sizes(), (std::vector<int64_t>{2, 1, 1})) << c;
    EXPECT_TRUE(at::isfinite(r.recovery).all().item<bool>()) << c;
  }
  // o_proj's output is the attention block's output.
  PatchResult a = activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), logit_diff_options(p, "attn"));
  PatchResult b = activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), logit_diff_options(p, "o"));
  EXPECT_LT(max_abs_diff(a.values, b.values), 1e-6);
}

TEST(AnalysisPatching, MetricsMatchTheirDefinitions) {
  at::manual_seed(0);
  at::Tensor clean = at::randn({16}), l = at::randn({3, 16});
  MetricSpec s;
  s.answer = 2;
  s.wrong = 5;
  s.metric = Metric::LogitDiff;
  EXPECT_LT(max_abs_diff(metric_value(s, l, clean), l.select(1, 2) - l.select(1, 5)), 1e-6);
  s.metric = Metric::Prob;
  EXPECT_LT(max_abs_diff(metric_value(s, l, clean), at::softmax(l, -1).select(1, 2)), 1e-6);
  s.metric = Metric::CE;
  EXPECT_LT(max_abs_diff(metric_value(s, l, clean), -at::log_softmax(l, -1).select(1, 2)), 1e-6);
  s.metric = Metric::L2;
  EXPECT_LT(max_abs_diff(metric_value(s, l, clean), (l - clean).norm(2, -1)), 1e-5);
  s.metric = Metric::MSE;
  EXPECT_LT(max_abs_diff(metric_value(s, l, clean), (l - clean).pow(2).mean(-1)), 1e-6);
  s.metric = Metric::Cosine;
  EXPECT_LT(max_abs_diff(metric_value(s, l, clean), 1 - at::cosine_similarity(l, clean.unsqueeze(0), 1)), 1e-5);
  s.metric = Metric::KL;
  at::Tensor pc = at::softmax(clean, -1);
  EXPECT_LT(max_abs_diff(metric_value(s, l, clean), (pc * (pc.log() - at::log_softmax(l, -1))).sum(-1)), 1e-5);
  EXPECT_NEAR(metric_value(s, clean, clean).item<double>(), 0.0, 1e-6);
  EXPECT_EQ(parse_metric("logit-diff"), Metric::LogitDiff);
  try {
    parse_metric("euclid");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Unknown metric: euclid"), std::string::npos);
  }
  MetricSpec none;
  none.metric = Metric::LogitDiff;
  none.answer = 1;
  EXPECT_THROW(metric_value(none, l, clean), Error);  // logit-diff without a wrong token
}

TEST(AnalysisPatching, L2RecoveryIsTheOriginalsFormula) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const PromptPair p = name_pairs()[0];
  PatchOptions o;
  o.component = "mlp";
  o.metric.metric = Metric::L2;
  PatchResult r = activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o);
  EXPECT_EQ(r.clean_value, 0.0);
  // (baseline - d(patched, clean)) / baseline
  at::Tensor want = (r.corrupt_value - r.values) / r.corrupt_value;
  EXPECT_LT(max_abs_diff(r.recovery, want), 1e-9);
}

TEST(AnalysisPatching, DifferentLengthsNeedAnAlignment) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const PromptPair p = name_pairs()[0];
  std::vector<int32_t> longer = p.corrupt;
  longer.insert(longer.begin() + 1, 261);
  PatchOptions o = logit_diff_options(p, "resid_post");
  try {
    activation_patching(m, Prompt::ids(p.clean), Prompt::ids(longer), o);
    FAIL() << "unequal lengths must be an error under strict alignment";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected equal lengths"), std::string::npos) << e.what();
  }
  o.align = iv::Align::End;
  o.positions = PatchPositions::Each;
  o.layers = {m.n_layers() - 1};
  PatchResult r = activation_patching(m, Prompt::ids(p.clean), Prompt::ids(longer), o);
  // End alignment: the last positions line up, so the final block's last position restores the clean run.
  EXPECT_NEAR(r.recovery[0][int64_t(longer.size()) - 1][0].item<double>(), 1.0, 1e-4);
  // Position 0 of the longer prompt has no clean counterpart: left unpatched.
  EXPECT_NEAR(r.recovery[0][0][0].item<double>(), 0.0, 1e-5);  // (batched vs single runs: rounding only)
}

}  // namespace
