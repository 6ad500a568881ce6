// mlxterp sae features --sae DIR --model M --data F --html DIR [--features 1,2,3 | --top N] [--json F]
// mlxterp sae features --sae DIR --model M --text S [--features 1,2,3 | --top N] [--json F]
#include <cstdio>
#include <iostream>

#include "cli.hpp"
#include "mlxterp/report.hpp"
#include "mlxterp/sae_features.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string sae, model, tokenizer, data, html, features, json, text, site, title;
  int64_t top = 0, max_tokens = 0, context_size = 0, batch = 0, contexts = 20, samples = 30;
  double holdout = 1.0;
  bool lines = false;
};

std::string shown(const std::string& t) {
  std::string o;
  for (char c : t) o += c == '\n' ? std::string("⏎") : std::string(1, c);
  return o;
}

int run_text(const Opts& o, const Globals& g, const InterpretableModel& m, const SAE& sae) {
  std::vector<int64_t> feats = o.features.empty() ? std::vector<int64_t>{} : parse_id_list(o.features, "--features");
  nlohmann::ordered_json out;
  out["text"] = o.text;
  if (feats.empty()) {
    auto top = top_features_for_text(m, sae, o.text, o.top > 0 ? o.top : 10, o.site);
    nlohmann::ordered_json arr = nlohmann::ordered_json::array();
    for (const auto& t : top) feats.push_back(t.feature);
    TextFeatures tf = feature_activations_by_token(m, sae, o.text, {}, o.site);
    for (const auto& t : top)
      arr.push_back({{"feature", t.feature}, {"max_act", t.max_act}, {"position", t.position},
                     {"token", tf.tokens[size_t(t.position)]}});
    out["top_features"] = arr;
    if (!g.quiet) {
      std::printf("Top features for %s\n", quote(o.text).c_str());
      for (const auto& t : top)
        std::printf("  #%-6lld max %8.3f at token %lld %s\n", (long long)t.feature, t.max_act, (long long)t.position,
                    quote(shown(tf.tokens[size_t(t.position)])).c_str());
      if (top.empty()) std::printf("  (no latent fires on this text)\n");
    }
  }
  TextFeatures tf = feature_activations_by_token(m, sae, o.text, feats, o.site);
  out["tokens"] = tf.tokens;
  out["ids"] = tf.ids;
  out["features"] = tf.features;
  out["activations"] = report::tensor_json(tf.acts);  // [n_tokens, n_features]
  if (!g.quiet && !tf.features.empty()) {
    std::printf("\nPer-token activations\n  %-16s", "token");
    for (int64_t f : tf.features) std::printf(" %9s", ("#" + std::to_string(f)).c_str());
    std::printf("\n");
    for (size_t i = 0; i < tf.tokens.size(); ++i) {
      std::printf("  %-16s", quote(shown(tf.tokens[i])).c_str());
      for (size_t j = 0; j < tf.features.size(); ++j) std::printf(" %9.3f", tf.acts[int64_t(i)][int64_t(j)].item<float>());
      std::printf("\n");
    }
  }
  if (!o.json.empty()) report::write_json(o.json, out);
  return 0;
}

