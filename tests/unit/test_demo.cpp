// `mlxterp demo` end to end on the embedded model (a short SAE run), its report in headless Chromium, and its
// errors. Expected ids and the greedy text come from Python's sentencepiece and the PyTorch reference forward
// (tests/reference/kjv_heldout_reference.py); the patching checks are laws that hold for any model.
#include <regex>

#include "common.hpp"

#include "../browser/chromium.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

std::string kjv_dir() { return join_path(MLXTERP_TEST_SOURCE_DIR, "models/kjv-llama"); }

// One short demo run shared by the tests below (--quick: 240 verses of Genesis, one SAE epoch; one thread:
// on the shared 2-core machine a second OpenMP thread made it 3x slower).
struct DemoRun {
  TempDir dir;
  CliResult r;
  std::string report;
  DemoRun() {
    r = run_cli("--threads 1 demo --out '" + dir.path + "' --quick");
    if (file_exists(dir.file("report.html"))) report = read_file(dir.file("report.html"));
  }
};
const DemoRun& demo_run() {
  static DemoRun d;
  return d;
}

// The lines of `text` from the one starting with `begin` up to (not including) the next "== " heading.
std::vector<std::string> section_lines(const std::string& text, const std::string& begin) {
  std::vector<std::string> out;
  bool in = false;
  for (const auto& line : split(text, '\n')) {
    if (starts_with(line, "== ")) in = starts_with(line, begin);
    else if (in && !trim(line).empty()) out.push_back(line);
  }
  return out;
}

std::vector<std::string> cells(const std::string& line) {
  std::vector<std::string> out;
  for (const auto& c : split(line, ' '))
    if (!c.empty()) out.push_back(c);
  return out;
}

}  // namespace

TEST(DemoCli, RunsEndToEndAndSaysWhereTheReportIs) {
  const DemoRun& d = demo_run();
  ASSERT_EQ(d.r.code, 0) << d.r.err;
  for (const char* s : {"== 1. Tokenize ==", "== 2. Trace ==", "== 3. Logit lens ==", "== 4. Activation patching ==",
                        "== 5. Sparse autoencoder (TopK, streaming) ==", "== 6. SAE features"})
    EXPECT_NE(d.r.out.find(s), std::string::npos) << "missing section " << s << "\n" << d.r.out;
  EXPECT_NE(d.r.out.find("report: " + d.dir.file("report.html")), std::string::npos) << d.r.out;
  ASSERT_FALSE(d.report.empty());
  // The SAE was saved where the report says.
  EXPECT_TRUE(file_exists(d.dir.file("sae/config.json")));
  EXPECT_TRUE(file_exists(d.dir.file("sae/weights.safetensors")));
}

TEST(DemoCli, TokenizeAndGenerateMatchReferences) {
  const DemoRun& d = demo_run();
  ASSERT_EQ(d.r.code, 0) << d.r.err;
  // Python sentencepiece: BOS + encode("And God said, Let there be light: and there was light.")
  EXPECT_NE(d.r.out.find("15 tokens: "), std::string::npos) << d.r.out;
  EXPECT_NE(d.r.out.find("ids:    1 300 391 394 4049 955 386 298 1046 4061 270 386 373 1046 4057\n"), std::string::npos)
      << d.r.out;
  EXPECT_NE(d.r.out.find("greedy continuation: And God said unto him, I will not hear the word of the LORD.\n"),
            std::string::npos)
      << d.r.out;
}

TEST(DemoCli, LogitLensTableHasEveryLayerAndPosition) {
  const DemoRun& d = demo_run();
  ASSERT_EQ(d.r.code, 0) << d.r.err;
  std::vector<std::string> lines = section_lines(d.r.out, "== 3. Logit lens");
  // Two lines of explanation, the header (position L0 L1 L2 L3), one row per prompt token.
  ASSERT_EQ(lines.size(), 2u + 1u + 15u) << d.r.out;
  EXPECT_EQ(cells(lines[2]), (std::vector<std::string>{"position", "L0", "L1", "L2", "L3"}));
  // The last column (after the last block) is the model's own prediction: the PyTorch reference forward's
  // argmax at each position.
  const std::vector<std::string> expect = {" And", " the", " said", " unto", " I", " us", " be", " a",
                                           ",", " for", " he", " shall", " a", ",", "</s>"};
  const std::regex last_quoted("\"([^\"]*)\"\\s*$");
  for (size_t p = 0; p < expect.size(); ++p) {
    std::smatch m;
    const std::string& row = lines[3 + p];
    ASSERT_TRUE(std::regex_search(row, m, last_quoted)) << row;
    EXPECT_EQ(m[1].str(), expect[p]) << "position " << p << ": " << row;
  }
}

