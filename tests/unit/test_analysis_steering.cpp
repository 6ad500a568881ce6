// Steering vectors and GGUF control vectors: the definitions (mean difference, sign-calibrated PCA),
// file round trips, llama.cpp's own semantics (golden), and a measurable effect on generation that
// grows with strength (requirement 4).
#include <cctype>
#include <set>

#include "analysis_fixtures.hpp"
#include "mlxterp/analysis_steering.hpp"
#include "mlxterp/interventions.hpp"
#include "mlxterp/io.hpp"
#include "mlxterp/report.hpp"
#include "mlxterp/tokenizer.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

// Contrastive TinyStories-style prompts: the same sentence, happy vs sad.
const std::vector<std::string> kHappy = {
    "Lily was very happy.", "Tim felt happy and smiled.", "The little girl was happy to play.",
    "Mom was happy to see Lily.", "The dog was happy in the sun.", "They were all very happy.",
    "Tim was happy with his new toy.", "The bird sang a happy song."};
const std::vector<std::string> kSad = {
    "Lily was very sad.", "Tim felt sad and cried.", "The little girl was sad to play.",
    "Mom was sad to see Lily.", "The dog was sad in the rain.", "They were all very sad.",
    "Tim was sad with his broken toy.", "The bird sang a sad song."};

std::vector<Prompt> prompts(const std::vector<std::string>& v) { return {v.begin(), v.end()}; }

#define REQUIRE_TOKENIZER(m) \
  if (!(m).has_tokenizer()) GTEST_SKIP() << "stories260K's tokenizer is not available in this build"

TEST(AnalysisSteering, MeanDifferenceAndPcaDefinitions) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  REQUIRE_TOKENIZER(m);
  SteeringOptions o;
  o.layers = {2};
  SteeringVectors sv = compute_steering_vectors(m, prompts(kHappy), prompts(kSad), o);
  // Mean difference of last-token block outputs, computed by hand one prompt at a time.
  auto last = [&](const std::string& t) {
    TraceOptions to;
    to.sites = {"model.layers.2"};
    at::Tensor a = m.trace(t, to).get("model.layers.2")[0].cpu();
    return a[a.size(0) - 1];
  };
  at::Tensor pos = at::zeros({64}), neg = at::zeros({64});
  for (const auto& t : kHappy) pos += last(t);
  for (const auto& t : kSad) neg += last(t);
  at::Tensor want = (pos - neg) / double(kHappy.size());
  EXPECT_LT(max_abs_diff(sv.vector(2), want), 1e-4) << "padding in the batched pass must not leak";
  EXPECT_EQ(sv.site(2), "model.layers.2");
  EXPECT_GT(sv.pos_projection[0], sv.neg_projection[0]);
  // PCA methods: sign-calibrated (positives project higher) and pointing roughly along the mean difference.
  for (SteerMethod meth : {SteerMethod::PcaDiff, SteerMethod::PcaCenter}) {
    o.method = meth;
    SteeringVectors p = compute_steering_vectors(m, prompts(kHappy), prompts(kSad), o);
    EXPECT_GT(p.pos_projection[0], p.neg_projection[0]) << steer_method_name(meth);
    EXPECT_GE(p.separation[0], 0.75) << steer_method_name(meth);
    double cos = at::cosine_similarity(p.vector(2), want, 0).item<double>();
    EXPECT_GT(cos, 0.5) << steer_method_name(meth);
  }
  // Mean over tokens instead of the last token.
  o.method = SteerMethod::MeanDiff;
  o.reduce = Reduce::Mean;
  EXPECT_GT(max_abs_diff(compute_steering_vectors(m, prompts(kHappy), prompts(kSad), o).vector(2), want), 1e-3);
  // Errors: PCA needs pairs.
  o.method = SteerMethod::PcaDiff;
  EXPECT_THROW(compute_steering_vectors(m, prompts(kHappy), {Prompt("x")}, o), Error);
  EXPECT_THROW(parse_steer_method("median"), Error);
}

