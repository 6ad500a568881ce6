// mlxterp/analysis_lens.hpp — what each layer "predicts": logit lens, tuned lens, token predictions.
//
//   mlxterp::LensOptions o;  o.top_k = 5;  o.target = mlxterp::resolve_token(m, " Lily");
//   mlxterp::LensResult r = mlxterp::logit_lens(m, "Once upon a time, there was a little girl named", o);
//   r.top[layer][pos][0].token;          // top-1 at each (layer, position), with logit and probability
//   r.kl_to_final;                       // [n_layers, n_positions]: KL(p_final || p_layer) in nats
//   r.target_rank;                       // [n_layers, n_positions]: rank of the target (0 = top)
//   mlxterp::lens_page(r).save("lens.html");   // the grid, hover for top-k
//
//   // Tuned lens (Belrose et al. 2023): per-layer affine translators trained to match the final layer.
//   mlxterp::TunedLensTrainOptions t;   t.steps = 250;
//   mlxterp::TunedLens lens = mlxterp::train_tuned_lens(m, texts, t);
//   lens.save("lens_dir");               // config.json + translators.safetensors
//   auto tr = mlxterp::tuned_lens(m, mlxterp::TunedLens::load("lens_dir"), "Once upon a time", o);
//
// The lens reads the residual stream after block l (model.layers.l, the block output) and maps it
// through the model's own final norm and unembedding (tied or not, soft-capped where the model is):
//   logit lens:  logits_l = unembed(final_norm(h_l))
//   tuned lens:  logits_l = unembed(final_norm(h_l + A_l h_l + b_l))
// so at the last layer the logit lens IS the model's output (the tuned lens keeps the last layer as
// the identity). Every position of every row is available (no batch-0-only); positions are
// bounds-checked.
#pragma once

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "mlxterp/analysis_common.hpp"
#include "mlxterp/report.hpp"

namespace mlxterp {

// ---- hidden state -> tokens ---------------------------------------------------------------------

struct TokenPrediction {
  int32_t id = 0;
  float logit = 0, prob = 0;  // prob = softmax over the full vocabulary
  std::string token;          // display form (or "#id")
};

// logits = unembed(final_norm(h)) for any [..., d_model] (apply_norm = false skips the norm).
at::Tensor lens_logits(const Model& model, const at::Tensor& h, bool apply_norm = true);
// Top-k predictions for one hidden state [d_model] or for each row of [n, d_model].
std::vector<std::vector<TokenPrediction>> get_token_predictions(const InterpretableModel& m, const at::Tensor& h,
                                                                int top_k = 10, bool apply_norm = true);

// ---- logit lens ---------------------------------------------------------------------------------

struct LensOptions {
  std::vector<int> layers;               // empty = all
  int top_k = 5;
  std::optional<int64_t> position;       // one position (negative from the end); default all
  std::optional<int32_t> target;         // a token whose probability and rank are tracked
  bool apply_norm = true;                // false: skip the final norm (the original's skip_norm)
};

struct LensResult {
  std::string lens = "logit";            // "logit" | "tuned"
  std::vector<int32_t> input_ids;
  std::vector<std::string> input_tokens;
  std::vector<int> layers;               // the real layer index of each row
  std::vector<int64_t> positions;        // the position of each column
  // top[row][col] = top-k predictions for (layers[row], positions[col]).
  std::vector<std::vector<std::vector<TokenPrediction>>> top;
  at::Tensor kl_to_final;                // [n_rows, n_cols] KL(p_final || p_lens), nats
  at::Tensor entropy;                    // [n_rows, n_cols] entropy of p_lens, nats
  at::Tensor target_prob, target_rank;   // [n_rows, n_cols] (defined if a target was given)
  std::optional<int32_t> target;
  std::string target_token;              // display form of the target
  std::vector<std::vector<TokenPrediction>> final_top;  // the model's own top-k per column

  nlohmann::json to_json() const;
};

LensResult logit_lens(const InterpretableModel& m, const Prompt& prompt, const LensOptions& options = {});

// ---- tuned lens ---------------------------------------------------------------------------------

// Translators T_l(h) = h + h A_l^T + b_l for l in 0 .. n_layers-2 (A, b zero-initialised, so an
// untrained lens is the logit lens); the last layer has none (its lens is exact).
class TunedLens {
 public:
  TunedLens() = default;
  TunedLens(int n_layers, int64_t d_model);  // identity (zero) initialisation

