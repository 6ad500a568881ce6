// The feature dashboard in headless Chromium: the index, a feature view and the page's own #selftest (which
// drives the real search box and sort headers) load without console errors and show what they should.
#include <gtest/gtest.h>

#include "../browser/chromium.hpp"
#include "common.hpp"
#include "mlxterp/sae_features.hpp"
#include "test_sae_eval_fixtures.hpp"

namespace mlxterp::test {
namespace {

std::string console_text(const browser::PageResult& r) {
  std::string s;
  for (const auto& c : r.console) s += c + "\n";
  return s;
}

// The text between <pre id="selftest-result"> and </pre>, HTML entities undone.
nlohmann::json selftest_result(const std::string& dom) {
  const std::string open = "<pre id=\"selftest-result\">";
  const size_t a = dom.find(open);
  if (a == std::string::npos) return nullptr;
  const size_t b = dom.find("</pre>", a);
  std::string t = dom.substr(a + open.size(), b - a - open.size()), o;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t.compare(i, 6, "&quot;") == 0) o += '"', i += 5;
    else if (t.compare(i, 5, "&amp;") == 0) o += '&', i += 4;
    else if (t.compare(i, 4, "&lt;") == 0) o += '<', i += 3;
    else if (t.compare(i, 4, "&gt;") == 0) o += '>', i += 3;
    else o += t[i];
  }
  return nlohmann::json::parse(o, nullptr, false);
}

TEST(SaeFeaturesBrowser, DashboardLoadsSearchesSortsAndShowsAFeature) {
  if (browser::chromium().empty()) GTEST_SKIP() << browser::kNoChromium;
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 25);
  SAE s = SAE::load(golden_path("sae_eval/sae"));  // 128 trained latents
  FeatureAnalysisOptions o;
  o.top_contexts = 8;
  o.sample_contexts = 10;
  TextCorpus c = TextCorpus::open(data);
  FeatureAnalysis fa = analyze_features(stories_model(), s, c, o);
  DashboardOptions d;
  d.features_per_file = 16;  // 8 data files: the feature view must load the right one on demand
  d.page_size = 50;          // 3 index pages: paging is exercised
  write_feature_dashboard(t.file("dash"), fa, stories_model(), s, d);

  // The index as it opens.
  browser::PageResult idx = browser::open_page(t.file("dash/index.html"), t.path);
  EXPECT_EQ(idx.exit_code, 0);
  EXPECT_TRUE(idx.console.empty()) << console_text(idx);
  EXPECT_NE(idx.dom.find("data-view=\"index\""), std::string::npos);
  EXPECT_NE(idx.dom.find("128 of 128 features"), std::string::npos);
  EXPECT_NE(idx.dom.find("page 1 of 3"), std::string::npos);
  EXPECT_GT(idx.ink_fraction, 0.01);

  // A feature view straight from the URL: the strongest latent from a later data file, with its contexts.
  const FeatureStats* best = &fa.features[0];
  for (const auto& f : fa.features)
    if (f.feature >= 40 && f.count > 0 && (best->feature < 40 || f.max_act > best->max_act)) best = &f;
  ASSERT_GT(best->count, 0);
  browser::PageResult fv = browser::open_page(t.file("dash/index.html#feature=" + std::to_string(best->feature)), t.path);
  EXPECT_TRUE(fv.console.empty()) << console_text(fv);
  EXPECT_NE(fv.dom.find("<h2>Feature " + std::to_string(best->feature) + "</h2>"), std::string::npos);
  // Count the rendered contexts inside the app (the inline script's source also spells the class name).
  const size_t app_at = fv.dom.find("<main id=\"app\""), app_end = fv.dom.find("</main>", app_at);
  ASSERT_NE(app_at, std::string::npos);
  const std::string app = fv.dom.substr(app_at, app_end - app_at);
  size_t n_ctx = 0;
  for (size_t p = app.find("class=\"ctx\""); p != std::string::npos; p = app.find("class=\"ctx\"", p + 1)) ++n_ctx;
  EXPECT_EQ(n_ctx, best->top.size() + best->samples.size());  // top contexts + quantile samples
  EXPECT_NE(fv.dom.find("id=\"act-hist\""), std::string::npos);
  EXPECT_NE(fv.dom.find("id=\"logit-table\""), std::string::npos);
  EXPECT_NE(fv.dom.find("class=\"t c\" style=\"background:rgba(249,115,22"), std::string::npos)
      << "the centre token of a context is highlighted";
  EXPECT_GT(fv.colors, 12);

  // The page's self-test: sort by clicking headers, page, search by id and by token text, open a feature.
  browser::PageResult st = browser::open_page(t.file("dash/index.html#selftest"), t.path);
  EXPECT_TRUE(st.console.empty()) << console_text(st);
  nlohmann::json r = selftest_result(st.dom);
  ASSERT_TRUE(r.is_object()) << "no #selftest-result in the DOM";
  for (const auto& ck : r["checks"]) EXPECT_TRUE(ck["ok"].get<bool>()) << ck["name"] << ": " << ck["detail"];
  EXPECT_TRUE(r["ok"].get<bool>());
  std::vector<std::string> names;
  for (const auto& ck : r["checks"]) names.push_back(ck["name"]);
  for (const char* want : {"click \"Max act\": descending", "search by id finds it", "search by token text", "next page",
                           "feature view renders its contexts"})
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;

  // The data scripts missing: a clear message on the page, not a blank one.
  remove_tree(t.file("dash/data"));
  browser::PageResult broken = browser::open_page(t.file("dash/index.html"), t.path);
  EXPECT_NE(broken.dom.find("data/index.js did not load"), std::string::npos);
}

}  // namespace
}  // namespace mlxterp::test
