// Attribution patching: the gradient is right (finite differences along the patch direction), and on
// stories260K it tracks real activation patching (requirement 2: Pearson r per component).
#include "analysis_fixtures.hpp"
#include "mlxterp/analysis_patching.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

// m(a_corr + eps * (a_clean - a_corr)) - m(a_corr) ~ eps * estimate, for small eps.
TEST(AnalysisAttribution, EstimateIsTheDirectionalDerivative) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const PromptPair p = name_pairs()[0];
  PatchOptions o;
  o.component = "resid_mid";
  o.positions = PatchPositions::Each;
  o.position_list = {12, -1};
  o.layers = {1, 3};
  o.metric = {Metric::LogitDiff, p.answer, p.wrong, -1};
  AttributionResult a = attribution_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o);
  ASSERT_EQ(a.estimate.sizes(), (std::vector<int64_t>{2, 2, 1}));
  TraceOptions all;
  all.sites = {"model.layers.1.resid_mid", "model.layers.3.resid_mid"};
  TraceResult clean = m.trace_ids(ids_tensor(p.clean), {}, all), corrupt = m.trace_ids(ids_tensor(p.corrupt), {}, all);
  const double eps = 1e-2;
  const int64_t t = int64_t(p.corrupt.size());
  for (int li = 0; li < 2; ++li) {
    const std::string site = all.sites[size_t(li)];
    for (int pi = 0; pi < 2; ++pi) {
      const int64_t pos = pi == 0 ? 12 : t - 1;
      at::Tensor target = corrupt.get(site).clone();
      target[0][pos] += eps * (clean.get(site)[0][pos] - corrupt.get(site)[0][pos]);
      TraceOptions po;
      po.capture = false;
      po.interventions.push_back({site, iv::replace_with(target, iv::Align::Strict)});
      at::Tensor l = m.trace_ids(ids_tensor(p.corrupt), {}, po).logits[0][t - 1];
      double moved = (l[p.answer] - l[p.wrong]).item<double>() - a.corrupt_value;
      double est = eps * a.estimate[li][pi][0].item<double>();
      EXPECT_NEAR(moved, est, 0.05 * std::abs(est) + 1e-4) << site << " position " << pos;
    }
  }
  // All positions at once: the estimate is the sum of the per-position estimates.
  o.positions = PatchPositions::All;
  o.position_list.clear();
  AttributionResult whole = attribution_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o);
  o.positions = PatchPositions::Each;
  AttributionResult each = attribution_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o);
  EXPECT_LT(max_abs_diff(whole.estimate.select(1, 0), each.estimate.sum(1)), 1e-6);
}

// Requirement 2: Pearson r between attribution estimates and real patching effects, per component,
// over layer x position (x head) cells of two name-swap prompt pairs.
TEST(AnalysisAttribution, TracksRealPatchingOnStories260K) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  std::string table;
  std::map<std::string, double> r_of;
  for (const char* comp : {"resid_pre", "resid_mid", "resid_post", "attn", "mlp", "head", "z", "v", "gate", "down"}) {
    std::vector<double> est, real;
    for (const auto& p : name_pairs()) {
      PatchOptions o;
      o.component = comp;
      o.positions = PatchPositions::Each;
      o.metric = {Metric::LogitDiff, p.answer, p.wrong, -1};
      AttributionResult a = attribution_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o);
      validate_attribution(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), o, a);
      at::Tensor e = a.estimate.flatten(), r = a.patched_effect.flatten();
      for (int64_t i = 0; i < e.numel(); ++i) {
        est.push_back(e[i].item<double>());
        real.push_back(r[i].item<double>());
      }
    }
    double r = pearson(est, real);
    r_of[comp] = r;
    table += std::string(comp) + ": r = " + report::fmt(r, "%.3f") + " over " + std::to_string(est.size()) + " patches\n";
  }
  std::cout << "[attribution vs activation patching, stories260K, logit difference, 2 prompt pairs]\n" << table;
  RecordProperty("attribution_pearson", table);
  // The linear estimate is excellent for attention-side components (many small, additive effects) and only
  // fair where one patch flips the answer (residual stream / MLP at the swapped name, where the metric is far
  // from linear) — as reported for larger models. A broken gradient or sign would give r <= 0 everywhere.
  for (const char* comp : {"attn", "head", "z", "v", "gate"}) EXPECT_GT(r_of[comp], 0.9) << table;
  for (const char* comp : {"resid_pre", "resid_mid", "resid_post", "mlp", "down"}) EXPECT_GT(r_of[comp], 0.4) << table;
}

}  // namespace
