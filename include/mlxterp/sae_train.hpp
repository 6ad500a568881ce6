// mlxterp/sae_train.hpp — the SAE training loop: streaming or cached activations in, a native SAE directory out.
//
//   auto model = mlxterp::InterpretableModel::load("stories260K.gguf");
//   auto corpus = mlxterp::TextCorpus::open("tinystories.txt");
//   mlxterp::SAEConfig cfg;  cfg.expansion_factor = 16;  cfg.k = 32;  cfg.num_epochs = 1;
//   mlxterp::SaeTrainOptions opt;  opt.out_dir = "runs/l2";  opt.log_dir = "runs/l2/logs";
//   mlxterp::SaeTrainResult r = mlxterp::train_sae(model, /*layer=*/2, "resid_post", corpus, cfg, opt);
//   // runs/l2/{weights.safetensors, config.json, checkpoint.safetensors}; r.final_metrics["fvu"], ...
//
// What it prints (stdout; --quiet silences it) — the original's lines, kept:
//   🎯 Training SAE on Layer 2 resid_post
//   📊 Config: 16x expansion, k=32
//   ✓ Activation dimension: 64
//   🏗️  Created TopKSAE(d_in=64, d_sae=1024, k=32, expansion=16x)
//   ✓ Split: 3,871 training documents, 430 validation documents
//   ✓ 334,886 training tokens per epoch (streaming mode, shuffle buffer 131,072 tokens)
//   ✓ 1,308 steps per epoch, 1,308 total steps
//   Training  42%|████▏     | 550/1308 [00:10<00:14, 52.3 it/s, loss=0.123, l0=32, dead=0.0%]   (stderr)
//   📸 Checkpoint at step 500
//      💾 Saved checkpoint to runs/l2/checkpoint.safetensors
//   Epoch 1/1 - Val loss: 0.1234 (fvu=0.0512, l0=32.0, dead=1.2%)
//   💾 Saved SAE to runs/l2
//   ✅ Training complete!
// The progress bar goes to stderr; when stderr is not a terminal it prints a plain line every few seconds.
// `dead` is the windowed statistic: latents that have not fired in the last dead_window_tokens() tokens.
//
// Checkpoints: <out_dir>/checkpoint.safetensors, one file written atomically (temp file + rename), holding
// every tensor of SaeTrainState and, in its metadata, the step, the stream position, the config and the data
// fingerprint. `resume_dir` continues from it exactly: same weights, Adam moments, schedule position, dead
// counters and data position, so the final weights equal an uninterrupted run's (bitwise on the same machine
// and thread count). Every random draw derives from (seed, purpose, counter) — there is no hidden RNG state.
// The Adam moments keep their dtype (optimizer_state_dtype); resuming with the other optimizer_state_dtype
// converts them (to float32 exactly, to bfloat16 rounded to nearest) and says so on stderr.
//
// Non-finite loss or gradients: the update is skipped on the device (weights never become NaN); at the next
// metric sync training stops with "Gradient computation failed ..." and the guide's remedies, writing nothing.
//
// Logs (log_dir, or <out_dir>/logs when use_wandb = true — our offline stand-in for Weights & Biases):
// metrics.jsonl (one JSON object per sync / validation), events.out.tfevents.* (TensorBoard scalars
// "train/loss", "train/fvu", "val/fvu", ...), training_curves.html (self-contained SVG plots).
#pragma once

#include <cstdio>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "mlxterp/sae.hpp"
#include "mlxterp/sae_config.hpp"
#include "mlxterp/sae_data.hpp"

namespace mlxterp {

struct SaeTrainOptions {
  std::string out_dir;     // required: final SAE + checkpoint.safetensors
  std::string log_dir;     // "" = no logs (unless use_wandb)
  std::string resume_dir;  // directory holding checkpoint.safetensors to continue from ("" = fresh)
  bool quiet = false;
  bool plain_progress = false;  // force plain progress lines (tests)
  int64_t stop_after_steps = -1;  // stop (after checkpointing) once this step is reached; -1 = run to the end
  // Called at every metric sync with the step and the metrics (after they are logged).
  std::function<void(int64_t step, const std::map<std::string, double>&)> on_sync;
};

struct SaeTrainResult {
  SAE sae;
  int64_t steps = 0, total_steps = 0, tokens = 0;
  std::map<std::string, double> final_metrics;  // validation (or last training window) metrics
  double seconds = 0, step_seconds = 0;          // wall time; time inside sae_train_step (synchronised)
  bool finished = false;                          // false when stopped by stop_after_steps
};

// Trains on `source`; `metadata` (model, site, layer, component...) goes into the SAE's config.json.
SaeTrainResult train_sae(ActivationSource& source, const SAEConfig& cfg, const nlohmann::ordered_json& metadata,
                         const SaeTrainOptions& options);

// The original's entry point: streams `corpus` through `model`, hooking block `layer`'s `component`.
SaeTrainResult train_sae(const InterpretableModel& model, int layer, const std::string& component,
                         const TextCorpus& corpus, const SAEConfig& cfg, const SaeTrainOptions& options);

// Metrics of an SAE on raw activation rows x [n, d_in] (inference encoding: batchtopk uses its threshold).
// Keys: mse (mean_t Σ_d (x - x̂)², raw space), fvu, explained_variance, cosine, l0, l0_sparsity, l1,
// l1_magnitude, frac_active (latents active on >= 1 token), n_tokens. Definitions: docs/sae-metrics.md.
std::map<std::string, double> evaluate_sae(const SAE& sae, const at::Tensor& x, int64_t batch_rows = 4096);

// ---- logging (sae/logging.cpp) ----
// CRC32C (Castagnoli), as TFRecord framing uses; masked form per TensorFlow.
uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);

// Appends scalar summaries to a TensorBoard event file (TFRecord of Event protos, written by hand).
class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::string& dir);  // creates events.out.tfevents.<time>.<host>
  ~TensorBoardWriter();
  void scalar(const std::string& tag, double value, int64_t step);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& event);
  std::string path_;
  FILE* f_ = nullptr;
};

// Writes a self-contained HTML page with one SVG line chart per metric. `rows` are the JSONL objects.
void write_training_curves_html(const std::string& path, const std::string& title,
                                const std::vector<nlohmann::ordered_json>& rows);

}  // namespace mlxterp
