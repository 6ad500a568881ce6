// sae eval: metric definitions against SAEs with known behaviour, the PyTorch reference, formats and the CLI.
#include <gtest/gtest.h>

#include <fstream>

#include "common.hpp"
#include "mlxterp/sae_eval.hpp"
#include "test_sae_eval_fixtures.hpp"

namespace mlxterp::test {
namespace {

using ojson = nlohmann::ordered_json;

ojson eval(const SAE& sae, const std::string& data, SaeEvalOptions o = {}) {
  TextCorpus c = TextCorpus::open(data);
  return evaluate_sae_on_corpus(stories_model(), sae, c, o);
}

TEST(SaeEval, QualityScoreFollowsTheOriginalThresholds) {
  auto s = sae_quality_score(0.96, 0.10, 10);
  EXPECT_EQ(s.reconstruction, 2.0);
  EXPECT_EQ(s.sparsity, 2.0);
  EXPECT_EQ(s.interpretability, 1.0);
  EXPECT_EQ(s.total, 5.0);
  EXPECT_NE(s.verdict.find("EXCELLENT"), std::string::npos);
  // Thresholds are strict for cosine (> 0.95) and for the dead fraction (< 0.30).
  EXPECT_EQ(sae_quality_score(0.95, 0.30, 8).reconstruction, 1.5);
  EXPECT_EQ(sae_quality_score(0.95, 0.30, 8).sparsity, 1.5);
  EXPECT_EQ(sae_quality_score(0.90, 0.50, 5).reconstruction, 1.0);
  EXPECT_EQ(sae_quality_score(0.90, 0.50, 5).sparsity, 1.0);
  EXPECT_EQ(sae_quality_score(0.90, 0.50, 5).interpretability, 0.5);
  auto poor = sae_quality_score(0.85, 0.70, 4);
  EXPECT_EQ(poor.total, 0.0);
  EXPECT_NE(poor.verdict.find("POOR"), std::string::npos);
  EXPECT_NE(sae_quality_score(0.91, 0.4, 8).verdict.find("GOOD"), std::string::npos);   // 1.5 + 1.5 + 1 = 4
  EXPECT_NE(sae_quality_score(0.86, 0.4, 8).verdict.find("GOOD"), std::string::npos);   // 1 + 1.5 + 1 = 3.5
  EXPECT_NE(sae_quality_score(0.86, 0.6, 5).verdict.find("FAIR"), std::string::npos);   // 1 + 1 + 0.5 = 2.5
}

// An SAE that reconstructs exactly: no error anywhere, the spliced model is the model.
TEST(SaeEval, ExactReconstructionRecoversAllLoss) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 12);
  ojson r = eval(identity_sae(64), data);
  EXPECT_LT(r["reconstruction"]["fvu"].get<double>(), 1e-10);
  EXPECT_NEAR(r["reconstruction"]["cosine"].get<double>(), 1.0, 1e-6);
  EXPECT_NEAR(r["reconstruction"]["mse"].get<double>(), 0.0, 1e-10);
  const auto& ds = r["downstream"];
  EXPECT_NEAR(ds["ce_loss_with_sae"].get<double>(), ds["ce_loss_without_sae"].get<double>(), 1e-6);
  EXPECT_NEAR(ds["ce_loss_score"].get<double>(), 1.0, 1e-5);
  EXPECT_NEAR(ds["kl_div_with_sae"].get<double>(), 0.0, 1e-7);
  // Zeroing layer 2's residual stream hurts a lot.
  EXPECT_GT(ds["ce_loss_with_ablation"].get<double>(), ds["ce_loss_without_sae"].get<double>() + 0.5);
  EXPECT_GT(ds["kl_div_with_ablation"].get<double>(), 0.3);
  EXPECT_NEAR(ds["kl_div_score"].get<double>(), 1.0, 1e-6);
  // Every token has x+ and x- latents: L0 counts the non-zero dimensions; nothing is dead that could fire.
  EXPECT_GT(r["sparsity"]["l0"].get<double>(), 60.0);
  EXPECT_LE(r["sparsity"]["l0"].get<double>(), 64.0);
  EXPECT_EQ(r["data"]["tokens"].get<int64_t>(), r["downstream"]["kl_tokens"].get<int64_t>());
  EXPECT_GT(r["data"]["tokens"].get<int64_t>(), 1000);
}

