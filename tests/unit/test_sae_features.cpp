// Feature analysis: streaming statistics against brute force, logit tables, neighbours, per-text tools, dashboard files.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <tuple>

#include "common.hpp"
#include "mlxterp/sae_eval.hpp"
#include "mlxterp/sae_features.hpp"
#include "mlxterp/tokenizer.hpp"
#include "test_sae_eval_fixtures.hpp"

namespace mlxterp::test {
namespace {

struct Occ {
  float v;
  int64_t doc, piece, pos;
};

// Every sequence the analysis sees (via sae eval --save-tokens: same batching code), run one by one.
struct Brute {
  std::vector<nlohmann::json> seqs;
  std::vector<at::Tensor> z;  // per sequence [t, d_sae], 0 at non-evaluated positions
  int64_t tokens = 0;
};

Brute brute_force(const SAE& s, const std::string& data, const SaeDataOptions& d, TempDir& t) {
  const auto& m = stories_model();
  SaeEvalOptions eo;
  eo.data = d;
  eo.downstream = false;
  eo.save_tokens = t.file("seqs.jsonl");
  TextCorpus c = TextCorpus::open(data);
  evaluate_sae_on_corpus(m, s, c, eo);
  Brute b;
  std::ifstream f(eo.save_tokens);
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    std::vector<int64_t> ids = j["ids"];
    std::vector<int64_t> keep = j["keep"];
    TraceOptions o;
    o.sites = {"model.layers.2"};
    o.need_logits = false;
    auto tr = m.trace_ids(at::tensor(ids, at::kLong).unsqueeze(0), {}, o);
    at::Tensor z = s.encode(tr.get("model.layers.2")[0]) * at::tensor(keep, at::kLong).to(at::kFloat).unsqueeze(1);
    for (int64_t k : keep) b.tokens += k;
    b.seqs.push_back(j);
    b.z.push_back(z);
  }
  return b;
}

TEST(SaeFeatures, StreamingStatisticsMatchBruteForce) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 10);
  SAE s = random_topk_sae(64, 48, 6, 11);
  FeatureAnalysisOptions o;
  o.data.batch_sequences = 3;
  o.data.context_size = 48;  // documents split into several pieces
  o.top_contexts = 5;
  o.sample_contexts = 7;
  o.context_left = 3;
  o.context_right = 2;
  o.features = {0, 7, 13, 47};
  TextCorpus c = TextCorpus::open(data);
  FeatureAnalysis fa = analyze_features(stories_model(), s, c, o);
  Brute b = brute_force(s, data, o.data, t);
  ASSERT_EQ(fa.tokens, b.tokens);
  ASSERT_EQ(fa.features.size(), 4u);
  for (const FeatureStats& f : fa.features) {
    std::vector<Occ> occ;
    for (size_t q = 0; q < b.seqs.size(); ++q)
      for (int64_t p = 0; p < b.z[q].size(0); ++p) {
        float v = b.z[q][p][f.feature].item<float>();
        if (v > 0) occ.push_back({v, b.seqs[q]["doc"].get<int64_t>(), b.seqs[q]["piece"].get<int64_t>(), p});
      }
    SCOPED_TRACE("latent " + std::to_string(f.feature));
    ASSERT_EQ(f.count, int64_t(occ.size()));
    EXPECT_NEAR(f.density, double(occ.size()) / double(b.tokens), 1e-12);
    std::stable_sort(occ.begin(), occ.end(), [](const Occ& a, const Occ& c) { return a.v > c.v; });
    if (occ.empty()) {
      EXPECT_TRUE(f.top.empty());
      continue;
    }
    EXPECT_NEAR(f.max_act, occ[0].v, 1e-5);
    double sum = 0;
    for (const auto& x : occ) sum += x.v;
    EXPECT_NEAR(f.mean_act, sum / double(occ.size()), 1e-4);
    int64_t hist_total = 0;
    for (int64_t h : f.hist) hist_total += h;
    EXPECT_EQ(hist_total, f.count);
    EXPECT_GT(f.hist_range, f.max_act);
    EXPECT_LE(f.hist_range, 2 * f.max_act + 1e-6);  // the range grows by doubling only as needed
    // The top contexts are the strongest activations, strongest first, each with its true window.
    ASSERT_EQ(f.top.size(), std::min<size_t>(5, occ.size()));
    for (size_t i = 0; i < f.top.size(); ++i) {
      const FeatureContext& cx = f.top[i];
      EXPECT_NEAR(cx.value, occ[i].v, 1e-5) << i;
      size_t q = 0;
      while (q < b.seqs.size() && !(b.seqs[q]["doc"] == cx.doc && b.seqs[q]["piece"] == cx.piece)) ++q;
      ASSERT_LT(q, b.seqs.size());
      std::vector<int64_t> ids = b.seqs[q]["ids"];
      const int64_t a = std::max<int64_t>(0, cx.position - 3), e = std::min<int64_t>(int64_t(ids.size()), cx.position + 3);
      ASSERT_EQ(int64_t(cx.tokens.size()), e - a);
      EXPECT_EQ(cx.centre, cx.position - a);
      for (int64_t p = a; p < e; ++p) {
        EXPECT_EQ(cx.tokens[size_t(p - a)], ids[size_t(p)]);
        EXPECT_NEAR(cx.acts[size_t(p - a)], b.z[q][p][f.feature].item<float>(), 1e-5);
      }
      EXPECT_NEAR(cx.acts[size_t(cx.centre)], cx.value, 1e-6);
    }
    // Reservoir samples are real activating tokens, weakest first.
    EXPECT_EQ(f.samples.size(), std::min<size_t>(7, occ.size()));
    for (size_t i = 0; i < f.samples.size(); ++i) {
      const auto& sm = f.samples[i];
      if (i) {
        EXPECT_LE(f.samples[i - 1].value, sm.value);
      }
      bool found = std::any_of(occ.begin(), occ.end(), [&](const Occ& x) {
        return x.doc == sm.doc && x.piece == sm.piece && x.pos == sm.position && std::fabs(x.v - sm.value) < 1e-5;
      });
      EXPECT_TRUE(found) << "sample " << i;
    }
  }
}