TEST(AnalysisSteering, FilesRoundTrip) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  TempDir tmp;
  SteeringVectors sv;
  sv.layers = {1, 3};
  sv.vectors = {at::randn({64}), at::randn({64})};
  sv.pos_projection = sv.neg_projection = sv.separation = {0, 0};
  save_steering_vectors(tmp.file("v.safetensors"), sv);
  SteeringVectors back = load_steering_vectors(tmp.file("v.safetensors"));
  EXPECT_EQ(back.layers, sv.layers);
  EXPECT_TRUE(at::equal(back.vector(3), sv.vector(3)));
  // The --intervene spec picks the tensor named like the site.
  auto [site, fn] = iv::parse_intervention("model.layers.3=add:" + tmp.file("v.safetensors") + "*2", m.model());
  TraceOptions a, b;
  a.sites = b.sites = {"model.layers.3"};
  b.interventions.push_back({site, fn});
  at::Tensor ids = ids_tensor({1, 403, 407, 261});
  EXPECT_LT(max_abs_diff(m.trace_ids(ids, {}, b).get(site).cpu(), m.trace_ids(ids, {}, a).get(site).cpu() + sv.vector(3).cpu() * 2), 1e-5);
  // GGUF control vector round trip.
  ControlVector cv = to_control_vector(sv, "llama", m.n_layers());
  save_control_vector(tmp.file("c.gguf"), cv);
  ControlVector cb = load_control_vector(tmp.file("c.gguf"));
  EXPECT_EQ(cb.model_hint, "llama");
  EXPECT_EQ(cb.layer_count, m.n_layers() - 1);
  ASSERT_EQ(cb.directions.size(), 2u);
  EXPECT_TRUE(at::equal(cb.directions.at(1), sv.vector(1)));
  EXPECT_TRUE(at::equal(cb.directions.at(3), sv.vector(3)));
  GGUFFile g = GGUFFile::open(tmp.file("c.gguf"));
  EXPECT_EQ(g.get_string("general.architecture"), "controlvector");
  EXPECT_EQ(g.metadata().at("controlvector.layer_count").type, 5u);  // int32, as llama.cpp's generator writes
  // Layer 0 cannot be expressed, direction.0 / other types / other names are refused like llama.cpp does.
  SteeringVectors zero = sv;
  zero.layers = {0};
  zero.vectors = {at::randn({64})};
  EXPECT_THROW(to_control_vector(zero, "llama", 5), Error);
  save_gguf(tmp.file("d0.gguf"), {{"general.architecture", GGUFValue{std::string("controlvector"), 8}}},
            {{"direction.0", at::randn({64})}});
  EXPECT_THROW(load_control_vector(tmp.file("d0.gguf")), Error);
  save_gguf(tmp.file("f16.gguf"), {{"general.architecture", GGUFValue{std::string("controlvector"), 8}}},
            {{"direction.1", at::randn({64}).to(at::kHalf)}});
  EXPECT_THROW(load_control_vector(tmp.file("f16.gguf")), Error);
  save_gguf(tmp.file("arch.gguf"), {{"general.architecture", GGUFValue{std::string("llama"), 8}}}, {{"direction.1", at::randn({64})}});
  EXPECT_THROW(load_control_vector(tmp.file("arch.gguf")), Error);
  ControlVector wide;
  wide.directions[1] = at::randn({32});
  EXPECT_THROW(control_vector_interventions(wide, m.model()), Error);
}

// llama.cpp (the golden) adds direction.N to block N's output: our model.layers.N.
TEST(AnalysisSteering, ControlVectorMatchesLlamaCpp) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  auto g = nlohmann::json::parse(read_file(golden_path("steering/llamacpp_logits.json")));
  ControlVector cv = load_control_vector(golden_path("steering/cvec.gguf"));
  ASSERT_EQ(cv.directions.size(), 3u);
  for (const auto& [n, d] : cv.directions) {
    at::Tensor want = json_to_tensor(g["directions"][std::to_string(n)]).to(at::kFloat);
    EXPECT_TRUE(at::equal(d, want)) << "direction." << n;
  }
  std::vector<int32_t> ids = g["ids"].get<std::vector<int32_t>>();
  at::Tensor pos = at::tensor(g["positions"].get<std::vector<int64_t>>(), at::kLong);
  auto logits = [&](const std::vector<std::pair<std::string, InterventionFn>>& iv) {
    TraceOptions o;
    o.capture = false;
    o.interventions = iv;
    return m.trace_ids(ids_tensor(ids), {}, o).logits[0].cpu().index_select(0, pos).to(at::kDouble);
  };
  // Our forward agrees with llama.cpp's without a vector. llama.cpp's default context keeps K and V in
  // F16, which alone moves its logits by ~0.01; that sets the tolerance.
  const at::Tensor base = logits({});
  const double base_err = max_abs_diff(base, json_to_tensor(g["base"]));
  EXPECT_LT(base_err, 0.02);
  // The documented definition: strength * direction.N at model.layers.N, within [start, end]. Compared as
  // the change the vector makes (steered - base) on each side, so the common F16 error mostly cancels.
  auto delta_err = [&](const std::vector<std::pair<std::string, InterventionFn>>& iv, const char* key) {
    return max_abs_diff(logits(iv) - base, json_to_tensor(g[key]) - json_to_tensor(g["base"]));
  };
  const double all_err = delta_err(control_vector_interventions(cv, m.model(), 1.0), "all_layers_strength_1");
  EXPECT_LT(all_err, 0.02);
  auto only2 = control_vector_interventions(cv, m.model(), -2.5, 2, 2);
  ASSERT_EQ(only2.size(), 1u);
  EXPECT_EQ(only2[0].first, "model.layers.2");
  const double only2_err = delta_err(only2, "layer_2_only_strength_-2.5");
  EXPECT_LT(only2_err, 0.02);
  std::cout << "[llama.cpp control vector] max |logit| error: base " << base_err << ", all layers (delta) " << all_err
            << ", layer 2 only (delta) " << only2_err << "\n";
  // Off by one either way is clearly wrong (the vector is large enough to tell).
  const at::Tensor v2 = cv.directions.at(2) * -2.5;
  for (const char* site : {"model.layers.1", "model.layers.3", "model.layers.2.resid_pre", "model.layers.2.resid_mid"}) {
    double err = delta_err({{site, iv::add_vector(v2)}}, "layer_2_only_strength_-2.5");
    std::cout << "  direction.2 at " << site << " instead: error " << err << "\n";
    EXPECT_GT(err, 0.1) << site << " must not reproduce llama.cpp";
    EXPECT_GT(err, 10 * only2_err) << site;
  }
}