TEST(DemoCli, PatchingObeysItsLaws) {
  const DemoRun& d = demo_run();
  ASSERT_EQ(d.r.code, 0) << d.r.err;
  EXPECT_NE(d.r.out.find("clean:     \"And Jesus said unto his\" -> \" disciples\""), std::string::npos) << d.r.out;
  EXPECT_NE(d.r.out.find("corrupted: \"And Moses said unto his\" -> \" people\""), std::string::npos) << d.r.out;
  std::vector<std::string> lines = section_lines(d.r.out, "== 4. Activation patching");
  // Find the matrix: a header of the 6 corrupted tokens, then L3 .. L0.
  size_t h = 0;
  while (h < lines.size() && lines[h].find("\"<s>\"") == std::string::npos) ++h;
  ASSERT_LT(h + 4, lines.size()) << d.r.out;
  for (int r = 0; r < 4; ++r) {
    std::vector<std::string> row = cells(lines[h + 1 + r]);
    ASSERT_EQ(row.size(), 7u) << lines[h + 1 + r];
    EXPECT_EQ(row[0], "L" + std::to_string(3 - r));
    // BOS and "And" come before the swapped name: with causal attention their activations are identical in
    // both runs, so patching them changes nothing.
    EXPECT_NEAR(std::stod(row[1]), 0.0, 0.006) << lines[h + 1 + r];
    EXPECT_NEAR(std::stod(row[2]), 0.0, 0.006) << lines[h + 1 + r];
  }
  // The last block's output is read by nothing but the unembedding at its own position: patching it at the
  // last position restores the clean logits exactly, at any other position it changes nothing.
  std::vector<std::string> top = cells(lines[h + 1]);
  for (size_t p = 1; p + 1 < top.size(); ++p) EXPECT_NEAR(std::stod(top[p]), 0.0, 0.006) << lines[h + 1];
  EXPECT_NEAR(std::stod(top.back()), 1.0, 0.006) << lines[h + 1];
}

TEST(DemoCli, SaeTrainsAndFeaturesHaveContexts) {
  const DemoRun& d = demo_run();
  ASSERT_EQ(d.r.code, 0) << d.r.err;
  EXPECT_NE(d.r.out.find("streaming mode"), std::string::npos) << d.r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(d.r.out, m, std::regex("SAE metrics on held-out tokens:  fvu=([0-9.]+)"))) << d.r.out;
  const double fvu = std::stod(m[1]);
  EXPECT_LT(fvu, 0.6) << "one short epoch should already explain most of the variance";
  EXPECT_GT(fvu, 0.0);
  // The progress bar (stderr, plain lines when not a terminal).
  EXPECT_NE(d.r.err.find("Training"), std::string::npos) << d.r.err;
  std::vector<std::string> lines = section_lines(d.r.out, "== 6. SAE features");
  int features = 0, contexts = 0;
  for (const auto& l : lines) {
    if (starts_with(l, "feature ")) ++features;
    if (starts_with(l, "  ") && l.find('[') != std::string::npos && l.find(']') != std::string::npos) ++contexts;
  }
  EXPECT_EQ(features, 4) << d.r.out;
  EXPECT_GE(contexts, 4) << d.r.out;
}

