// mlxterp/analysis_patching.hpp — activation patching and attribution patching.
//
//   mlxterp::PatchOptions o;
//   o.component = "resid_post";                      // resid_pre|resid_mid|resid_post|attn|mlp|head|q|k|v|o|gate|up|down
//   o.positions = mlxterp::PatchPositions::Each;     // a layer x position matrix (All: every position at once)
//   o.metric = {mlxterp::Metric::LogitDiff, mlxterp::resolve_token(m, " Mary"), mlxterp::resolve_token(m, " John")};
//   mlxterp::PatchResult r = mlxterp::activation_patching(m, clean_prompt, corrupted_prompt, o);
//   r.recovery;   // [n_layers, n_positions, n_heads]: 1 = the patch restores the clean metric, 0 = no effect
//   mlxterp::patching_page(r).save("patch.html");
//
//   mlxterp::AttributionResult a = mlxterp::attribution_patching(m, clean_prompt, corrupted_prompt, o);
//   a.estimate;   // gradient x activation-difference estimate of the same quantity as r.values - r.corrupt_value
//
// Patching is "denoising": the corrupted prompt runs with one activation replaced by its value from the
// clean prompt; the clean run happens once, the corrupted run once, then one run per patch, batched.
// The metric is read at the last position (MetricSpec::position). For every metric
//   recovery = (m(patched) - m(corrupted)) / (m(clean) - m(corrupted))
// so 1 means fully restored whichever direction the metric points (for the distance metrics
// l2/cosine/mse/kl, m(clean) = 0 and this is the original's (d_corr - d_patched) / d_corr).
// Prompts of different lengths are an error unless `align` says how to line them up (the original
// silently end-aligned them).
#pragma once

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mlxterp/analysis_common.hpp"
#include "mlxterp/interventions.hpp"
#include "mlxterp/report.hpp"

namespace mlxterp {

// ---- metrics ------------------------------------------------------------------------------------

enum class Metric {
  LogitDiff,  // logit[answer] - logit[wrong]
  Prob,       // P(answer)
  KL,         // KL(p_clean || p), nats
  CE,         // -log P(answer), nats
  L2,         // ||logits - clean_logits||_2 (the original's l2)
  Cosine,     // 1 - cos(logits, clean_logits) (the original's cosine)
  MSE,        // mean((logits - clean_logits)^2) (the original's mse)
};
Metric parse_metric(std::string_view s);  // logit-diff | prob | kl | ce | l2 | cosine | mse
std::string metric_name(Metric m);

struct MetricSpec {
  Metric metric = Metric::LogitDiff;
  int32_t answer = -1, wrong = -1;  // token ids (logit-diff needs both; prob/ce need answer, or use the clean top-1)
  int64_t position = -1;            // where the metric reads the logits (negative: from the end)
};

// The metric for each row of `logits` [b, V] (already at the metric position), given the clean
// run's logits there [V]. Differentiable (attribution patching backpropagates through it). [b] float32.
at::Tensor metric_value(const MetricSpec& spec, const at::Tensor& logits, const at::Tensor& clean_logits);

// ---- low-level: run the corrupted prompt with any set of patches ----------------------------------

// One site patched from the clean run, at some positions (empty = all) and heads (empty = all; only
// for per-head sites [b, t, n_heads*d_head] such as self_attn.z).
struct PatchEdit {
  std::string site;
  std::vector<int64_t> positions;  // corrupted-prompt positions
  std::vector<int64_t> heads;
};
using PatchSpec = std::vector<PatchEdit>;  // patched together in one run; empty = the plain corrupted run

struct PatchRunOptions {
  iv::Align align = iv::Align::Strict;  // how clean positions map onto corrupted ones when lengths differ
  int64_t metric_position = -1;
  int batch_size = 32;                  // runs per forward pass
  // Interventions applied to the corrupted run and to every patched run, before the patches, never to
  // the clean run (causal tracing: clean and corrupted ids are the same, `base` adds the noise).
  std::vector<std::pair<std::string, InterventionFn>> base;
  bool progress = false;
};

struct PatchRuns {
  at::Tensor clean_logits;    // [V] at the metric position of the clean run
  at::Tensor corrupt_logits;  // [V] at the metric position of the corrupted run (with `base`)
  at::Tensor logits;          // [n_specs, V] one row per spec
  std::vector<int32_t> clean_ids, corrupt_ids;
};

PatchRuns run_patches(const InterpretableModel& m, const std::vector<int32_t>& clean_ids,
                      const std::vector<int32_t>& corrupt_ids, const std::vector<PatchSpec>& specs,
                      const PatchRunOptions& options = {});

// ---- activation patching ------------------------------------------------------------------------

enum class PatchPositions { All, Each };

struct PatchOptions {
  std::string component = "resid_post";
  std::vector<int> layers;                  // empty = all
  PatchPositions positions = PatchPositions::All;
  std::vector<int64_t> position_list;       // with Each: only these positions (default: all)
  MetricSpec metric;
  iv::Align align = iv::Align::Strict;
  int batch_size = 32;
  bool progress = false;
};

// Component shorthands -> site suffix: resid_pre, resid_mid, resid_post (the block output), attn
// (self_attn), mlp, head (self_attn.z, one head at a time), q, k, v, o, gate, up, down (the
// projections), z; anything else is taken as a site suffix (mlp.hidden, input_layernorm, ...).
std::string component_site_suffix(const std::string& component);
bool component_is_per_head(const std::string& component);

struct PatchResult {
  std::string component, metric;
  std::vector<int> layers;
  std::vector<int64_t> positions;          // one entry -1 when all positions were patched together
  int64_t n_heads = 1;                     // > 1 for per-head components
  at::Tensor values;                       // [n_layers, n_positions, n_heads] metric after the patch
  at::Tensor recovery;                     // same shape
  double clean_value = 0, corrupt_value = 0;
  std::vector<std::string> clean_tokens, corrupt_tokens;
  std::string answer_token, wrong_token;

  nlohmann::json to_json() const;
};

PatchResult activation_patching(const InterpretableModel& m, const Prompt& clean, const Prompt& corrupted,
                                const PatchOptions& options = {});

// ---- attribution patching -----------------------------------------------------------------------

struct AttributionResult {
  std::string component, metric;
  std::vector<int> layers;
  std::vector<int64_t> positions;
  int64_t n_heads = 1;
  at::Tensor estimate;                     // [n_layers, n_positions, n_heads]: grad . (a_clean - a_corrupt)
  at::Tensor recovery;                     // estimate / (m(clean) - m(corrupted))
  double clean_value = 0, corrupt_value = 0;
  std::vector<std::string> clean_tokens, corrupt_tokens;
  // Filled by validate_attribution: the real patching effects and their correlation.
  at::Tensor patched_effect;               // real m(patched) - m(corrupted), same shape
  double pearson_r = std::nan("");

  nlohmann::json to_json() const;
};

// One forward + backward pass on the corrupted prompt (plus one clean pass for the activations).
AttributionResult attribution_patching(const InterpretableModel& m, const Prompt& clean, const Prompt& corrupted,
                                       const PatchOptions& options = {});
// Runs real activation patching with the same options and fills patched_effect and pearson_r.
void validate_attribution(const InterpretableModel& m, const Prompt& clean, const Prompt& corrupted,
                          const PatchOptions& options, AttributionResult& a);

// ---- pages --------------------------------------------------------------------------------------

// Heatmap of recovery: layer x position (or layer x head), or bars when one value per layer.
report::Page patching_page(const PatchResult& r);
report::Page attribution_page(const AttributionResult& a);

}  // namespace mlxterp