// An SAE whose reconstruction is 0: with every position spliced (special tokens included) it IS zero ablation.
TEST(SaeEval, ZeroReconstructionEqualsZeroAblation) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 6);
  SAE s = identity_sae(64);
  s.params.W_dec = at::zeros_like(s.params.W_dec);
  SaeEvalOptions o;
  o.data.exclude_special = false;
  ojson r = eval(s, data, o);
  const auto& ds = r["downstream"];
  EXPECT_NEAR(ds["ce_loss_with_sae"].get<double>(), ds["ce_loss_with_ablation"].get<double>(), 1e-5);
  EXPECT_NEAR(ds["ce_loss_score"].get<double>(), 0.0, 1e-5);
  EXPECT_NEAR(ds["kl_div_score"].get<double>(), 0.0, 1e-5);
  EXPECT_NEAR(r["reconstruction"]["cosine"].get<double>(), 0.0, 1e-6);  // x̂ = 0
  // With special tokens excluded (the default), BOS keeps its activation: the SAE run is no longer the ablation
  // (zero everywhere gives uniform logits, CE = ln V; a lone BOS activation gives confident, different predictions).
  ojson r2 = eval(s, data);
  EXPECT_NEAR(r2["downstream"]["ce_loss_with_ablation"].get<double>(), std::log(512.0), 1e-3);
  EXPECT_GT(std::fabs(r2["downstream"]["ce_loss_with_sae"].get<double>() - r2["downstream"]["ce_loss_with_ablation"].get<double>()), 0.1);
}

// Counting rules on a hand-made SAE: latent 0 fires on every token, latent 1 never, latent 2 on some.
TEST(SaeEval, DeadDenseAndL0Counts) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 8);
  SAE s;
  s.arch = SaeArch::ReLU;
  s.d_in = 64;
  s.d_sae = 3;
  s.params.W_enc = at::zeros({3, 64});
  s.params.W_enc[2][5] = 1.0;  // fires where dimension 5 is positive
  s.params.b_enc = at::tensor({1.0f, -1.0f, 0.0f});
  s.params.W_dec = at::zeros({3, 64});
  s.params.b_dec = at::zeros({64});
  s.metadata = {{"site", "model.layers.2"}};
  SaeEvalOptions o;
  o.downstream = false;
  ojson r = eval(s, data, o);
  const auto& sp = r["sparsity"];
  const int64_t n = r["data"]["tokens"].get<int64_t>();
  EXPECT_EQ(sp["dead_features"].get<int64_t>(), 1);
  EXPECT_EQ(sp["dense_features"].get<int64_t>(), sp["l0"].get<double>() > 1.1 ? 2 : 1);
  EXPECT_EQ(sp["rare_threshold_tokens"].get<int64_t>(), std::max<int64_t>(10, n / 100));
  EXPECT_GE(sp["l0_min"].get<int64_t>(), 1);
  EXPECT_LE(sp["l0_max"].get<int64_t>(), 2);
  // The L0 histogram counts every token exactly once.
  int64_t total = 0;
  for (auto it = sp["l0_histogram"].begin(); it != sp["l0_histogram"].end(); ++it) total += it.value().get<int64_t>();
  EXPECT_EQ(total, n);
  EXPECT_EQ(r["original_report"]["sparsity"]["max_feature_activations"].get<int64_t>(), n);
  EXPECT_EQ(r["original_report"]["sparsity"]["min_feature_activations"].get<int64_t>(), 0);
  // Zero reconstruction with x̄ != 0: mse = mean ||x||², fvu = Σ||x||² / Σ||x - x̄||² > 1.
  EXPECT_GT(r["reconstruction"]["fvu"].get<double>(), 1.0);
  EXPECT_TRUE(r["downstream"].empty());
}

// Evaluation must not depend on how sequences are batched (padding, batch boundaries).
TEST(SaeEval, BatchingDoesNotChangeTheNumbers) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 10);
  SAE s = random_topk_sae(64, 256, 8, 7);
  SaeEvalOptions a, b;
  a.data.batch_sequences = 1;
  b.data.batch_sequences = 7;
  b.data.context_size = 64;  // documents split into pieces: BOS repeated and excluded
  a.data.context_size = 64;
  ojson ra = eval(s, data, a), rb = eval(s, data, b);
  EXPECT_EQ(ra["data"]["tokens"], rb["data"]["tokens"]);
  for (const char* k : {"mse", "fvu", "cosine"})
    EXPECT_NEAR(ra["reconstruction"][k].get<double>(), rb["reconstruction"][k].get<double>(), 1e-5) << k;
  for (const char* k : {"ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation", "kl_div_with_sae"})
    EXPECT_NEAR(ra["downstream"][k].get<double>(), rb["downstream"][k].get<double>(), 1e-5) << k;
  EXPECT_EQ(ra["sparsity"]["dead_features"], rb["sparsity"]["dead_features"]);
}