int run(const Opts& o, const Globals& g) {
  if (!o.features.empty() && o.top > 0) throw UsageError("sae features: pass --features or --top, not both");
  if (o.text.empty() && o.data.empty()) throw UsageError("sae features: --data F (with --html DIR or --json F) or --text S is required");
  if (!o.text.empty() && (!o.data.empty() || !o.html.empty()))
    throw UsageError("sae features: --text analyses one text; drop --data/--html (or drop --text)");
  if (!o.data.empty() && o.html.empty() && o.json.empty())
    throw UsageError("sae features: say where the analysis goes: --html DIR (dashboard) and/or --json F");
  if (o.top < 0) throw UsageError("sae features: --top must be >= 1");
  SAE sae = SAE::load(o.sae);
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  if (!o.text.empty()) return run_text(o, g, m, sae);

  TextCorpus corpus = TextCorpus::open(o.data, o.lines);
  FeatureAnalysisOptions fo;
  fo.data.site = o.site;
  fo.data.holdout = o.holdout;
  fo.data.max_tokens = o.max_tokens;
  fo.data.context_size = o.context_size;
  fo.data.batch_sequences = o.batch;
  fo.data.progress = !g.quiet;
  fo.data.progress_label = "Analysing features";
  fo.top_contexts = o.contexts;
  fo.sample_contexts = o.samples;
  if (!o.features.empty()) fo.features = parse_id_list(o.features, "--features");
  FeatureAnalysis fa = analyze_features(m, sae, corpus, fo);
  if (o.top > 0) {  // the N latents that fire most often
    std::stable_sort(fa.features.begin(), fa.features.end(),
                     [](const FeatureStats& a, const FeatureStats& b) { return a.count > b.count; });
    if (int64_t(fa.features.size()) > o.top) fa.features.resize(size_t(o.top));
    std::stable_sort(fa.features.begin(), fa.features.end(),
                     [](const FeatureStats& a, const FeatureStats& b) { return a.feature < b.feature; });
  }
  Timer write_timer;
  int64_t files = 0;
  if (!o.html.empty()) {
    DashboardOptions dopt;
    dopt.title = o.title;
    dopt.sae_path = o.sae;
    dopt.model_path = o.model;
    files = write_feature_dashboard(o.html, fa, m, sae, dopt);
  }
  if (!o.json.empty()) {
    nlohmann::json j = {{"site", fa.site}, {"tokens", fa.tokens}, {"sequences", fa.sequences},
                        {"documents", fa.documents}, {"data", fa.data_path}};
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& f : fa.features) arr.push_back(feature_json(f, fo.quantile_groups));
    j["features"] = arr;
    report::write_json(o.json, j);
  }
  if (!g.quiet) {
    int64_t alive = 0;
    for (const auto& f : fa.features) alive += f.count > 0;
    std::printf("✓ Analysed %zu features (%lld fired) over %lld tokens (%lld documents) at %s in %.1f s\n", fa.features.size(),
                (long long)alive, (long long)fa.tokens, (long long)fa.documents, fa.site.c_str(), fa.seconds);
    if (!o.html.empty())
      std::printf("💾 Dashboard: %s (%lld files, written in %.1f s); open it in any browser, offline\n",
                  join_path(o.html, "index.html").c_str(), (long long)files, write_timer.seconds());
    if (!o.json.empty()) std::printf("💾 Saved feature analysis to %s\n", o.json.c_str());
    std::printf("   peak RSS %.0f MB\n", double(peak_rss_bytes()) / 1048576.0);
  }
  return 0;
}

const bool registered = register_command(
    "sae features", "Per-latent analysis (top contexts, densities, logits) and a static dashboard; or one text's features",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--sae", o->sae, "SAE directory (native, SAELens or sparsify)")->required();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--data", o->data, "Text file (blank-line-separated documents), --lines file, or JSONL");
      app.add_flag("--lines", o->lines, "One document per line");
      app.add_option("--html", o->html, "Write the dashboard to this directory (index.html + data/)");
      app.add_option("--json", o->json, "Write the analysis (or, with --text, the text's activations) as JSON");
      app.add_option("--features", o->features, "Latents to analyse, e.g. 1,2,3 (default: all)");
      app.add_option("--top", o->top, "Keep the N latents that fire most often (with --text: the N strongest)");
      app.add_option("--text", o->text, "Show the top features of this text and their per-token activations");
      app.add_option("--site", o->site, "The site the SAE reads (default: from the SAE's files)");
      app.add_option("--holdout", o->holdout, "Use the last fraction F of the documents (default 1 = all)")->capture_default_str();
      app.add_option("--max-tokens", o->max_tokens, "Stop after this many tokens (0 = all)");
      app.add_option("--context-size", o->context_size, "Tokens per sequence (default: the SAE's training context_size)");
      app.add_option("--batch", o->batch, "Sequences per forward pass (default: automatic)");
      app.add_option("--contexts", o->contexts, "Top-activating contexts kept per latent")->capture_default_str();
      app.add_option("--samples", o->samples, "Random activating contexts per latent (quantile groups)")->capture_default_str();
      app.add_option("--title", o->title, "Dashboard title");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
