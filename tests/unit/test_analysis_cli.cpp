// The analysis subcommands (CLI.md): each runs on stories260K, writes valid JSON / HTML, and reports
// bad input as `error: ...` with exit 1 (usage errors: exit 2) without leaving a half-written file.
#include "analysis_fixtures.hpp"
#include "mlxterp/analysis_steering.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

std::string model() { return "--model '" + data_path("models/stories260K/stories260K.gguf") + "'"; }

nlohmann::json json_of(const CliResult& r) {
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.out.substr(0, 400);
  return j;
}

TEST(AnalysisCli, LogitLensAndTunedLens) {
  MLXTERP_REQUIRE_STORIES();
  TempDir tmp;
  auto r = run_cli("logit-lens " + model() + " --prompt 'Once upon a time' --top-k 3 --target ' a' --json - --html '" +
                   tmp.file("l.html") + "'");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = json_of(r);
  EXPECT_EQ(j["predictions"].size(), 5u);
  EXPECT_EQ(j["predictions"][0]["positions"][0]["top"].size(), 3u);
  EXPECT_TRUE(file_exists(tmp.file("l.html")));
  auto text = run_cli("logit-lens " + model() + " --ids 1,403,407 --layers -1 --position -1");
  ASSERT_EQ(text.code, 0) << text.err;
  EXPECT_NE(text.out.find("L4:"), std::string::npos) << text.out;
  // Tuned lens: a tiny training run, then apply.
  write_file_atomic(tmp.file("data.txt"), read_file(data_path("text/tinystories_sample.txt")));
  auto t = run_cli("tuned-lens train " + model() + " --data '" + tmp.file("data.txt") + "' --out '" + tmp.file("lens") +
                   "' --steps 5 --seq-len 32 --batch-size 2 --quiet");
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_NE(t.out.find("held-out KL"), std::string::npos) << t.out;
  auto a = run_cli("tuned-lens apply " + model() + " --lens '" + tmp.file("lens") + "' --prompt 'Once upon a time' --json - --html '" +
                   tmp.file("t.html") + "'");
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_TRUE(json_of(a).contains("tuned"));
  // Errors.
  auto bad = run_cli("logit-lens " + model() + " --ids 1,2 --position 9 --json '" + tmp.file("x.json") + "'");
  EXPECT_EQ(bad.code, 1);
  EXPECT_EQ(bad.err.rfind("error: ", 0), 0u) << bad.err;
  EXPECT_NE(bad.err.find("out of bounds"), std::string::npos) << bad.err;
  EXPECT_FALSE(file_exists(tmp.file("x.json")));
  EXPECT_EQ(run_cli("logit-lens " + model()).code, 2);  // no prompt
  EXPECT_EQ(run_cli("logit-lens " + model() + " --ids 1 --prompt x").code, 2);
  auto nolens = run_cli("tuned-lens apply " + model() + " --lens /nonexistent --ids 1,2");
  EXPECT_EQ(nolens.code, 1);
  EXPECT_NE(nolens.err.find("not a tuned lens directory"), std::string::npos) << nolens.err;
}

TEST(AnalysisCli, PatchAndAttribute) {
  MLXTERP_REQUIRE_STORIES();
  TempDir tmp;
  const std::string pair =
      " --clean 'Lily and Tim went to the park. Tim gave a ball to' --corrupted 'Lily and Tim went to the park. Lily gave a ball to'"
      " --answer ' Lily' --wrong ' Tim'";
  auto r = run_cli("patch " + model() + pair + " --positions each --json - --html '" + tmp.file("p.html") + "' --quiet");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = json_of(r);
  EXPECT_EQ(j["metric"], "logit-diff");
  EXPECT_EQ(j["recovery"].size(), 5u);
  EXPECT_EQ(j["recovery"][4].size(), 20u);  // 20 positions
  EXPECT_NEAR(j["recovery"][4][19][0].get<double>(), 1.0, 1e-3);
  auto heads = run_cli("patch " + model() + pair + " --component head --layers 1,2 --quiet");
  ASSERT_EQ(heads.code, 0) << heads.err;
  EXPECT_NE(heads.out.find("H7"), std::string::npos) << heads.out;
  auto a = run_cli("attribute " + model() + pair + " --positions each --validate --quiet");
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_NE(a.out.find("Pearson r"), std::string::npos) << a.out;
  // Errors: unknown metric, logit-diff without --wrong, unequal lengths without --align, bad component.
  auto m1 = run_cli("patch " + model() + " --clean-ids 1,2,3 --corrupted-ids 1,2,4 --metric euclid");
  EXPECT_EQ(m1.code, 1);
  EXPECT_NE(m1.err.find("Unknown metric: euclid"), std::string::npos) << m1.err;
  auto m2 = run_cli("patch " + model() + " --clean-ids 1,2,3 --corrupted-ids 1,2,4 --metric logit-diff --answer '#5' --html '" +
                    tmp.file("no.html") + "'");
  EXPECT_EQ(m2.code, 1);
  EXPECT_NE(m2.err.find("--wrong"), std::string::npos) << m2.err;
  EXPECT_FALSE(file_exists(tmp.file("no.html")));
  auto m3 = run_cli("patch " + model() + " --clean-ids 1,2,3 --corrupted-ids 1,2");
  EXPECT_EQ(m3.code, 1);
  EXPECT_NE(m3.err.find("--align"), std::string::npos) << m3.err;
  EXPECT_EQ(run_cli("patch " + model() + " --clean-ids 1,2,3 --corrupted-ids 1,2 --align end").code, 0);
  auto m4 = run_cli("patch " + model() + " --clean-ids 1,2,3 --corrupted-ids 1,2,4 --component mlpp");
  EXPECT_EQ(m4.code, 1);
  EXPECT_NE(m4.err.find("mlp"), std::string::npos) << m4.err;
  EXPECT_EQ(run_cli("patch " + model() + " --clean-ids 1,2,3 --corrupted-ids 1,2,4 --positions some").code, 2);
}

