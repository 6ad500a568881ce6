// Interventions (iv::): each edit's semantics, position restriction with absolute positions during
// KV-cached generation, alignment modes, seeded noise, composition, heads, SAE latent edits, and the
// --intervene SPEC parser.
#include "analysis_fixtures.hpp"
#include "mlxterp/interventions.hpp"
#include "mlxterp/io.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

const std::vector<int32_t> kIds = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376};

at::Tensor site_after(const InterpretableModel& m, const std::string& site, InterventionFn fn,
                      const std::vector<int32_t>& ids = kIds) {
  TraceOptions o;
  o.sites = {site};
  if (fn) o.interventions.push_back({site, fn});
  return m.trace_ids(ids_tensor(ids), {}, o).get(site).cpu();  // the test's own tensors are on the CPU
}

TEST(AnalysisInterventions, BasicEditsDoWhatTheySay) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const std::string s = "model.layers.1.mlp";
  at::Tensor x = site_after(m, s, nullptr);
  EXPECT_EQ(site_after(m, s, iv::zero()).abs().max().item<double>(), 0.0);
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::scale(-2.5)), x * -2.5), 1e-6);
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::clamp(-0.1, 0.2)), x.clamp(-0.1, 0.2)), 1e-7);
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::clamp(std::nullopt, 0.0)), x.clamp_max(0.0)), 1e-7);
  at::Tensor v = at::arange(64, at::kFloat) / 64;
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::add_vector(v)), x + v), 1e-6);
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::replace_with(3.0)), at::full_like(x, 3.0)), 0.0 + 1e-9);
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::fn([](const at::Tensor& t) { return t + 1; })), x + 1), 1e-6);
  // compose is left to right: (x * 2) + 1, not (x + 1) * 2.
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::Composer().add(iv::scale(2)).add(iv::replace_with(1.0)).build()),
                         at::ones_like(x)), 1e-9);
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::compose({iv::scale(2), iv::fn([](const at::Tensor& t) { return t + 1; })})),
                         x * 2 + 1), 1e-6);
  EXPECT_THROW(iv::clamp(1.0, 0.0), Error);
  EXPECT_THROW(site_after(m, s, iv::add_vector(at::ones({65}))), Error);  // wrong width: a clear error, not a crash
}

TEST(AnalysisInterventions, PositionsAndSequences) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const std::string s = "model.layers.0";
  at::Tensor x = site_after(m, s, nullptr);
  at::Tensor y = site_after(m, s, iv::at_positions(iv::zero(), {2, -1}));
  for (int64_t p = 0; p < x.size(1); ++p) {
    bool edited = p == 2 || p == x.size(1) - 1;
    double d = max_abs_diff(y.select(1, p), edited ? at::zeros_like(x.select(1, p)) : x.select(1, p));
    EXPECT_EQ(d, 0.0) << "position " << p;
  }
  at::Tensor r = site_after(m, s, iv::at_position_range(iv::zero(), 3, 6));
  EXPECT_EQ(r.narrow(1, 3, 3).abs().max().item<double>(), 0.0);
  EXPECT_EQ(max_abs_diff(r.narrow(1, 0, 3), x.narrow(1, 0, 3)), 0.0);
  // A [t, d] vector lands on absolute positions 0..t-1 only.
  at::Tensor pv = at::ones({4, 64});
  at::Tensor a = site_after(m, s, iv::add_vector(pv));
  EXPECT_LT(max_abs_diff(a.narrow(1, 0, 4), x.narrow(1, 0, 4) + 1), 1e-6);
  EXPECT_EQ(max_abs_diff(a.narrow(1, 4, x.size(1) - 4), x.narrow(1, 4, x.size(1) - 4)), 0.0);
  // Sequences: only row 1 of a batch of 2 is edited.
  TraceOptions o;
  o.sites = {s};
  o.interventions.push_back({s, iv::at_sequences(iv::zero(), {1})});
  at::Tensor ids = ids_tensor(kIds).repeat({2, 1});
  at::Tensor b = m.trace_ids(ids, {}, o).get(s);
  EXPECT_LT(max_abs_diff(b[0], x[0]), 1e-5);  // batch of 2 vs 1: float rounding only
  EXPECT_EQ(b[1].abs().max().item<double>(), 0.0);
}

