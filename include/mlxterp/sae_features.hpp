// mlxterp/sae_features.hpp — what does each latent do? Streaming feature analysis, per-text tools, and a static
// feature dashboard (the SAEDashboard / Neuronpedia kind of page, offline).
//
//   auto model = mlxterp::InterpretableModel::load("stories260K.gguf");
//   mlxterp::SAE sae = mlxterp::SAE::load("runs/l2");
//   auto corpus = mlxterp::TextCorpus::open("tinystories.txt");
//   mlxterp::FeatureAnalysisOptions o;
//   o.features = {3, 17, 42};                                        // empty = every latent
//   mlxterp::FeatureAnalysis fa = mlxterp::analyze_features(model, sae, corpus, o);
//   const mlxterp::FeatureStats& f = fa.features[0];                 // latent 3
//   f.density; f.max_act; f.top[0].tokens; f.top[0].acts;            // its strongest context, token by token
//   f.promoted[0].token;                                             // the token its decoder row raises most
//   mlxterp::write_feature_dashboard("dash/", fa, model, sae, {});   // open dash/index.html in any browser
//
//   // One text:
//   auto top = mlxterp::top_features_for_text(model, sae, "Once upon a time", 10);   // [(latent, max act, position)]
//   auto tf = mlxterp::feature_activations_by_token(model, sae, "Once upon a time", {3, 17});
//   tf.tokens[i], tf.acts[i][j]                                      // token i, latent features[j]
//
// Streaming and memory. The corpus goes through the model and the SAE batch by batch; per selected latent the
// analysis keeps: a bounded min-heap of its top_contexts strongest activations, a uniform reservoir of
// sample_contexts activating contexts (seeded; the quantile groups are cut from it), a 32-bin histogram whose range
// doubles as larger values arrive (exact counts, no second pass), and its count / sum / max. Every context stores
// its window of tokens (context_left before, context_right after, within its sequence) with this latent's
// activation at each. Memory is O(latents x (top_contexts + sample_contexts) x window), independent of corpus size.
//
// Logit tables: the decoder row's direct effect on the logits, W_dec[f] · diag(g) · W_U, where W_U is
// Model::unembedding_matrix() and g the final norm's per-dimension gain (the RMSNorm weight; for LayerNorm the
// weight up to a common factor). Only for sites as wide as the residual stream. Nearest features: cosine
// similarity of decoder rows.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "mlxterp/sae.hpp"
#include "mlxterp/sae_data.hpp"
#include "mlxterp/sae_eval.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp {

struct FeatureAnalysisOptions {
  SaeDataOptions data;                // which text (default: every document) and how it is batched
  std::vector<int64_t> features;      // latents to analyse; empty = all
  int64_t top_contexts = 20;          // strongest activations kept per latent
  int64_t sample_contexts = 30;       // uniform reservoir of activating contexts per latent
  int64_t quantile_groups = 5;        // the reservoir cut into this many activation-quantile groups (dashboard)
  int64_t context_left = 12, context_right = 4;  // window around the activating token
  int64_t n_logits = 10;              // promoted / suppressed tokens per latent
  int64_t n_neighbors = 8;            // nearest latents by decoder cosine
  uint64_t seed = 0;                  // reservoir sampling
};

// One activating position with its surroundings.
struct FeatureContext {
  float value = 0;                 // the latent's activation at the centre token
  int64_t doc = 0, piece = 0;      // document and piece (context_size window) it came from
  int64_t position = 0;            // the centre token's index within its sequence
  int32_t centre = 0;              // index of the centre token in `tokens`
  std::vector<int32_t> tokens;     // token ids of the window
  std::vector<float> acts;         // the latent's activation at each window token (0 at BOS/padding)
};

struct TokenScore {
  int32_t token = 0;
  float value = 0;
};