TEST(AnalysisCli, CausalTraceSteerAttentionDla) {
  MLXTERP_REQUIRE_STORIES();
  TempDir tmp;
  auto c = run_cli("causal-trace " + model() +
                   " --prompt 'Once upon a time, there was a little girl named' --subject 'little girl' --target 'Lily'"
                   " --samples 2 --json - --quiet");
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(json_of(c)["target_token"], " Lily");
  auto f = run_cli("causal-trace " + model() + " --facts '" + data_path("facts/known_1000.json") + "' --limit 2 --samples 1 --quiet");
  ASSERT_EQ(f.code, 0) << f.err;
  EXPECT_NE(f.out.find("facts used"), std::string::npos) << f.out;
  auto nosub = run_cli("causal-trace " + model() + " --prompt 'Once upon a time' --subject dragon --target x");
  EXPECT_EQ(nosub.code, 1);
  EXPECT_NE(nosub.err.find("is not in the prompt"), std::string::npos) << nosub.err;
  // steer compute -> .safetensors + .gguf; generate with either.
  write_file_atomic(tmp.file("pos.txt"), "Lily was very happy.\nTim felt happy.\nThe dog was happy.\n");
  write_file_atomic(tmp.file("neg.txt"), "Lily was very sad.\nTim felt sad.\nThe dog was sad.\n");
  auto s = run_cli("steer compute " + model() + " --positive '" + tmp.file("pos.txt") + "' --negative '" + tmp.file("neg.txt") +
                   "' --layers 2,3 --out '" + tmp.file("v.safetensors") + "' --gguf '" + tmp.file("v.gguf") + "'");
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_EQ(load_control_vector(tmp.file("v.gguf")).directions.size(), 2u);
  auto g1 = run_cli("steer generate " + model() + " --vectors '" + tmp.file("v.safetensors") +
                    "' --prompt 'Once upon a time' --strength 4 --max-tokens 8 --temperature 0");
  auto g2 = run_cli("steer generate " + model() + " --gguf '" + tmp.file("v.gguf") +
                    "' --prompt 'Once upon a time' --strength 4 --max-tokens 8 --temperature 0");
  ASSERT_EQ(g1.code, 0) << g1.err;
  ASSERT_EQ(g2.code, 0) << g2.err;
  EXPECT_EQ(g1.out, g2.out) << "the same vectors through either file must generate the same text";
  // The lead's generate --intervene takes the same vectors.
  auto g3 = run_cli("generate " + model() + " --prompt 'Once upon a time' --max-tokens 8 --temperature 0 --intervene 'model.layers.2=add:" +
                    tmp.file("v.safetensors") + "*4' --intervene 'model.layers.3=add:" + tmp.file("v.gguf") + "*4'");
  ASSERT_EQ(g3.code, 0) << g3.err;
  EXPECT_EQ(trim(g3.out), trim(g1.out));
  auto s0 = run_cli("steer compute " + model() + " --positive '" + tmp.file("pos.txt") + "' --negative '" + tmp.file("neg.txt") +
                    "' --layers 0 --out '" + tmp.file("z.safetensors") + "' --gguf '" + tmp.file("z.gguf") + "'");
  EXPECT_EQ(s0.code, 1);
  EXPECT_NE(s0.err.find("direction.0"), std::string::npos) << s0.err;
  EXPECT_FALSE(file_exists(tmp.file("z.safetensors")));
  // attention --detect, --head; dla.
  auto at = run_cli("attention " + model() + " --prompt 'Once upon a time there was a cat' --detect --induction-sequences 2 --html '" +
                    tmp.file("a.html") + "'");
  ASSERT_EQ(at.code, 0) << at.err;
  EXPECT_NE(at.out.find("top induction heads"), std::string::npos) << at.out;
  auto hd = run_cli("attention " + model() + " --ids 1,403,407 --layer 1 --head 2");
  ASSERT_EQ(hd.code, 0) << hd.err;
  EXPECT_NE(hd.out.find("layer 1 head 2"), std::string::npos);
  EXPECT_EQ(run_cli("attention " + model() + " --ids 1,403 --head 8").code, 1);
  auto d = run_cli("dla " + model() + " --prompt 'Lily and Tim went to the park. Tim gave a ball to' --answer ' Lily' --wrong ' Tim' --json -");
  ASSERT_EQ(d.code, 0) << d.err;
  auto dj = json_of(d);
  EXPECT_NEAR(dj["total"].get<double>(), dj["model_value"].get<double>(), 1e-3);
  EXPECT_EQ(run_cli("dla " + model() + " --prompt 'x'").code, 2);  // --answer is required
}

}  // namespace
