// Feature steering: the --intervene SITE=sae:DIR:LATENT:EDIT forms, and clamping a latent during generation.
#include <gtest/gtest.h>

#include "common.hpp"
#include "mlxterp/interventions.hpp"
#include "mlxterp/sae_features.hpp"
#include "test_sae_eval_fixtures.hpp"

namespace mlxterp::test {
namespace {

at::Tensor site_after(const InterpretableModel& m, const std::string& text, const std::string& spec) {
  TraceOptions o;
  o.sites = {"model.layers.2"};
  if (!spec.empty()) o.interventions.push_back(iv::parse_intervention(spec, m.model()));
  return m.trace(text, o).get("model.layers.2")[0];  // captured after the edit
}

TEST(SaeSteering, SaeFormsEditOnlyTheChosenLatents) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  const auto& m = stories_model();
  TempDir t;
  make_dirs(t.file("run:1"));  // a ':' inside DIR is fine
  const std::string dir = t.file("run:1/sae");
  SAE s = random_topk_sae(64, 96, 8, 21);
  s.save(dir);
  const std::string text = "Once upon a time there was a dog.";
  at::Tensor clean = site_after(m, text, "");
  auto [site, fn] = iv::parse_intervention("blocks.2.hook_resid_post=sae:" + dir + ":5:clamp:4", m.model());
  EXPECT_EQ(site, "model.layers.2");
  // Clamping latent 5 to 4 moves the activation by (4 - z_5) along W_dec[5], nothing else (the error term stays).
  at::Tensor edited = site_after(m, text, "model.layers.2=sae:" + dir + ":5:clamp:4");
  at::Tensor z = s.encode(clean);
  at::Tensor want = clean + at::outer(4.0 - z.select(1, 5), s.params.W_dec[5]);
  EXPECT_LT(max_abs_diff(edited, want), 1e-4);
  // scale:1 changes nothing; ablate removes the latent's contribution; several latents at once.
  EXPECT_LT(max_abs_diff(site_after(m, text, "model.layers.2=sae:" + dir + ":5:scale:1"), clean), 1e-5);
  at::Tensor abl = site_after(m, text, "model.layers.2=sae:" + dir + ":5,9:ablate");
  want = clean - at::outer(z.select(1, 5), s.params.W_dec[5]) - at::outer(z.select(1, 9), s.params.W_dec[9]);
  EXPECT_LT(max_abs_diff(abl, want), 1e-4);
  at::Tensor sc = site_after(m, text, "model.layers.2=sae:" + dir + ":9:scale:3");
  EXPECT_LT(max_abs_diff(sc, clean + at::outer(2.0 * z.select(1, 9), s.params.W_dec[9])), 1e-4);
}

TEST(SaeSteering, BadSpecsAreClearErrors) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  const auto& m = stories_model();
  TempDir t;
  random_topk_sae(64, 16, 2, 1).save(t.file("sae"));
  auto msg = [&](const std::string& spec) {
    try {
      iv::parse_intervention(spec, m.model());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg("model.layers.2=sae:" + t.file("sae") + ":16:clamp:1").find("latent 16 is out of range"), std::string::npos);
  EXPECT_NE(msg("model.layers.2=sae:" + t.file("nope") + ":1:ablate").find("not found"), std::string::npos);
  EXPECT_NE(msg("model.layers.2=sae:" + t.file("sae") + ":1:boost:2").find("unknown latent edit"), std::string::npos);
  EXPECT_NE(msg("model.layers.2=sae:" + t.file("sae") + ":1:clamp:x").find("must be a number"), std::string::npos);
  EXPECT_NE(msg("model.layers.2=sae:" + t.file("sae") + ":a:ablate").find("not an integer"), std::string::npos);
  // An unknown action lists the sae forms too.
  EXPECT_NE(msg("model.layers.2=warp:1").find("sae:DIR:LATENT"), std::string::npos);
  // Width mismatch shows up on the first forward pass, naming the site.
  auto [site, fn] = iv::parse_intervention("model.layers.2.mlp.hidden=sae:" + t.file("sae") + ":1:ablate", m.model());
  TraceOptions o;
  o.interventions.push_back({site, fn});
  try {
    m.trace("Hello", o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("d_in = 64"), std::string::npos) << e.what();
  }
}

// The demo: clamp a latent during greedy generation. The trained SAE of tests/golden/sae_eval; the latent is the one
// whose decoder row most promotes some token, and clamping it high makes the story use that token more.
TEST(SaeSteering, ClampingALatentSteersGeneration) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  const auto& m = stories_model();
  const std::string dir = golden_path("sae_eval/sae");
  SAE s = SAE::load(dir);
  std::vector<FeatureStats> st(size_t(s.d_sae));
  for (int64_t f = 0; f < s.d_sae; ++f) st[size_t(f)].feature = f;
  ASSERT_TRUE(add_logit_tables(m, s, st, 3));
  size_t best = 0;
  for (size_t f = 0; f < st.size(); ++f)
    if (st[f].promoted[0].value > st[best].promoted[0].value) best = f;
  const int32_t token = st[best].promoted[0].token;
  GenerateOptions g;
  g.max_tokens = 40;
  g.temperature = 0;
  auto base = m.generate("Once upon a time", g);
  g.interventions.push_back(iv::parse_intervention(cat("model.layers.2=sae:", dir, ":", best, ":clamp:15"), m.model()));
  auto steered = m.generate("Once upon a time", g);
  auto count = [&](const std::vector<int32_t>& ids) { return std::count(ids.begin(), ids.end(), token); };
  std::printf("  latent %zu promotes %s (logit effect %.2f)\n  baseline: %s\n  clamped:  %s\n", best,
              quote(m.tokenizer().token_to_str(token)).c_str(), st[best].promoted[0].value, base.text.c_str(),
              steered.text.c_str());
  EXPECT_NE(base.new_ids, steered.new_ids);
  EXPECT_GT(count(steered.new_ids), count(base.new_ids));
  // The same through the CLI.
  const std::string cli = "generate --model " + data_path("models/stories260K/hf") +
                          " --prompt \"Once upon a time\" --temperature 0 --max-tokens 40";
  auto a = run_cli(cli), b = run_cli(cli + cat(" --intervene model.layers.2=sae:", dir, ":", best, ":clamp:15"));
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(a.out, base.text + "\n");
  EXPECT_EQ(b.out, steered.text + "\n");
}

}  // namespace
}  // namespace mlxterp::test