// The edit at absolute position P must land on the same token whether the text is processed at once
// or token by token with a KV cache (pos_offset), and stay active on every generated token.
TEST(AnalysisInterventions, AbsolutePositionsDuringKvCachedGeneration) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const std::vector<int32_t> prompt = {1, 403, 407, 261};
  const int64_t P = 6;  // a position that only exists once generation has produced it
  at::Tensor v = at::randn({64}, at::TensorOptions().dtype(at::kFloat)) * 3;
  auto make = [&] {
    return std::vector<std::pair<std::string, InterventionFn>>{
        {"model.layers.1", iv::at_positions(iv::add_vector(v), {P})}, {"model.layers.2.mlp", iv::scale(0.5)}};
  };
  GenerateOptions g;
  g.max_tokens = 10;
  g.temperature = 0;
  g.stop_at_eos = false;
  g.interventions = make();
  GenerateResult gen = m.generate_ids(prompt, g);
  ASSERT_EQ(gen.new_ids.size(), 10u);
  // Re-run the full text without a cache: greedy argmax at each position must reproduce every token.
  std::vector<int32_t> full = prompt;
  full.insert(full.end(), gen.new_ids.begin(), gen.new_ids.end());
  TraceOptions o;
  o.capture = false;
  o.interventions = make();
  at::Tensor logits = m.trace_ids(ids_tensor(full), {}, o).logits[0];
  for (size_t i = 0; i < gen.new_ids.size(); ++i) {
    int64_t at_pos = int64_t(prompt.size() + i) - 1;
    EXPECT_EQ(logits[at_pos].argmax().item<int64_t>(), gen.new_ids[i]) << "token " << i;
  }
  // And the edit matters: without it the continuation differs somewhere.
  GenerateOptions plain = g;
  plain.interventions.clear();
  EXPECT_NE(m.generate_ids(prompt, plain).new_ids, gen.new_ids);
}

TEST(AnalysisInterventions, ReplaceAlignment) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const std::string s = "model.layers.2";
  at::Tensor x = site_after(m, s, nullptr);  // [1, 10, 64]
  at::Tensor v = at::randn({1, 4, 64});
  at::Tensor end = site_after(m, s, iv::replace_with(v, iv::Align::End));
  EXPECT_EQ(max_abs_diff(end.narrow(1, 6, 4), v), 0.0);
  EXPECT_EQ(max_abs_diff(end.narrow(1, 0, 6), x.narrow(1, 0, 6)), 0.0);
  at::Tensor start = site_after(m, s, iv::replace_with(v, iv::Align::Start));
  EXPECT_EQ(max_abs_diff(start.narrow(1, 0, 4), v), 0.0);
  try {
    site_after(m, s, iv::replace_with(v, iv::Align::Strict));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Shape mismatch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("align='end'"), std::string::npos) << e.what();
  }
  at::Tensor same = site_after(m, s, iv::replace_with(x * 2, iv::Align::Strict));
  EXPECT_LT(max_abs_diff(same, x * 2), 1e-6);
  EXPECT_THROW(site_after(m, s, iv::replace_with(at::zeros({1, 4, 32}))), Error);
}

