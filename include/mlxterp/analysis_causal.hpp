// mlxterp/analysis_causal.hpp — causal tracing (Meng et al. 2022, "ROME"): corrupt the subject's token
// embeddings with noise, then restore one clean activation at a time and see how much of the
// probability of the correct next token comes back.
//
//   mlxterp::CausalTraceOptions o;                      // noise = 3 x std of the embeddings, 10 samples
//   auto r = mlxterp::causal_trace(m, "The Eiffel Tower is located in the city of", "The Eiffel Tower", " Paris", o);
//   r.prob;       // [n_layers, t]: P(target) with block l's output restored at position p
//   r.recovery;   // (prob - p_corrupt) / (p_clean - p_corrupt)
//   mlxterp::causal_trace_page(r).save("trace.html");
//
//   auto facts = mlxterp::load_facts("known_1000.json");
//   auto summary = mlxterp::causal_trace_facts(m, facts, o);   // average over facts, ROME's token groups
//
// Definitions (ROME's): the corrupted run adds noise_std * N(0, 1) to the embedding-site output at
// the subject's positions (a fresh draw per sample; the same draws in the corrupted and every restored
// run); "restoring" sets the chosen site at one (layer, position) to its clean value, with the noise
// still applied. P is read at the last position and averaged over samples. With `window` > 1 (ROME's
// MLP/attention plots use 10) the site is restored in `window` consecutive layers centred on l.
// Consequences a correct implementation must show (and the tests check): restoring the last block's
// output at the last position gives exactly p_clean; at any earlier position it changes nothing.
#pragma once

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "mlxterp/analysis_common.hpp"
#include "mlxterp/report.hpp"

namespace mlxterp {

struct CausalTraceOptions {
  std::vector<int> layers;               // empty = all
  std::string component = "resid_post";  // what is restored: resid_post, mlp, attn (or any suffix)
  double noise_std = 0;                  // 0 = noise_multiplier x std of the embedding-site output
  double noise_multiplier = 3.0;
  int samples = 10;                      // noise draws averaged
  uint64_t seed = 42;
  int window = 1;
  int batch_size = 64;
  bool progress = false;
};

struct CausalTraceResult {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
  int64_t subject_start = 0, subject_end = 0;  // token span [start, end)
  int32_t target = 0;
  std::string target_token, component;
  std::vector<int> layers;
  at::Tensor prob;      // [n_layers, t] P(target) with the restoration (mean over samples)
  at::Tensor recovery;  // [n_layers, t]
  double p_clean = 0, p_corrupt = 0, noise_std = 0;
  int samples = 0;

  nlohmann::json to_json() const;
};

// Token span [start, end) of `subject` inside the prompt's tokens (by characters of the tokens'
// display strings, like ROME's find_token_range). Throws if the subject is not in the prompt.
std::pair<int64_t, int64_t> find_subject_span(const InterpretableModel& m, const std::vector<int32_t>& ids,
                                              const std::string& subject);
// The first token of `target` as it continues the prompt: encode(prompt + " " + target) past the
// prompt's own tokens (no extra space when the prompt ends in whitespace or target starts with one).
int32_t continuation_token(const InterpretableModel& m, const std::string& prompt, const std::string& target);
// The noise standard deviation used by default: multiplier x std of the embedding-site output.
double embedding_noise_std(const Model& model, double multiplier = 3.0);

CausalTraceResult causal_trace(const InterpretableModel& m, const Prompt& prompt, int64_t subject_start, int64_t subject_end,
                               int32_t target, const CausalTraceOptions& options = {});
CausalTraceResult causal_trace(const InterpretableModel& m, const std::string& prompt, const std::string& subject,
                               const std::string& target, const CausalTraceOptions& options = {});

// ---- batch mode over known facts ------------------------------------------------------------------

struct FactRecord {
  std::string prompt, subject, target;  // target = the "attribute" field
  int64_t id = -1;
};
// ROME's known_1000.json (fields known_id, subject, attribute, prompt, ...), or a JSON list / JSONL of
// objects with prompt (or template + subject) and attribute (or object / target).
std::vector<FactRecord> load_facts(const std::string& path);

struct CausalTraceSummary {
  static constexpr int kGroups = 6;
  static const char* group_name(int g);  // first subject token, middle subject tokens, last subject token,
                                         // first subsequent token, further tokens, last token
  std::vector<int> layers;
  at::Tensor recovery;         // [kGroups, n_layers] mean over facts
  at::Tensor indirect_effect;  // [kGroups, n_layers] mean of P(restored) - P(corrupted) (ROME's AIE)
  at::Tensor count;            // [kGroups] facts contributing to each group
  int64_t n_facts = 0, n_used = 0, n_skipped = 0;
  double mean_p_clean = 0, mean_p_corrupt = 0;
  std::vector<std::string> skipped_reasons;  // first few
  nlohmann::json to_json() const;
};

// Facts whose clean P(target) - corrupted P(target) < min_drop are skipped (ROME's filter), as are
// facts whose subject or target cannot be located. `limit` > 0 caps the facts tried.
CausalTraceSummary causal_trace_facts(const InterpretableModel& m, const std::vector<FactRecord>& facts,
                                      const CausalTraceOptions& options = {}, double min_drop = 0.05, int64_t limit = 0);

report::Page causal_trace_page(const CausalTraceResult& r);
report::Page causal_trace_summary_page(const CausalTraceSummary& s);

}  // namespace mlxterp