TEST(SaeFeatures, ReservoirIsSeededAndCoversTheRange) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 30);
  SAE s = random_topk_sae(64, 16, 4, 2);
  FeatureAnalysisOptions o;
  o.sample_contexts = 40;
  TextCorpus c = TextCorpus::open(data);
  FeatureAnalysis a = analyze_features(stories_model(), s, c, o), b = analyze_features(stories_model(), s, c, o);
  o.seed = 99;
  FeatureAnalysis other = analyze_features(stories_model(), s, c, o);
  int differs = 0;
  for (size_t i = 0; i < a.features.size(); ++i) {
    ASSERT_EQ(a.features[i].samples.size(), b.features[i].samples.size());
    for (size_t j = 0; j < a.features[i].samples.size(); ++j)
      EXPECT_EQ(a.features[i].samples[j].value, b.features[i].samples[j].value);
    if (a.features[i].count > 200) {
      differs += a.features[i].samples.front().value != other.features[i].samples.front().value ||
                 a.features[i].samples.back().value != other.features[i].samples.back().value;
      // A uniform sample of 40 spans most of the distribution: its median sits between the 10th and 90th
      // percentile of the histogram.
      const auto& f = a.features[i];
      double med = f.samples[f.samples.size() / 2].value, acc = 0, p10 = -1, p90 = -1;
      for (size_t h = 0; h < f.hist.size(); ++h) {
        acc += double(f.hist[h]);
        double edge = f.hist_range * double(h + 1) / double(f.hist.size());
        if (p10 < 0 && acc >= 0.1 * double(f.count)) p10 = edge - f.hist_range / double(f.hist.size());
        if (p90 < 0 && acc >= 0.9 * double(f.count)) p90 = edge;
      }
      EXPECT_GE(med, p10) << "latent " << f.feature;
      EXPECT_LE(med, p90) << "latent " << f.feature;
    }
  }
  EXPECT_GT(differs, 0);
}

