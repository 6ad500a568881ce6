// mlxterp/analysis_attention.hpp — attention patterns, head-type scores, the interactive viewer, and
// direct logit attribution.
//
//   auto pat = mlxterp::attention_patterns(m, "Once upon a time there was a cat");
//   pat.weights;                                   // [n_layers, n_heads, t, t] (the forward pass's own softmax)
//   auto ind = mlxterp::induction_scores(m);       // [n_layers, n_heads] on repeated random tokens
//   auto hs  = mlxterp::head_scores(m, pat, ind);  // previous / first / current token, induction, duplicate, copying
//   mlxterp::attention_page(pat, &hs).save("attention.html");   // interactive viewer, no network
//
//   mlxterp::DlaOptions d;  d.answer = mlxterp::resolve_token(m, " cat");
//   auto dla = mlxterp::direct_logit_attribution(m, "Once upon a time there was a", d);
//   dla.per_head;                                  // [n_layers, n_heads] contributions to the answer's logit
//
// Patterns come from the model's own attention computation (site self_attn.attention_weights, computed
// on request inside the forward pass), so q/k norms, GQA, sliding windows, soft-capping and masks are
// exactly those of the model — nothing is re-derived.
//
// Scores on one head's pattern A [t_q, t_k] (averaged over rows that have the relevant key):
//   previous_token  mean_i A[i, i-1]            (i >= 1)
//   first_token     mean_i A[i, 0]              (i >= 1: row 0 can only attend to itself, so it is left out)
//   current_token   mean_i A[i, i]              (i >= 1)
//   induction       mean_i A[i, i - n + 1]      on [BOS, r_1..r_n, r_1..r_n]: queries in the second copy
//   duplicate       mean_i A[i, i - n]          same sequences: attention to the earlier copy of the same token
//   copying         sum(Re eig) / sum(|eig|) of the head's OV circuit W_U^T W_O^h W_V^h W_E^T (Elhage et al.;
//                   norms ignored; 1 = the head copies tokens, -1 = it suppresses them)
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mlxterp/analysis_common.hpp"
#include "mlxterp/report.hpp"

namespace mlxterp {

struct AttentionPatterns {
  std::vector<int> layers;
  at::Tensor weights;  // [n_layers, n_heads, t, t] float32, CPU (batch row 0 of the prompt)
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
  nlohmann::json to_json(int decimals = 4) const;
};

AttentionPatterns attention_patterns(const InterpretableModel& m, const Prompt& prompt, const std::vector<int>& layers = {});

// ---- scores on one pattern [t_q, t_k] ----------------------------------------------------------------
double previous_token_score(const at::Tensor& A);
double first_token_score(const at::Tensor& A);
double current_token_score(const at::Tensor& A);
// `offset` = the first position of the first copy (1 with a BOS); n = the copy length.
double induction_score(const at::Tensor& A, int64_t n, int64_t offset = 1);
double duplicate_token_score(const at::Tensor& A, int64_t n, int64_t offset = 1);

struct InductionOptions {
  int64_t length = 50;       // random tokens per copy
  int n_sequences = 8;       // sequences averaged
  bool prepend_bos = true;   // the original prepended none (§5.3)
  uint64_t seed = 42;
  std::vector<int> layers;
};
struct InductionScores {
  std::vector<int> layers;
  at::Tensor induction, duplicate;  // [n_layers, n_heads]
  InductionOptions options;
};
// Random tokens drawn uniformly from the vocabulary minus special (and byte-fallback) tokens, repeated
// twice; scores averaged over n_sequences.
InductionScores induction_scores(const InterpretableModel& m, const InductionOptions& options = {});
// The same scores on given sequences ids [S, offset + 2 * length] whose positions offset .. offset+length-1
// repeat at offset+length .. (options.length = length, options.n_sequences = S; seed unused).
InductionScores induction_scores_on(const InterpretableModel& m, const at::Tensor& ids, int64_t length, int64_t offset,
                                    const std::vector<int>& layers = {});

// The copying score of every head [n_layers, n_heads] (needs q/k/v/o projection weights by HF name).
at::Tensor copying_scores(const Model& model, const std::vector<int>& layers = {});

struct HeadScores {
  std::vector<int> layers;
  int64_t n_heads = 0;
  std::map<std::string, at::Tensor> scores;  // name -> [n_layers, n_heads]
  struct Entry {
    int layer;
    int64_t head;
    double score;
  };
  // The k highest-scoring heads for one score, best first.
  std::vector<Entry> top(const std::string& score, int k = 5) const;
  // Heads whose score is strictly above each threshold (the original's classification).
  std::map<std::string, std::vector<Entry>> classify(const std::map<std::string, double>& thresholds) const;
  nlohmann::json to_json() const;
};
// previous/first/current token scores on `pattern`'s prompt; induction/duplicate/copying when given.
HeadScores head_scores(const InterpretableModel& m, const AttentionPatterns& pattern, const InductionScores* induction = nullptr,
                       bool copying = true);

// The interactive viewer: layer slider with real layer ids, head thumbnails (hover previews, click
// locks), the selected head's pattern as a heatmap with per-cell tooltips, token strip (hover a token
// to see where it attends from / to), and the head-score table.
report::Page attention_page(const AttentionPatterns& p, const HeadScores* scores = nullptr);

// ---- direct logit attribution ------------------------------------------------------------------------

struct DlaOptions {
  int32_t answer = -1;   // required
  int32_t wrong = -1;    // optional: attribute logit[answer] - logit[wrong]
  int64_t position = -1; // the position whose next-token logit is explained
  bool per_head = true;
};

// The final residual stream x = embed + sum_l (attn_l + mlp_l) is mapped through the final norm with
// its scale frozen at x (TransformerLens's convention), then onto the unembedding direction u =
// W_U[:, answer] (- W_U[:, wrong]); contributions add up to the logit (difference) before any logit
// soft-cap. `other` holds whatever the components do not explain (0 for the Llama family).
struct DlaResult {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
  int64_t position = 0;
  std::string answer_token, wrong_token;
  double embed = 0, bias = 0, other = 0, total = 0, model_value = 0;
  at::Tensor attn, mlp;  // [n_layers]
  at::Tensor per_head;   // [n_layers, n_heads] (sums to attn minus the o_proj bias term)
  nlohmann::json to_json() const;
};
DlaResult direct_logit_attribution(const InterpretableModel& m, const Prompt& prompt, const DlaOptions& options);
report::Page dla_page(const DlaResult& r);

}  // namespace mlxterp
