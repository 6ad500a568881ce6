// mlxterp/sae_config.hpp — every knob of SAE training, with the original's names, defaults and messages.
//
//   mlxterp::SAEConfig cfg;                                  // the original's defaults
//   cfg.sae_type = "batchtopk";  cfg.expansion_factor = 16;  cfg.k = 32;
//   cfg.set("learning_rate", "1e-4");                        // what `--set learning_rate=1e-4` does
//   cfg.apply_json(nlohmann::json::parse(read_file("sae.json")), "sae.json");   // `--config sae.json`
//   cfg.validate();       // throws mlxterp::Error, e.g. "expansion_factor must be >= 1, got 0"
//   nlohmann::ordered_json j = cfg.to_json();                // every field, stored in the SAE's config.json
//
// Field names are those of the original mlxterp SAEConfig (and of the troubleshooting guide), plus the
// ones modern training needs (AuxK, dead window in tokens, decoder unit norm, b_dec init, dtype, device,
// context size, shuffle buffer, Adam hyper-parameters and the dtype of their moments). `SAEConfig::fields()`
// lists every field with its one-line documentation; docs/TROUBLESHOOTING.md and `mlxterp sae train
// --help-config` print that table.
//
// Validation messages keep the guide's wording ("expansion_factor must be >= 1, got 0",
// "k must be >= 1, got 0", "learning_rate must be > 0, got 0", "batch_size must be >= 1, got 0",
// "num_epochs must be >= 1, got 0", "validation_split must be in [0, 1), got 1") and every other field
// gets a message of the same form. Wrong JSON types are errors too ("k must be an integer, got \"32\""),
// and so are unknown keys ("unknown SAEConfig field 'learning_rat' (did you mean 'learning_rate'?)").
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace mlxterp {

struct SAEConfig {
  // ---- architecture ----
  std::string sae_type = "topk";     // topk | batchtopk | jumprelu | relu (ReLU + L1; alias "standard")
  int64_t expansion_factor = 32;     // d_sae = d_in * expansion_factor
  int64_t k = 100;                   // active latents per token (topk), mean per token (batchtopk)
  double lambda_sparse = 0.0;        // sparsity coefficient: L1 (relu) or L0 (jumprelu); must be > 0 for those
  bool tied_weights = false;         // decoder rows = encoder rows (one matrix), separate b_dec
  bool decoder_unit_norm = true;     // decoder rows kept at unit L2 norm, gradient parallel to them removed
  std::string b_dec_init = "geometric_median";  // geometric_median | mean | zeros (of the first buffer)
  bool normalize_input = true;       // x / s with one scalar s, E‖x/s‖² = d_in (first buffer); folded on export
  double jumprelu_bandwidth = 0.001;       // STE rectangle-kernel width ε
  double jumprelu_init_threshold = 0.001;  // initial θ (in normalised units)

  // ---- optimisation ----
  double learning_rate = 3e-4;
  int64_t batch_size = 256;          // activation rows (tokens) per step
  int64_t num_epochs = 10;
  int64_t warmup_steps = 1000;       // linear LR warm-up
  std::string lr_scheduler = "cosine";     // cosine | linear | constant (after warm-up)
  std::optional<int64_t> lr_decay_steps;   // step at which the decay ends; null = the last step
  double lr_min_ratio = 0.0;         // the decayed LR ends at learning_rate * lr_min_ratio
  std::optional<int64_t> sparsity_warm_up_steps;  // lambda_sparse ramps 0 -> full over these steps; null = none
  int64_t k_anneal_steps = 0;        // topk/batchtopk: k decays linearly from min(d_sae, d_in) to k; 0 = off
  std::optional<double> gradient_clip = 1.0;  // global L2 norm; null or 0 = off
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  double weight_decay = 0.0;         // decoupled (AdamW), on W_enc and W_dec only
  // float32 | bfloat16: dtype of the Adam moments of W_enc and W_dec (the bias moments stay float32).
  // bfloat16 halves the optimizer's memory and the fused CUDA step's optimizer traffic; each step computes the
  // moments in float32 and stores them stochastically rounded (unbiased, so they do not stall the way
  // round-to-nearest does). float32 is exact torch AdamW.
  std::string optimizer_state_dtype = "float32";
  int64_t seed = 42;

  // ---- dead latents ----
  bool use_ghost_grads = false;      // SAELens ghost grads on dead latents (exp residual loss)
  int64_t feature_sampling_window = 1000;  // steps per latent-density window (dense fraction, histogram)
  int64_t dead_feature_window = 1000;      // dead = not fired for this many steps' worth of tokens
  int64_t dead_tokens_window = 0;          // the same window in tokens; 0 = dead_feature_window * batch_size
  double dead_neuron_threshold = 0.0;      // a latent fires on a token when its activation is > this
  int64_t k_aux = 0;                 // AuxK latents (topk/batchtopk); 0 = d_in / 2
  double auxk_coef = 1.0 / 32.0;     // AuxK loss weight (topk/batchtopk) for unit-mean-squared-norm inputs; 0 = off
                                    // (normalize_input trains on E‖x‖² = d_in: the step uses auxk_coef · d_in)
  int64_t resample_dead_every = 0;   // steps between dead-latent resamplings; 0 = off

  // ---- batchtopk inference threshold ----
  double threshold_decay = 0.99;     // EMA of the batch's smallest kept activation (used for validation)
  int64_t threshold_calibration_steps = 0;  // final θ from the activation histogram of the last N steps; 0 = auto

  // ---- data ----
  int64_t text_batch_size = 32;      // sequences per model forward while streaming
  int64_t context_size = 256;        // tokens per sequence (longer documents are split, BOS repeated)
  bool exclude_special_tokens = true;  // BOS/EOS/PAD positions never reach the SAE
  int64_t shuffle_buffer_tokens = 0;   // token-level shuffle buffer; 0 = auto (<= 512 MB: a whole cached epoch
                                      // when it fits, i.e. a full permutation; else <= 131072 tokens)
  double validation_split = 0.05;    // fraction of documents held out (the last ones)
  int64_t validation_max_tokens = 32768;  // validation tokens kept (harvested once)

  // ---- hardware ----
  std::string dtype = "float32";     // compute dtype of the SAE matmuls (master weights stay float32)
  std::string device = "auto";       // auto (the model's device) | cpu | cuda | cuda:N

  // ---- logging / checkpoints ----
  int64_t checkpoint_every = 5000;   // steps; 0 = only at the end
  int64_t log_every = 10;            // steps between metric syncs (progress bar, JSONL)
  int64_t eval_every = 0;            // steps between validations; 0 = after each epoch
  bool use_wandb = false;            // offline stand-in: TensorBoard events + metrics.jsonl (no network)
  std::string wandb_project = "mlxterp-sae";
  std::optional<std::string> wandb_entity, wandb_name;
  std::optional<std::vector<std::string>> wandb_tags;

  // Checks every field and the cross-field rules; throws mlxterp::Error with the first problem.
  void validate() const;
  // Rules that need the activation width: k <= d_sae, k_aux <= d_sae.
  void validate_for(int64_t d_in) const;
  int64_t d_sae(int64_t d_in) const { return d_in * expansion_factor; }
  // Derived values used by the trainer.
  int64_t dead_window_tokens() const { return dead_tokens_window > 0 ? dead_tokens_window : dead_feature_window * batch_size; }
  int64_t k_aux_for(int64_t d_in) const;
  // `whole_epoch_tokens` > 0: the source refills cheaply (a memory-mapped cache) and an epoch has that many
  // tokens; auto then takes the whole epoch when it fits in the memory budget.
  int64_t shuffle_buffer_for(int64_t d_in, int64_t whole_epoch_tokens = 0) const;
  bool is_topk_family() const { return sae_type == "topk" || sae_type == "batchtopk"; }

  nlohmann::ordered_json to_json() const;
  // Sets the fields present in `j` (an object); unknown keys and wrong types throw, naming `where`.
  // Values are checked by validate(), which the caller runs once everything is applied.
  void apply_json(const nlohmann::json& j, const std::string& where);
  static SAEConfig from_json(const nlohmann::json& j, const std::string& where);
  // `--set key=value`: value is parsed as JSON when it is valid JSON, else taken as a string.
  void set(const std::string& key, const std::string& value);
  // "key=value" as on the command line.
  void set_assignment(const std::string& assignment);

  struct FieldDoc {
    std::string name, type, default_value, doc;
  };
  static const std::vector<FieldDoc>& fields();
};

}  // namespace mlxterp
