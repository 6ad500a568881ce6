// Pieces of `mlxterp demo` (cmd_demo.cpp): SAE features with their top-activating contexts, and the
// one-page HTML report.
//
//   auto feats = demo::top_features(model, sae, /*layer=*/2, corpus, {});     // a few features, their contexts
//   std::cout << demo::context_text(feats[0].contexts[0]);                   // "... and the [LORD] said ..."
//   demo::Report rep("models/kjv-llama", model);  rep.lens(lens_result);  ...;  rep.save("out/report.html");
//
// The demo uses the analysis toolkit (lenses, patching, report pages) and the SAE trainer.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mlxterp/analysis_lens.hpp"
#include "mlxterp/analysis_patching.hpp"
#include "mlxterp/report.hpp"
#include "mlxterp/sae.hpp"
#include "mlxterp/sae_config.hpp"
#include "mlxterp/sae_data.hpp"
#include "mlxterp/sae_train.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp::cli::demo {

// "3.80M", "512K", "97"
std::string human_count(int64_t n);
// printf("%.*f")
std::string fixed(double v, int precision);
// Copies the first n non-empty lines of `path` to `out` (atomically); returns `out`.
std::string first_lines(const std::string& path, int64_t n, const std::string& out);

// One token position where a feature fires, with the document's tokens around it.
struct Context {
  int64_t doc = 0, pos = 0;           // document index in the corpus, token position in it (0 = BOS)
  double value = 0;                   // the feature's activation at pos
  std::vector<std::string> tokens;    // display strings of the document's tokens (BOS included)
  std::vector<float> acts;            // the feature's activation at every token of the document
};

struct Feature {
  int64_t id = 0;
  double density = 0;                 // fraction of scanned tokens where it is active (> 0)
  std::string why;                    // how it was picked: "frequent" | "random"
  std::vector<Context> contexts;      // highest activation first, at most one per document
};

struct FeatureOptions {
  int64_t n_features = 6;    // half the densest eligible features, half a seeded random sample of the rest
  int64_t n_contexts = 5;
  int64_t max_docs = 0;      // documents scanned (the first ones of the corpus; 0 = all)
  int64_t batch = 32;        // documents per forward pass
  double max_density = 0.05; // eligible: active on at least 5 tokens and on at most this fraction
  uint64_t seed = 0;
  bool progress = true;      // progress bar on stderr
};

// Runs the model over the corpus documents (each cut to the model's context), encodes block `layer`'s
// output with the SAE (BOS/EOS/padding excluded, as in SAE training) and returns the picked features with
// their top contexts. Throws mlxterp::Error if the corpus has no tokens or no feature is eligible.
std::vector<Feature> top_features(const InterpretableModel& m, const SAE& sae, int layer, const TextCorpus& corpus,
                                  const FeatureOptions& o);

// "... and the [LORD] said unto ...": up to `before` tokens before the peak and `after` after it.
std::string context_text(const Context& c, int before = 12, int after = 4);

// The report: one self-contained HTML page (report::Page), built section by section as the demo runs.
class Report {
 public:
  Report(const std::string& model_path, const InterpretableModel& m);
  void tokens(const std::string& prompt, const std::vector<int32_t>& ids, const std::vector<std::string>& toks);
  void trace(int64_t n_sites, const std::vector<std::pair<std::string, std::vector<int64_t>>>& shown,
             const std::string& gen_prompt, const std::string& gen_text);
  void lens(const LensResult& r);
  void patching(const PatchResult& r);
  void sae(const SAEConfig& cfg, int layer, const SaeTrainResult& r,
           const std::vector<std::pair<int64_t, std::map<std::string, double>>>& curve, size_t n_docs);
  void features(const std::vector<Feature>& feats);
  void footer(const std::string& text);
  void save(const std::string& path);

 private:
  report::Page page_;
};

}  // namespace mlxterp::cli::demo
