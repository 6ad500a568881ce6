// The embedded demo model models/kjv-llama: within its size limits, and its shipped numbers reproduce.
// Reference: tests/golden/kjv/reference.json, made by tests/reference/kjv_heldout_reference.py (an independent
// plain-PyTorch forward + Python sentencepiece): held-out loss, unigram baseline, greedy ids and text.
#include <filesystem>

#include "common.hpp"
#include "mlxterp/train_lm.hpp"
#include "mlxterp/trace.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

std::string kjv_dir() { return join_path(MLXTERP_TEST_SOURCE_DIR, "models/kjv-llama"); }

const nlohmann::json& reference() {
  static const nlohmann::json j = nlohmann::json::parse(read_file(golden_path("kjv/reference.json")));
  return j;
}

const InterpretableModel& kjv() {
  static InterpretableModel m = InterpretableModel::load(kjv_dir());
  return m;
}

}  // namespace

TEST(DemoModel, WithinSizeLimits) {
  // The limits: at most 4M parameters and 8 MB on disk (the whole directory, to be safe).
  const ModelConfig& c = kjv().model().config();
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_LE(lm::count_parameters(c), 4'000'000);
  EXPECT_EQ(lm::count_parameters(c), 3'803'392);
  uintmax_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(kjv_dir()))
    if (e.is_regular_file()) total += e.file_size();
  EXPECT_LE(std::filesystem::file_size(join_path(kjv_dir(), "model.safetensors")), 8'000'000u);
  EXPECT_LE(total, 8'000'000u) << "models/kjv-llama/ is " << total << " bytes";
  // The weights really are that many numbers (a tied lm_head is not stored twice).
  SafeTensors st = SafeTensors::open(join_path(kjv_dir(), "model.safetensors"));
  int64_t n = 0;
  for (const auto& name : st.names()) n += st.get(name).numel();
  EXPECT_EQ(n, 3'803'392);
}

TEST(DemoModel, HeldOutLossMatchesSummaryAndReference) {
  // demo_corpus.txt ends with exactly the 499 held-out verses (scripts/make_demo_model.sh, stage corpus).
  std::vector<std::string> docs = lm::read_documents(join_path(kjv_dir(), "demo_corpus.txt"), lm::DocSplit::Lines);
  ASSERT_GE(docs.size(), 499u);
  std::vector<std::string> held(docs.end() - 499, docs.end());
  ASSERT_EQ(held.front().rfind("Now it came to pass in the days when the judges ruled", 0), 0u) << held.front();
  const nlohmann::json& ref = reference();
  lm::TokenStream s = lm::tokenize_documents(kjv().tokenizer(), held, /*add_eos=*/true);
  EXPECT_EQ(int64_t(s.size()), ref["heldout_tokens"].get<int64_t>());
  lm::EvalResult e = lm::evaluate(kjv().model(), s, kjv().model().config().n_ctx);
  EXPECT_EQ(e.tokens, ref["targets"].get<int64_t>());
  // bf16 weights computed in float32 by both: only summation order differs.
  EXPECT_NEAR(e.loss, ref["model_loss"].get<double>(), 2e-4);
  const nlohmann::json summary = nlohmann::json::parse(read_file(join_path(kjv_dir(), "training_summary.json")));
  EXPECT_NEAR(e.loss, summary["heldout"]["loss"].get<double>(), 2e-4);
  // train-lm's unigram baseline (written into the summary) agrees with the reference's.
  EXPECT_NEAR(summary["unigram_baseline"]["loss"].get<double>(), ref["unigram_loss"].get<double>(), 1e-6);
  // The acceptance criterion: clearly below the unigram baseline (54.9 vs 457.9 when shipped).
  EXPECT_LT(e.perplexity(), 0.25 * ref["unigram_perplexity"].get<double>());
}

TEST(DemoModel, GreedyFromAndGodSaid) {
  GenerateOptions g;
  g.temperature = 0;
  g.max_tokens = 40;
  GenerateResult r = kjv().generate("And God said", g);
  // The PyTorch reference's greedy ids (without a KV cache): ours (with one) must agree token for token.
  const nlohmann::json& ref = reference();
  ASSERT_EQ(ref["greedy_prompt"].get<std::string>(), "And God said");
  std::vector<int32_t> all = r.prompt_ids;
  all.insert(all.end(), r.new_ids.begin(), r.new_ids.end());
  EXPECT_EQ(r.prompt_ids.size(), 4u);  // BOS And God said
  // The reference keeps the EOS it stopped at; generate() stops there without returning it.
  std::vector<int32_t> expect = ref["greedy_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(expect.back(), kjv().tokenizer().special().eos);
  expect.pop_back();
  EXPECT_EQ(all, expect);
  EXPECT_LT(int64_t(r.new_ids.size()), g.max_tokens) << "greedy generation should have stopped at EOS";
  EXPECT_EQ(kjv().tokenizer().decode(all, /*skip_special=*/true), ref["greedy_text"].get<std::string>());
  // Deterministic: a second run gives the same tokens.
  GenerateResult again = kjv().generate("And God said", g);
  EXPECT_EQ(again.new_ids, r.new_ids);
}