// Requirement 4: a steering vector from contrastive TinyStories prompts shifts generations, more so with
// strength. The concept is the protagonist's gender (girl vs boy sentences, read at the final "." so the
// token identity cancels; layer 3's block output); the metric is the female share of the pronouns
// (" She", " she", " her" vs " He", " he", " his") in sampled continuations: counted in the samples, and
// its exact expectation along them (the steered model's own next-token probabilities of those tokens,
// teacher-forced over each sample with the same vector). A happy-vs-sad vector was tried first: " happy"
// is too rare in this model's stories (~2 per 1000 tokens) to measure, and " sad" is three tokens.
TEST(AnalysisSteering, StrengthShiftsGenerations) {
  MLXTERP_REQUIRE_STORIES();
  const auto& m = stories();
  REQUIRE_TOKENIZER(m);
  SteeringOptions o;
  o.layers = {3};
  const std::vector<std::string> kF = {"Lily went to the park.", "The little girl was happy.", "Once upon a time, there was a girl named Sue.",
     "Mom smiled at Lily.", "Anna had a red ball.", "The girl liked to sing."};
  const std::vector<std::string> kM = {"Tim went to the park.", "The little boy was happy.", "Once upon a time, there was a boy named Sam.",
     "Mom smiled at Tim.", "Ben had a red ball.", "The boy liked to sing."};
  SteeringVectors sv = compute_steering_vectors(m, prompts(kF), prompts(kM), o);
  std::vector<int32_t> fem, mal;
  for (const char* t : {" She", " she", " her"}) fem.push_back(resolve_token(m, t));
  for (const char* t : {" He", " he", " his"}) mal.push_back(resolve_token(m, t));
  at::Tensor fi = at::tensor(std::vector<int64_t>(fem.begin(), fem.end()), at::kLong), mi = at::tensor(std::vector<int64_t>(mal.begin(), mal.end()), at::kLong);
  const std::vector<std::string> openings = {"Once upon a time, there was a little girl. She", "One day, Tim went to the park. He",
                                             "There was a cat.", "Once upon a time"};
  std::vector<double> strengths = {-2, -1, 0, 1, 2}, expected, sampled;
  std::string table;
  for (double s : strengths) {
    double pf = 0, pm = 0;
    int64_t nf = 0, nm = 0, total = 0;
    auto steer = steering_interventions(sv, s);
    for (const auto& op : openings) {
      for (uint64_t seed = 0; seed < 6; ++seed) {
        GenerateOptions g;
        g.max_tokens = 32;
        g.seed = seed;
        g.interventions = steer;
        GenerateResult r = m.generate(op, g);
        if (r.new_ids.empty()) continue;
        std::vector<int32_t> all = r.prompt_ids;
        all.insert(all.end(), r.new_ids.begin(), r.new_ids.end());
        TraceOptions to;
        to.capture = false;
        to.interventions = steer;
        at::Tensor pr = at::softmax(m.trace_ids(ids_tensor(all), {}, to).logits[0].cpu().to(at::kDouble), -1);
        const int64_t n0 = int64_t(r.prompt_ids.size()) - 1, n = int64_t(r.new_ids.size());
        pr = pr.slice(0, n0, n0 + n);
        pf += pr.index_select(1, fi).sum().item<double>();
        pm += pr.index_select(1, mi).sum().item<double>();
        for (int32_t t : r.new_ids) {
          nf += std::count(fem.begin(), fem.end(), t);
          nm += std::count(mal.begin(), mal.end(), t);
        }
        total += n;
      }
    }
    expected.push_back(pf / (pf + pm));
    sampled.push_back(double(nf) / double(std::max<int64_t>(nf + nm, 1)));
    table += "strength " + report::fmt(s, "%+.2f") + ": female share of pronouns, expected = " + report::fmt(expected.back(), "%.3f") +
             ", sampled = " + report::fmt(sampled.back(), "%.3f") + " (" + std::to_string(nf + nm) + " pronouns in " + std::to_string(total) + " tokens)\n";
  }
  std::cout << "[steering: layer 3 girl-boy mean difference, 4 openings x 6 samples x 32 tokens]\n" << table;
  RecordProperty("steering", table);
  for (size_t i = 0; i + 1 < expected.size(); ++i) EXPECT_LT(expected[i], expected[i + 1]) << table;
  EXPECT_GT(expected[4] - expected[0], 0.4) << table;
  EXPECT_LT(sampled[0], sampled[2]) << table;
  EXPECT_GT(sampled[4], sampled[2]) << table;
}

}  // namespace