TEST(SaeFeatures, LogitTablesAndNeighboursFromTheWeights) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  const auto& m = stories_model();
  SAE s = random_topk_sae(64, 32, 4, 5);
  std::vector<FeatureStats> st(3);
  st[0].feature = 0;
  st[1].feature = 9;
  st[2].feature = 31;
  ASSERT_TRUE(add_logit_tables(m, s, st, 5));
  add_neighbors(s, st, 4);
  at::Tensor gamma = m.model().w("model.norm.weight");
  at::Tensor eff = at::matmul(s.params.W_dec * gamma, m.model().unembedding_matrix());  // [32, V]
  at::Tensor wn = s.params.W_dec / s.params.W_dec.norm(2, 1, true);
  at::Tensor cos = at::matmul(wn, wn.t());
  for (const auto& f : st) {
    at::Tensor row = eff[f.feature];
    ASSERT_EQ(f.promoted.size(), 5u);
    EXPECT_EQ(f.promoted[0].token, row.argmax().item<int64_t>());
    EXPECT_NEAR(f.promoted[0].value, row.max().item<float>(), 1e-4);
    EXPECT_EQ(f.suppressed[0].token, row.argmin().item<int64_t>());
    EXPECT_NEAR(f.logit_lo, row.min().item<double>(), 1e-4);
    int64_t total = 0;
    for (int64_t h : f.logit_hist) total += h;
    EXPECT_EQ(total, m.model().config().d_vocab);
    at::Tensor c = cos[f.feature].clone();
    c[f.feature] = -2;
    ASSERT_EQ(f.neighbors.size(), 4u);
    EXPECT_EQ(f.neighbors[0].first, c.argmax().item<int64_t>());
    EXPECT_NEAR(f.neighbors[0].second, c.max().item<float>(), 1e-5);
    for (const auto& [id, v] : f.neighbors) EXPECT_NE(id, f.feature);
  }
  // An SAE on a site narrower or wider than the residual stream has no direct logit effect.
  SAE mlp = random_topk_sae(172, 8, 2, 1, "model.layers.2.mlp.hidden");
  std::vector<FeatureStats> st2(1);
  EXPECT_FALSE(add_logit_tables(m, mlp, st2, 5));
}

// Per-token activations line up with the tokens, BOS included (the original's visualiser dropped BOS and
// misaligned every row).
TEST(SaeFeatures, PerTokenActivationsAlignWithTokens) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  const auto& m = stories_model();
  SAE s = random_topk_sae(64, 64, 4, 8);
  const std::string text = "Once upon a time, there was a little cat.";
  TextFeatures tf = feature_activations_by_token(m, s, text, {3, 10, 40});
  ASSERT_EQ(tf.ids.size(), tf.tokens.size());
  ASSERT_EQ(tf.acts.size(0), int64_t(tf.ids.size()));
  ASSERT_EQ(tf.acts.size(1), 3);
  EXPECT_EQ(tf.ids[0], m.tokenizer().special().bos);
  EXPECT_FALSE(tf.evaluated[0]);
  EXPECT_EQ(tf.acts[0].abs().sum().item<float>(), 0.0f);
  auto tr = m.trace(text);
  at::Tensor z = s.encode(tr.get("model.layers.2")[0]);
  for (int64_t i = 1; i < tf.acts.size(0); ++i)
    for (int64_t j = 0; j < 3; ++j) EXPECT_NEAR(tf.acts[i][j].item<float>(), z[i][tf.features[size_t(j)]].item<float>(), 1e-6);
  auto top = top_features_for_text(m, s, text, 5);
  ASSERT_FALSE(top.empty());
  at::Tensor zm = z.narrow(0, 1, z.size(0) - 1).amax(0);
  EXPECT_EQ(top[0].feature, zm.argmax().item<int64_t>());
  EXPECT_NEAR(top[0].max_act, zm.max().item<float>(), 1e-6);
  EXPECT_NEAR(z[top[0].position][top[0].feature].item<float>(), top[0].max_act, 1e-6);
  for (size_t i = 1; i < top.size(); ++i) EXPECT_LE(top[i].max_act, top[i - 1].max_act);
}