TEST(DemoCli, ReportIsOneSelfContainedPage) {
  const DemoRun& d = demo_run();
  ASSERT_EQ(d.r.code, 0) << d.r.err;
  for (const char* s : {"1. Tokenize", "2. Trace", "3. Logit lens", "4. Activation patching", "5. Sparse autoencoder",
                        "6. Features", "id=\"tokens\"", "id=\"lens\"", "id=\"patching\"", "id=\"sae-metrics\"",
                        "id=\"features\"", "<svg"})
    EXPECT_NE(d.report.find(s), std::string::npos) << "report.html lacks " << s;
  EXPECT_EQ(d.report.find("src=\"http"), std::string::npos);
  EXPECT_EQ(d.report.find("href=\"http"), std::string::npos);
}

TEST(DemoCli, ReportRendersInHeadlessChromium) {
  if (browser::chromium().empty()) GTEST_SKIP() << browser::kNoChromium;
  const DemoRun& d = demo_run();
  ASSERT_EQ(d.r.code, 0) << d.r.err;
  TempDir shot;
  browser::PageResult p = browser::open_page(d.dir.file("report.html"), shot.path, 1280, 4000);
  EXPECT_EQ(p.exit_code, 0);
  std::string console;
  for (const auto& c : p.console) console += c + "\n";
  EXPECT_TRUE(p.console.empty()) << "console messages:\n" << console;
  for (const char* s : {"Logit lens", "Activation patching", "Sparse autoencoder", "<svg", "feature "})
    EXPECT_NE(p.dom.find(s), std::string::npos) << "rendered DOM lacks " << s;
  // The feature contexts were rendered: shaded token spans, each context with its outlined peak token.
  size_t n_ctx = 0, n_peak = 0;
  for (size_t at = p.dom.find("class=\"ctx\""); at != std::string::npos; at = p.dom.find("class=\"ctx\"", at + 1)) ++n_ctx;
  for (size_t at = p.dom.find("class=\"peak\""); at != std::string::npos; at = p.dom.find("class=\"peak\"", at + 1)) ++n_peak;
  EXPECT_GE(n_ctx, 4u) << "too few feature contexts in the rendered page";
  EXPECT_EQ(n_peak, n_ctx) << "every context has exactly one peak token";
  ASSERT_FALSE(p.screenshot.empty());
  EXPECT_GT(p.ink_fraction, 0.02) << "the screenshot is (nearly) blank";
  EXPECT_GT(p.colors, 12) << "the screenshot has too few colours for heatmaps";
}

// ---- errors: exit 1 with a message naming the option, before any long work ----

TEST(DemoCli, BadOptionsFailFast) {
  TempDir tmp;
  const std::string out = " --out '" + tmp.path + "'";
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {"--layer 4", "error: --layer: expected a block of the model, 0 .. 3, got 4"},
      {"--layer -2", "error: --layer: expected a block of the model, 0 .. 3, got -2"},
      {"--k 0", "k must be >= 1, got 0"},
      {"--features 0", "error: --features: expected >= 1, got 0"},
      {"--max-docs -1", "error: --max-docs: expected >= 0"},
      {"--data /nonexistent/text.txt", "/nonexistent/text.txt does not exist"},
      {"--model /nonexistent/model", "error: --model: /nonexistent/model does not exist"},
      {"--clean 'And God said' --corrupted 'And God said unto him'", "same number of tokens"},
      {"--clean 'And God said' --corrupted 'And God said'", "lead to the same next token"},
  };
  for (const auto& c : cases) {
    Timer t;
    CliResult r = run_cli("demo" + out + " " + c.args);
    EXPECT_EQ(r.code, 1) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << ": " << r.err;
    EXPECT_TRUE(starts_with(r.err, "error: ") || r.err.find("\nerror: ") != std::string::npos) << r.err;
    EXPECT_LT(t.seconds(), 20.0) << c.args << " should fail before the SAE";
    EXPECT_FALSE(file_exists(tmp.file("report.html"))) << c.args;
  }
}

TEST(DemoCli, ModelWithoutCorpusNeedsData) {
  MLXTERP_REQUIRE_DATA("models/stories260K/stories260K.gguf");
  TempDir tmp;
  CliResult r = run_cli("demo --out '" + tmp.path + "' --model '" + data_path("models/stories260K/stories260K.gguf") + "'");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("expected --data FILE"), std::string::npos) << r.err;
}