TEST(SaeEval, HoldoutTakesTheLastDocuments) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 20);
  SaeEvalOptions o;
  o.data.holdout = 0.1;
  o.downstream = false;
  ojson r = eval(random_topk_sae(64, 64, 4, 1), data, o);
  EXPECT_EQ(r["data"]["first_document"].get<int64_t>(), 18);
  EXPECT_EQ(r["data"]["documents_evaluated"].get<int64_t>(), 2);
  o.data.max_tokens = 50;
  o.data.holdout = 1.0;
  ojson r2 = eval(random_topk_sae(64, 64, 4, 1), data, o);
  EXPECT_GE(r2["data"]["tokens"].get<int64_t>(), 50);
  EXPECT_LE(r2["data"]["sequences"].get<int64_t>(), 2);  // stops after the sequence that reaches 50 tokens
  o.data.holdout = 0.01;
  EXPECT_THROW(eval(random_topk_sae(64, 64, 4, 1), data, o), Error);
}

// The SAE's own files say where it reads: native site, SAELens hook_name (TransformerLens names), sparsify
// hookpoint. The same SAE in each format gives the same numbers.
TEST(SaeEval, EveryFormatFindsItsSiteAndAgrees) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 4);
  SAE s = random_topk_sae(64, 128, 8, 3);
  s.input_mean = at::randn({64}) * 0.1;
  s.input_std = at::rand({64}) + 0.5;
  s.save(t.file("native"));
  export_sae(s, "saelens", t.file("saelens"));
  export_sae(s, "sparsify", t.file("sparsify"));
  // A SAELens file as other tools write it: only a TransformerLens hook name says where it belongs.
  {
    auto cfg = nlohmann::json::parse(read_file(t.file("saelens/cfg.json")));
    EXPECT_EQ(cfg["metadata"]["hook_name"], "blocks.2.hook_resid_post");
    cfg["metadata"].erase("mlxterp");
    write_file_atomic(t.file("saelens/cfg.json"), cfg.dump(2));
  }
  SaeEvalOptions o;
  o.data.max_tokens = 300;
  ojson rn = eval(SAE::load(t.file("native")), data, o);
  for (const char* fmt : {"saelens", "sparsify"}) {
    SAE l = SAE::load(t.file(fmt));
    EXPECT_EQ(resolve_sae_site(l, stories_model()), stories_model().sites().resolve("model.layers.2")) << fmt;
    ojson r = eval(l, data, o);
    EXPECT_EQ(r["sae"]["site"], "model.layers.2") << fmt;
    for (const char* k : {"mse", "fvu", "cosine"})
      EXPECT_NEAR(r["reconstruction"][k].get<double>(), rn["reconstruction"][k].get<double>(), 1e-4) << fmt << " " << k;
    EXPECT_NEAR(r["downstream"]["ce_loss_score"].get<double>(), rn["downstream"]["ce_loss_score"].get<double>(), 1e-4) << fmt;
    EXPECT_EQ(r["sparsity"]["dead_features"], rn["sparsity"]["dead_features"]) << fmt;
  }
}

TEST(SaeEval, SiteProblemsAreClearErrors) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  const auto& m = stories_model();
  SAE s = random_topk_sae(64, 64, 4, 1, "blocks.9.hook_resid_post");
  s.metadata.erase("layer");
  try {
    resolve_sae_site(s, m);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.9.hook_resid_post"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--site"), std::string::npos) << e.what();
  }
  EXPECT_EQ(resolve_sae_site(s, m, "blocks.2.hook_resid_post"), m.sites().resolve("model.layers.2"));
  // Width mismatch: an SAE for the MLP hidden layer (172 wide) cannot read the residual stream (64).
  SAE wide = random_topk_sae(172, 64, 4, 1, "model.layers.2");
  try {
    resolve_sae_site(wide, m);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("d_in = 172"), std::string::npos) << e.what();
  }
  EXPECT_EQ(resolve_sae_site(wide, m, "model.layers.2.mlp.hidden"), m.sites().resolve("model.layers.2.mlp.hidden"));
}