TEST(AnalysisInterventions, NoiseIsSeededAndHeadsAreSlices) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  const std::string s = "model.embed_tokens";
  at::Tensor x = site_after(m, s, nullptr);
  at::Tensor a = site_after(m, s, iv::noise(0.5, 7)), b = site_after(m, s, iv::noise(0.5, 7)),
             c = site_after(m, s, iv::noise(0.5, 8));
  EXPECT_EQ(max_abs_diff(a, b), 0.0);
  EXPECT_GT(max_abs_diff(a, c), 0.01);
  double sd = (a - x).std().item<double>();
  EXPECT_NEAR(sd, 0.5, 0.05);
  // Heads: zeroing head 3 of z touches exactly columns 3*d_head .. 4*d_head.
  const int64_t H = m.model().config().n_heads, dh = m.model().config().d_head;
  const std::string z = "model.layers.1.self_attn.z";
  at::Tensor z0 = site_after(m, z, nullptr), z1 = site_after(m, z, iv::at_heads(iv::zero(), {3}, H));
  EXPECT_EQ(z1.narrow(2, 3 * dh, dh).abs().max().item<double>(), 0.0);
  EXPECT_EQ(max_abs_diff(z1.narrow(2, 0, 3 * dh), z0.narrow(2, 0, 3 * dh)), 0.0);
  EXPECT_EQ(max_abs_diff(z1.narrow(2, 4 * dh, (H - 4) * dh), z0.narrow(2, 4 * dh, (H - 4) * dh)), 0.0);
  EXPECT_THROW(iv::at_heads(iv::zero(), {H}, H), Error);
  // Head edits on attention weights re-compute the attention output: zeroing head 3's pattern zeroes its z.
  TraceOptions o;
  o.sites = {z};
  o.interventions.push_back({"model.layers.1.self_attn.attention_weights", iv::at_heads(iv::zero(), {3}, H)});
  at::Tensor z2 = m.trace_ids(ids_tensor(kIds), {}, o).get(z);
  EXPECT_EQ(z2.narrow(2, 3 * dh, dh).abs().max().item<double>(), 0.0);
  EXPECT_LT(max_abs_diff(z2.narrow(2, 0, 3 * dh), z0.narrow(2, 0, 3 * dh)), 1e-6);
}

// A toy SAE (ReLU encoder, linear decoder) through the codec interface.
struct ToySae {
  at::Tensor W_enc, b_enc, W_dec, b_dec;  // [d_sae, d], [d_sae], [d_sae, d], [d]
  // Weights follow the input's device (the intervention runs where the model runs; the test checks on the CPU).
  at::Tensor encode(const at::Tensor& x) const {
    const auto d = x.device();
    return at::relu(at::linear(x - b_dec.to(d), W_enc.to(d), b_enc.to(d)));
  }
  at::Tensor decode(const at::Tensor& z) const { return z.matmul(W_dec.to(z.device())) + b_dec.to(z.device()); }
};

TEST(AnalysisInterventions, SaeLatentEditsKeepTheErrorTerm) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  at::manual_seed(3);
  auto sae = std::make_shared<ToySae>(ToySae{at::randn({32, 64}) * 0.3, at::randn({32}) * 0.1, at::randn({32, 64}) * 0.3,
                                             at::randn({64}) * 0.1});
  iv::SaeCodec codec = iv::sae_codec<ToySae>(sae, 32);
  const std::string s = "model.layers.2";
  at::Tensor x = site_after(m, s, nullptr);
  // No edit: the site is unchanged (error term kept).
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::sae_edit(codec, {})), x), 1e-5);
  // Ablating latent k moves x by exactly -z_k * W_dec[k].
  at::Tensor z = sae->encode(x);
  int64_t k = z.flatten(0, -2).sum(0).argmax().item<int64_t>();  // a latent that is active
  at::Tensor want = x - z.select(-1, k).unsqueeze(-1) * sae->W_dec[k];
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::sae_edit(codec, {iv::ablate_latent(k)})), want), 1e-5);
  at::Tensor want2 = x + (5.0 - z.select(-1, k)).unsqueeze(-1) * sae->W_dec[k];
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::sae_edit(codec, {iv::clamp_latent(k, 5.0)})), want2), 1e-5);
  at::Tensor want3 = x + (2.0 * z.select(-1, k)).unsqueeze(-1) * sae->W_dec[k];
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::sae_edit(codec, {iv::amplify_latent(k, 3.0)})), want3), 1e-5);
  // Without the error term the site becomes the (edited) reconstruction.
  EXPECT_LT(max_abs_diff(site_after(m, s, iv::sae_edit(codec, {}, false)), sae->decode(z)), 1e-5);
  EXPECT_THROW(iv::sae_edit(codec, {iv::ablate_latent(32)}), Error);
}