struct FeatureStats {
  int64_t feature = 0;
  int64_t count = 0;               // tokens it fired on (> 0)
  double density = 0;              // count / tokens
  double max_act = 0, mean_act = 0;  // mean over the tokens it fired on
  std::vector<FeatureContext> top;      // strongest first
  std::vector<FeatureContext> samples;  // uniform sample of activating contexts, weakest first
  double hist_range = 0;                // histogram bins split [0, hist_range) evenly
  std::vector<int64_t> hist;
  std::vector<TokenScore> promoted, suppressed;  // largest / smallest logit effects
  double logit_lo = 0, logit_hi = 0;             // logit-effect histogram over the vocabulary
  std::vector<int64_t> logit_hist;
  std::vector<std::pair<int64_t, float>> neighbors;  // (latent, decoder cosine), most similar first
};

struct FeatureAnalysis {
  std::vector<FeatureStats> features;  // in the order of FeatureAnalysisOptions::features (or 0 .. d_sae-1)
  std::string site;
  int64_t tokens = 0, sequences = 0, documents = 0, context_size = 0;
  std::string data_path;
  bool has_logits = false;
  double seconds = 0;
};

// Streams `corpus` (options.data) through the model and the SAE, then adds logit tables and nearest features.
FeatureAnalysis analyze_features(const InterpretableModel& model, const SAE& sae, const TextCorpus& corpus,
                                 const FeatureAnalysisOptions& options);

// Fills promoted / suppressed / logit histogram (returns false, leaving them empty, when the site is not as wide as
// the residual stream) and neighbors for `stats`.
bool add_logit_tables(const InterpretableModel& model, const SAE& sae, std::vector<FeatureStats>& stats, int64_t n);
void add_neighbors(const SAE& sae, std::vector<FeatureStats>& stats, int64_t n);

// ---- one text -------------------------------------------------------------------------------------

struct TextFeatures {
  std::vector<int32_t> ids;         // with BOS when the tokenizer adds one
  std::vector<std::string> tokens;  // display form of each id
  std::vector<char> evaluated;      // false at BOS/EOS/PAD (their activations are reported as 0)
  std::vector<int64_t> features;    // the latents in `acts`' columns
  at::Tensor acts;                  // [n_tokens, n_features] float32, CPU
};
// The latents' activations at every token of `text` (features empty = all latents).
TextFeatures feature_activations_by_token(const InterpretableModel& model, const SAE& sae, const std::string& text,
                                          const std::vector<int64_t>& features = {}, const std::string& site = "");

struct TextFeature {
  int64_t feature = 0;
  float max_act = 0;
  int64_t position = 0;  // token index of the maximum
};
// The top_k latents by maximum activation over the text's (non-special) tokens; only those above 0.
std::vector<TextFeature> top_features_for_text(const InterpretableModel& model, const SAE& sae, const std::string& text,
                                               int64_t top_k = 10, const std::string& site = "");

// ---- dashboard ------------------------------------------------------------------------------------

struct DashboardOptions {
  std::string title;              // "" = "<sae> at <site>"
  std::string sae_path, model_path;
  int64_t features_per_file = 32; // per-feature data is split into files of this many latents, loaded on demand
  int64_t page_size = 100;        // index rows per page
};

// Writes a static, self-contained dashboard to `dir`: index.html (the whole app, inline CSS/JS, no network) and
// data/*.js (index.js, vocab.js, f_NNNNN.js). Data files are scripts that hand their data to the page (pages opened
// from file:// cannot fetch() JSON), loaded on demand, so the page opens instantly for 16k+ latents.
// URL hash: #feature=ID opens a latent; #q=TEXT&sort=density|max|mean|id&dir=asc|desc&page=N drive the index;
// #selftest runs the page's own checks (search, sort, a feature view) and writes the result into #selftest-result.
// Every file is written atomically; returns the number of files written.
int64_t write_feature_dashboard(const std::string& dir, const FeatureAnalysis& fa, const InterpretableModel& model,
                                const SAE& sae, const DashboardOptions& options);

// The dashboard's per-latent JSON record (what f_NNNNN.js holds for it).
nlohmann::json feature_json(const FeatureStats& f, int64_t quantile_groups);

}  // namespace mlxterp