// Golden: the PyTorch reference (tests/reference/sae_eval_reference.py, float64, one sequence at a time) on the
// same tokens. tests/golden/sae_eval/README.md has the commands.
TEST(SaeEval, MatchesThePyTorchReference) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  const std::string g = golden_path("sae_eval");
  auto ref = nlohmann::json::parse(read_file(join_path(g, "reference.json")));
  SaeEvalOptions o;
  o.data.batch_sequences = 5;
  TextCorpus c = TextCorpus::open(join_path(g, "tokens.jsonl"));
  ojson r = evaluate_sae_on_corpus(stories_model(), SAE::load(join_path(g, "sae")), c, o);
  EXPECT_EQ(r["data"]["tokens"].get<int64_t>(), ref["tokens"].get<int64_t>());
  for (const char* group : {"reconstruction", "shrinkage", "downstream"})
    for (auto it = ref[group].begin(); it != ref[group].end(); ++it) {
      const double want = it.value().get<double>(), got = r[group][it.key()].get<double>();
      EXPECT_NEAR(got, want, 2e-5 + 2e-4 * std::fabs(want)) << group << "." << it.key();
    }
  for (auto it = ref["sparsity"].begin(); it != ref["sparsity"].end(); ++it)
    EXPECT_NEAR(r["sparsity"][it.key()].get<double>(), it.value().get<double>(), 1e-4) << "sparsity." << it.key();
}

TEST(SaeEvalCli, WritesJsonAndReportsErrors) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 6);
  random_topk_sae(64, 128, 8, 5).save(t.file("sae"));
  const std::string model = data_path("models/stories260K/stories260K.gguf");
  auto r = run_cli("sae eval --sae " + t.file("sae") + " --model " + model + " --data " + data + " --json " +
                   t.file("e.json") + " --save-tokens " + t.file("tok.jsonl"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("CE-loss recovered"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Quality score"), std::string::npos) << r.out;
  auto j = nlohmann::json::parse(read_file(t.file("e.json")));
  for (const char* k : {"reconstruction", "shrinkage", "sparsity", "downstream", "original_report", "timing"})
    EXPECT_TRUE(j.contains(k)) << k;
  for (const char* k : {"sae_path", "model", "layer", "component", "architecture", "reconstruction", "sparsity",
                        "quality_score", "max_score"})
    EXPECT_TRUE(j["original_report"].contains(k)) << k;
  EXPECT_EQ(j["original_report"]["layer"], 2);
  EXPECT_EQ(j["original_report"]["component"], "resid_post");
  // The saved tokens reproduce the evaluation exactly.
  auto r2 = run_cli("sae eval --quiet --sae " + t.file("sae") + " --model " + model + " --data " + t.file("tok.jsonl") +
                    " --json " + t.file("e2.json"));
  ASSERT_EQ(r2.code, 0) << r2.err;
  auto j2 = nlohmann::json::parse(read_file(t.file("e2.json")));
  EXPECT_EQ(j2["data"]["tokens"], j["data"]["tokens"]);
  EXPECT_NEAR(j2["downstream"]["ce_loss_score"].get<double>(), j["downstream"]["ce_loss_score"].get<double>(), 1e-6);

  auto missing = run_cli("sae eval --model " + model + " --data " + data);
  EXPECT_EQ(missing.code, 2);
  auto nodir = run_cli("sae eval --sae " + t.file("nope") + " --model " + model + " --data " + data);
  EXPECT_EQ(nodir.code, 1);
  EXPECT_NE(nodir.err.find("error: "), std::string::npos);
  auto badsite = run_cli("sae eval --sae " + t.file("sae") + " --model " + model + " --data " + data + " --site model.layers.2.mlpp");
  EXPECT_EQ(badsite.code, 1);
  EXPECT_NE(badsite.err.find("model.layers.2.mlp"), std::string::npos) << badsite.err;
  auto badhold = run_cli("sae eval --sae " + t.file("sae") + " --model " + model + " --data " + data + " --holdout 1.5");
  EXPECT_EQ(badhold.code, 1);
  EXPECT_NE(badhold.err.find("--holdout"), std::string::npos) << badhold.err;
  EXPECT_FALSE(file_exists(t.file("bad.json")));
}

// Evaluating on the SAE's own training file defaults to the documents training held out.
TEST(SaeEval, TrainingFileDefaultsToItsHeldOutDocuments) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 10);
  SAE s = random_topk_sae(64, 64, 4, 1);
  s.metadata["data"] = {{"mode", "streaming"}, {"data", data}};
  s.metadata["config"] = {{"validation_split", 0.2}};
  EXPECT_DOUBLE_EQ(sae_training_holdout(s, data), 0.2);
  EXPECT_EQ(sae_training_holdout(s, data_path(kStoriesText)), -1);
  s.save(t.file("sae"));
  auto r = run_cli("sae eval --sae " + t.file("sae") + " --model " + data_path("models/stories260K/hf") + " --data " +
                   data + " --json " + t.file("e.json") + " --no-downstream");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(read_file(t.file("e.json")));
  EXPECT_EQ(j["data"]["documents_evaluated"].get<int64_t>(), 2);
  EXPECT_NE(r.out.find("training held out"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace mlxterp::test