TEST(AnalysisInterventions, ParseSpecs) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  TempDir tmp;
  const std::string s = "model.layers.1.mlp";
  at::Tensor x = site_after(m, s, nullptr);
  auto apply = [&](const std::string& spec) {
    auto [site, fn] = iv::parse_intervention(spec, m.model());
    EXPECT_EQ(site, s) << spec;
    return site_after(m, s, fn);
  };
  EXPECT_EQ(apply("layers.1.mlp=zero").abs().max().item<double>(), 0.0);  // alias accepted, canonical returned
  EXPECT_LT(max_abs_diff(apply("blocks.1.hook_mlp_out=scale:0.5"), x * 0.5), 1e-6);
  EXPECT_LT(max_abs_diff(apply(s + "=clamp:-0.05:0.05"), x.clamp(-0.05, 0.05)), 1e-7);
  EXPECT_LT(max_abs_diff(apply(s + "=clamp::0"), x.clamp_max(0)), 1e-7);
  EXPECT_EQ(max_abs_diff(apply(s + "=noise:0.1:3"), apply(s + "=noise:0.1:3")), 0.0);
  at::Tensor v = at::randn({64});
  save_safetensors(tmp.file("one.safetensors"), {{"v", v}});
  save_safetensors(tmp.file("many.safetensors"), {{"model.layers.1.mlp", v * 2}, {"other", v}});
  EXPECT_LT(max_abs_diff(apply(s + "=add:" + tmp.file("one.safetensors") + "*3"), x + v * 3), 1e-5);
  EXPECT_LT(max_abs_diff(apply(s + "=add:" + tmp.file("many.safetensors")), x + v * 2), 1e-5);  // picked by site name
  EXPECT_LT(max_abs_diff(apply(s + "=add:" + tmp.file("many.safetensors") + ":other*-1"), x - v), 1e-5);
  save_safetensors(tmp.file("rep.safetensors"), {{"r", x * 0 + 0.25}});
  EXPECT_LT(max_abs_diff(apply(s + "=replace:" + tmp.file("rep.safetensors")), at::full_like(x, 0.25)), 1e-7);
  // Errors name the spec and say what was expected.
  auto err = [&](const std::string& spec) {
    try {
      iv::parse_intervention(spec, m.model());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(err("model.layers.1.mlp").find("expected SITE=ACTION"), std::string::npos);
  EXPECT_NE(err(s + "=explode").find("unknown action 'explode'"), std::string::npos);
  EXPECT_NE(err(s + "=scale:abc").find("must be a number"), std::string::npos);
  EXPECT_NE(err(s + "=clamp:3:1").find("above the upper bound"), std::string::npos);
  EXPECT_NE(err(s + "=noise:-1").find(">= 0"), std::string::npos);
  EXPECT_NE(err("model.layers.9.mlp=zero").find("unknown site"), std::string::npos);
  EXPECT_NE(err(s + "=add:/nonexistent.safetensors").find("not found"), std::string::npos);
  save_safetensors(tmp.file("two.safetensors"), {{"a", v}, {"b", v}});
  EXPECT_NE(err(s + "=add:" + tmp.file("two.safetensors")).find("pick one with FILE:TENSOR"), std::string::npos);
  EXPECT_NE(err(s + "=add:" + tmp.file("two.safetensors") + ":c").find("has no tensor 'c'"), std::string::npos);
}

}  // namespace