TEST(SaeFeatures, DashboardFilesAreSplitAndSelfContained) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 6);
  SAE s = random_topk_sae(64, 70, 4, 4);
  FeatureAnalysisOptions o;
  TextCorpus c = TextCorpus::open(data);
  FeatureAnalysis fa = analyze_features(stories_model(), s, c, o);
  DashboardOptions d;
  d.features_per_file = 32;
  const int64_t n = write_feature_dashboard(t.file("dash"), fa, stories_model(), s, d);
  EXPECT_EQ(n, 3 + 3 + 0);  // index.html, index.js, vocab.js + ceil(70 / 32) = 3 data files
  for (const char* f : {"index.html", "data/index.js", "data/vocab.js", "data/f_00000.js", "data/f_00002.js"})
    EXPECT_TRUE(file_exists(t.file(std::string("dash/") + f))) << f;
  EXPECT_FALSE(file_exists(t.file("dash/data/f_00003.js")));
  std::string idx = read_file(t.file("dash/data/index.js"));
  const std::string pre = "window.SAEDASH_INDEX = ";
  ASSERT_EQ(idx.rfind(pre, 0), 0u);
  auto j = nlohmann::json::parse(idx.substr(pre.size(), idx.size() - pre.size() - 2));
  ASSERT_EQ(j["rows"].size(), 70u);
  const auto& fields = j["fields"];
  const size_t fid = size_t(std::find(fields.begin(), fields.end(), "id") - fields.begin());
  const size_t ffile = size_t(std::find(fields.begin(), fields.end(), "file") - fields.begin());
  for (const auto& row : j["rows"]) {  // each row's file holds that latent
    char name[32];
    std::snprintf(name, sizeof name, "dash/data/f_%05lld.js", (long long)row[ffile].get<int64_t>());
    std::string body = read_file(t.file(name));
    EXPECT_NE(body.find("\"" + std::to_string(row[fid].get<int64_t>()) + "\":{"), std::string::npos);
  }
  std::string html = read_file(t.file("dash/index.html"));
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_NE(html.find("Content-Security-Policy"), std::string::npos);
  EXPECT_NE(html.find("<script src=\"data/index.js\">"), std::string::npos);
  // A latent's record carries what the feature view draws.
  nlohmann::json rec = feature_json(fa.features[0], 5);
  for (const char* k : {"id", "count", "density", "max", "mean", "hist", "top", "groups", "pos", "neg", "logit_hist", "nn"})
    EXPECT_TRUE(rec.contains(k)) << k;
}

TEST(SaeFeaturesCli, HtmlJsonTextAndErrors) {
  MLXTERP_REQUIRE_DATA(kStoriesHf);
  TempDir t;
  auto data = first_stories(t.file("d.txt"), 5);
  random_topk_sae(64, 40, 4, 6).save(t.file("sae"));
  const std::string base = "sae features --sae " + t.file("sae") + " --model " + data_path("models/stories260K/stories260K.gguf");
  auto r = run_cli(base + " --data " + data + " --html " + t.file("dash") + " --top 10 --json " + t.file("f.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("Dashboard"), std::string::npos);
  auto j = nlohmann::json::parse(read_file(t.file("f.json")));
  ASSERT_EQ(j["features"].size(), 10u);
  for (size_t i = 1; i < 10; ++i) EXPECT_LT(j["features"][i - 1]["id"].get<int64_t>(), j["features"][i]["id"].get<int64_t>());
  auto sel = run_cli(base + " --data " + data + " --json " + t.file("g.json") + " --features 3,5");
  ASSERT_EQ(sel.code, 0) << sel.err;
  EXPECT_EQ(nlohmann::json::parse(read_file(t.file("g.json")))["features"].size(), 2u);
  auto text = run_cli(base + " --text \"Once upon a time\" --top 3 --json " + t.file("t.json"));
  ASSERT_EQ(text.code, 0) << text.err;
  EXPECT_NE(text.out.find("Per-token activations"), std::string::npos) << text.out;
  auto tj = nlohmann::json::parse(read_file(t.file("t.json")));
  EXPECT_EQ(tj["tokens"].size(), tj["activations"].size());
  EXPECT_EQ(run_cli(base + " --data " + data).code, 2);  // nowhere to write
  EXPECT_EQ(run_cli(base + " --data " + data + " --json x.json --features 1 --top 2").code, 2);
  auto bad = run_cli(base + " --data " + data + " --json " + t.file("h.json") + " --features 1,99");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("latent 99 is out of range"), std::string::npos) << bad.err;
  EXPECT_FALSE(file_exists(t.file("h.json")));
}

}  // namespace
}  // namespace mlxterp::test
