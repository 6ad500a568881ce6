// Requirement 6: every HTML page the analysis toolkit writes opens in headless Chromium without console
// errors, its content is in the DOM after scripts ran, and the screenshot shows it.
#include "../browser/chromium.hpp"
#include "analysis_fixtures.hpp"
#include "mlxterp/analysis_attention.hpp"
#include "mlxterp/analysis_causal.hpp"
#include "mlxterp/analysis_lens.hpp"
#include "mlxterp/analysis_patching.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

#define REQUIRE_CHROMIUM() \
  if (browser::chromium().empty()) GTEST_SKIP() << browser::kNoChromium

struct Expect {
  std::string file;
  std::vector<std::string> in_dom;  // strings the rendered DOM must contain
};

void check_page(const TempDir& tmp, const Expect& e) {
  browser::PageResult r = browser::open_page(tmp.file(e.file), tmp.path);
  EXPECT_EQ(r.exit_code, 0) << e.file;
  std::string console;
  for (const auto& c : r.console) console += c + "\n";
  EXPECT_TRUE(r.console.empty()) << e.file << ": console messages:\n" << console;
  for (const auto& s : e.in_dom) EXPECT_NE(r.dom.find(s), std::string::npos) << e.file << ": DOM lacks " << s;
  ASSERT_FALSE(r.screenshot.empty()) << e.file << ": no screenshot";
  EXPECT_GT(r.ink_fraction, 0.01) << e.file << ": the screenshot is (nearly) blank";
  EXPECT_GT(r.colors, 12) << e.file << ": the screenshot has too few colours for a chart";
}

TEST(AnalysisBrowser, HarnessCatchesConsoleErrors) {
  REQUIRE_CHROMIUM();
  TempDir tmp;
  report::Page bad("broken page");
  bad.paragraph("text");
  bad.script("document.body.dataset.before = '1'; notDefinedAnywhere();");
  bad.save(tmp.file("bad.html"));
  browser::PageResult r = browser::open_page(tmp.file("bad.html"), tmp.path);
  ASSERT_EQ(r.console.size(), 1u) << "a page with an uncaught exception must be caught";
  EXPECT_NE(r.console[0].find("notDefinedAnywhere"), std::string::npos) << r.console[0];
  // A page that tries the network is blocked by its own CSP, and that is reported too.
  report::Page net("network page");
  net.html("<img src=\"https://example.com/x.png\" alt=\"\">");
  net.save(tmp.file("net.html"));
  browser::PageResult n = browser::open_page(tmp.file("net.html"), tmp.path);
  ASSERT_FALSE(n.console.empty()) << "loading from the network must be refused and logged";
  EXPECT_NE(n.console[0].find("Content Security Policy"), std::string::npos) << n.console[0];
  // A blank page has no ink.
  report::Page blank("");
  blank.save(tmp.file("blank.html"));
  EXPECT_LT(browser::open_page(tmp.file("blank.html"), tmp.path).ink_fraction, 0.01);
}

TEST(AnalysisBrowser, EveryPageRendersWithoutErrors) {
  REQUIRE_CHROMIUM();
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  TempDir tmp;
  const PromptPair p = name_pairs()[0];
  const Prompt prompt = Prompt::ids(p.clean);
  std::vector<Expect> pages;

  LensOptions lo;
  lo.target = p.answer;
  LensResult lens = logit_lens(m, prompt, lo);
  lens_page(lens).save(tmp.file("logit_lens.html"));
  pages.push_back({"logit_lens.html", {"<svg", "Top-1 prediction", "KL(final", "mx-lens-data"}});
  TunedLens tl(m.n_layers(), m.model().config().d_model);
  lens_comparison_page(lens, tuned_lens(m, tl, prompt, lo)).save(tmp.file("tuned_lens.html"));
  pages.push_back({"tuned_lens.html", {"Tuned lens", "Logit lens", "<table"}});

  PatchOptions po;
  po.metric = {Metric::LogitDiff, p.answer, p.wrong, -1};
  patching_page(activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), po)).save(tmp.file("patch_bars.html"));
  pages.push_back({"patch_bars.html", {"<svg", "Recovery", "mx-patch-data"}});
  po.positions = PatchPositions::Each;
  patching_page(activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), po)).save(tmp.file("patch_grid.html"));
  pages.push_back({"patch_grid.html", {"layer x position"}});
  po.component = "head";
  po.positions = PatchPositions::All;
  patching_page(activation_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), po)).save(tmp.file("patch_heads.html"));
  pages.push_back({"patch_heads.html", {"layer x head"}});
  po.component = "resid_post";
  po.positions = PatchPositions::Each;
  AttributionResult a = attribution_patching(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), po);
  validate_attribution(m, Prompt::ids(p.clean), Prompt::ids(p.corrupt), po, a);
  attribution_page(a).save(tmp.file("attribution.html"));
  pages.push_back({"attribution.html", {"Pearson r", "Real patching"}});

  CausalTraceOptions co;
  co.samples = 2;
  causal_trace_page(causal_trace(m, prompt, 9, 13, p.answer, co)).save(tmp.file("causal.html"));
  pages.push_back({"causal.html", {"P(target)", "mx-causal-data"}});
  if (m.has_tokenizer()) {
    FactRecord f{"Once upon a time, there was a little girl named", "little girl", "Lily", 0};
    causal_trace_summary_page(causal_trace_facts(m, {f, f}, co, 0.0)).save(tmp.file("causal_facts.html"));
    pages.push_back({"causal_facts.html", {"indirect effect", "last subject token"}});
  }

  AttentionPatterns pat = attention_patterns(m, prompt);
  InductionOptions io;
  io.n_sequences = 2;
  InductionScores ind = induction_scores(m, io);
  HeadScores hs = head_scores(m, pat, &ind);
  attention_page(pat, &hs).save(tmp.file("attention.html"));
  // data-mx-ready is set by the viewer's script after it built the thumbnails: proof the JS ran.
  pages.push_back({"attention.html", {"data-mx-ready=\"1\"", "<canvas", "mx-thumb", "induction"}});

  DlaOptions d;
  d.answer = p.answer;
  d.wrong = p.wrong;
  dla_page(direct_logit_attribution(m, prompt, d)).save(tmp.file("dla.html"));
  pages.push_back({"dla.html", {"Contribution per component", "Per head"}});

  for (const auto& e : pages) check_page(tmp, e);
}

}  // namespace