  int n_layers() const { return n_layers_; }
  int64_t d_model() const { return d_model_; }
  // h: [..., d_model] taken from block `layer`'s output -> translated h (same shape).
  at::Tensor translate(const at::Tensor& h, int layer) const;
  at::Tensor& weight(int layer) { return A_.at(size_t(layer)); }  // [d_model, d_model]
  at::Tensor& bias(int layer) { return b_.at(size_t(layer)); }    // [d_model]
  const at::Tensor& weight(int layer) const { return A_.at(size_t(layer)); }
  const at::Tensor& bias(int layer) const { return b_.at(size_t(layer)); }
  nlohmann::json& info() { return info_; }  // training record, saved in config.json
  const nlohmann::json& info() const { return info_; }

  // A directory: config.json {"format": "mlxterp-tuned-lens", n_layers, d_model, ...} and
  // translators.safetensors (translators.{l}.weight [d, d], translators.{l}.bias [d]).
  void save(const std::string& dir) const;
  static TunedLens load(const std::string& dir);
  void to(at::Device device);

 private:
  int n_layers_ = 0;
  int64_t d_model_ = 0;
  std::vector<at::Tensor> A_, b_;  // n_layers - 1 translators
  nlohmann::json info_ = nlohmann::json::object();
};

struct TunedLensTrainOptions {
  int steps = 250;               // the paper's setting
  double lr = 1.0;               // SGD with Nesterov momentum, linearly decayed to 0 (the paper's setting)
  double momentum = 0.9;
  double weight_decay = 1e-3;
  double grad_clip = 1.0;        // global L2 norm (the original's pragmatic addition); 0 = off
  int64_t seq_len = 128;         // tokens per training sequence
  int64_t batch_size = 8;        // sequences per step
  uint64_t seed = 0;             // sequence sampling order
  double holdout_fraction = 0.1; // sequences kept out of training for evaluation
  bool progress = true;          // progress bar on stderr
};

struct TunedLensEval {
  std::vector<int> layers;
  std::vector<double> logit_kl, tuned_kl;  // mean KL(p_final || p_lens) per layer over held-out tokens, nats
  int64_t n_tokens = 0;
  nlohmann::json to_json() const;
};

// Trains on `texts` (tokenized once and cut into seq_len windows; each text keeps its BOS).
// The result's info() holds the loss curve and the held-out evaluation.
TunedLens train_tuned_lens(const InterpretableModel& m, const std::vector<Prompt>& texts,
                           const TunedLensTrainOptions& options = {});
// Token-id version (windows of seq_len cut from each row of `sequences`).
TunedLens train_tuned_lens_ids(const InterpretableModel& m, const std::vector<std::vector<int32_t>>& sequences,
                               const TunedLensTrainOptions& options = {}, TunedLensEval* eval = nullptr);
// Mean per-layer KL of logit lens and tuned lens on these sequences.
TunedLensEval evaluate_tuned_lens(const InterpretableModel& m, const TunedLens& lens,
                                  const std::vector<std::vector<int32_t>>& sequences, int64_t batch_size = 8);

LensResult tuned_lens(const InterpretableModel& m, const TunedLens& lens, const Prompt& prompt,
                      const LensOptions& options = {});

// ---- pages --------------------------------------------------------------------------------------

// The grid alone as an SVG heatmap: layers (rows, last on top) x positions, top-1 token per cell
// coloured by its probability, tooltips with the top-k, KL to final and (if set) the target's rank.
std::string lens_grid_svg(const LensResult& r, const std::string& title = "");

// The grid: layers (rows, last on top) x positions, top-1 token per cell coloured by its
// probability, hover for top-k; plus KL-to-final and target-rank heatmaps when present.
report::Page lens_page(const LensResult& r, const std::string& title = "");
// Logit lens and tuned lens side by side (same prompt), with the per-layer KL table.
report::Page lens_comparison_page(const LensResult& logit, const LensResult& tuned, const TunedLensEval* eval = nullptr);

}  // namespace mlxterp
