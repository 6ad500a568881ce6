// Causal tracing (ROME): the laws the original's sweep broke (restoring the last block at the last
// position gives p_clean; at any other position nothing), seeded noise, subject spans, facts files.
#include "analysis_fixtures.hpp"
#include "mlxterp/analysis_causal.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

// "Once upon a time, there was a little girl named Lily." with the subject " little girl" (tokens 9..12).
const std::vector<int32_t> kIds = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395};

TEST(AnalysisCausal, LastLayerLawsAndDeterminism) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  CausalTraceOptions o;
  o.samples = 3;
  const int32_t target = 317;  // " Lily"
  CausalTraceResult r = causal_trace(m, Prompt::ids(kIds), 9, 13, target, o);
  const int L = m.n_layers();
  const int64_t t = int64_t(kIds.size());
  ASSERT_EQ(r.prob.sizes(), (std::vector<int64_t>{L, t}));
  EXPECT_GT(r.p_clean - r.p_corrupt, 0.01) << "the noise must hurt P(target) for the test to mean anything";
  EXPECT_NEAR(r.prob[L - 1][t - 1].item<double>(), r.p_clean, 1e-6);
  EXPECT_NEAR(r.recovery[L - 1][t - 1].item<double>(), 1.0, 1e-4);
  for (int64_t p = 0; p + 1 < t; ++p) EXPECT_NEAR(r.prob[L - 1][p].item<double>(), r.p_corrupt, 1e-6) << "position " << p;
  // Positions before the subject were never corrupted: restoring them changes nothing at any layer.
  for (int l = 0; l < L; ++l)
    for (int64_t p = 0; p < 9; ++p) EXPECT_NEAR(r.prob[l][p].item<double>(), r.p_corrupt, 1e-6) << l << "," << p;
  // Restoring the whole residual stream at the last subject token in layer 0 beats doing nothing.
  EXPECT_GT(r.prob[0][12].item<double>(), r.p_corrupt);
  // Same seed, same result; noise std defaults to 3 x the embeddings' std.
  CausalTraceResult again = causal_trace(m, Prompt::ids(kIds), 9, 13, target, o);
  EXPECT_TRUE(at::equal(again.prob, r.prob));
  EXPECT_NEAR(r.noise_std, embedding_noise_std(m.model(), 3.0), 1e-12);
  // MLP restoration with a window of 3 layers runs and obeys the same last-position law at the top.
  o.component = "mlp";
  o.window = 3;
  CausalTraceResult w = causal_trace(m, Prompt::ids(kIds), 9, 13, target, o);
  EXPECT_EQ(w.prob.sizes(), r.prob.sizes());
  EXPECT_THROW(causal_trace(m, Prompt::ids(kIds), 5, 20, target, o), Error);
}

TEST(AnalysisCausal, SubjectSpansAndTargetsFromText) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  if (!m.has_tokenizer()) GTEST_SKIP() << "needs stories260K's tokenizer";
  std::string prompt = "Once upon a time, there was a little girl named";
  std::vector<int32_t> ids = m.encode(prompt);
  auto [s0, s1] = find_subject_span(m, ids, "little girl");
  EXPECT_EQ(token_strings(m, std::vector<int32_t>(ids.begin() + s0, ids.begin() + s1)).front(), " little");
  std::string joined;
  for (int64_t i = s0; i < s1; ++i) joined += m.tokenizer().token_to_str(ids[size_t(i)]);
  EXPECT_EQ(joined, " little girl");
  EXPECT_EQ(continuation_token(m, prompt, "Lily"), resolve_token(m, " Lily"));
  EXPECT_THROW(find_subject_span(m, ids, "dragon"), Error);
  CausalTraceOptions o;
  o.samples = 2;
  CausalTraceResult r = causal_trace(m, prompt, "little girl", "Lily", o);
  EXPECT_EQ(r.subject_start, s0);
  EXPECT_EQ(r.target_token, " Lily");
  nlohmann::json j = r.to_json();
  EXPECT_EQ(j["prob"].size(), size_t(m.n_layers()));
}

TEST(AnalysisCausal, KnownFactsFileAndBatchMode) {
  MLXTERP_REQUIRE_DATA("facts/known_1000.json");
  auto facts = load_facts(data_path("facts/known_1000.json"));
  EXPECT_EQ(facts.size(), 1209u);
  EXPECT_FALSE(facts[0].prompt.empty());
  EXPECT_NE(facts[0].prompt.find(facts[0].subject), std::string::npos);
  EXPECT_FALSE(facts[0].target.empty());
  TempDir tmp;
  write_file_atomic(tmp.file("f.jsonl"), "{\"template\": \"{} lives in\", \"subject\": \"Lily\", \"object\": \"the park\"}\n");
  auto small = load_facts(tmp.file("f.jsonl"));
  ASSERT_EQ(small.size(), 1u);
  EXPECT_EQ(small[0].prompt, "Lily lives in");
  write_file_atomic(tmp.file("bad.json"), "[{\"subject\": \"x\"}]");
  EXPECT_THROW(load_facts(tmp.file("bad.json")), Error);
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  if (!m.has_tokenizer()) GTEST_SKIP() << "needs stories260K's tokenizer";
  // stories260K knows no world facts: the batch mode runs, and the min_drop filter skips what the
  // noise does not hurt (with min_drop 0 every locatable fact is used).
  CausalTraceOptions o;
  o.samples = 2;
  CausalTraceSummary s = causal_trace_facts(m, facts, o, 0.0, 4);
  EXPECT_EQ(s.n_facts, 4);
  EXPECT_EQ(s.n_used + s.n_skipped, 4);
  EXPECT_EQ(s.recovery.sizes(), (std::vector<int64_t>{CausalTraceSummary::kGroups, m.n_layers()}));
  CausalTraceSummary strict = causal_trace_facts(m, facts, o, 0.5, 4);
  EXPECT_GE(strict.n_skipped, s.n_skipped);
}

}  // namespace
