// mlxterp/sae.hpp — a trained sparse autoencoder: parameters, inference, files (native, SAELens, sparsify).
//
//   mlxterp::SAE sae = mlxterp::SAE::load("runs/l2_resid");        // native dir, SAELens dir or sparsify dir
//   at::Tensor x = trace.get("model.layers.2");                     // [batch, seq, d_in] raw activations
//   at::Tensor z = sae.encode(x);                                    // [batch, seq, d_sae] latents
//   at::Tensor x_hat = sae.decode(z);                                // [batch, seq, d_in] reconstruction
//   mlxterp::export_sae(sae, "saelens", "runs/l2_resid_saelens");    // cfg.json + sae_weights.safetensors
//
// Parameters are plain float32 at::Tensors with one row per latent (like nn.Linear / sparsify's encoder):
//   W_enc [d_sae, d_in]   b_enc [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]   threshold [d_sae]
// and the forward pass is (x in raw activation space; μ, σ the optional input standardisation):
//   x_n  = (x - μ) / σ                                   (identity when normalize_input is off)
//   pre  = (x_n - b_dec) @ W_encᵀ + b_enc                 [.., d_sae]
//   z    = topk:      ReLU(top-k of pre per token)
//          batchtopk: training: ReLU(top-(k·N) over the whole batch); inference: pre·[pre > θ] with the
//                     calibrated threshold θ, so one token's latents never depend on the rest of its batch
//          jumprelu:  ReLU(pre)·[pre > θ_i]
//          relu:      ReLU(pre)
//   x̂    = (z @ W_dec + b_dec) · σ + μ
// SAELens stores W_enc transposed ([d_in, d_sae]); export/import transposes and folds μ, σ into the
// weights (W_enc·diag(1/σ), W_dec·diag(σ), b_dec·σ + μ), so exported files need no normalisation step.
#pragma once

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <string>

#include "mlxterp/io.hpp"

namespace mlxterp {

enum class SaeArch { TopK, BatchTopK, JumpReLU, ReLU };
// "topk", "batchtopk", "jumprelu", "relu" (also "standard"); throws mlxterp::Error otherwise.
SaeArch parse_sae_arch(const std::string& name);
const char* sae_arch_name(SaeArch a);

// The trainable tensors. W_dec is the same tensor as W_enc when the SAE has tied weights.
struct SaeParams {
  at::Tensor W_enc;      // [d_sae, d_in]
  at::Tensor b_enc;      // [d_sae]
  at::Tensor W_dec;      // [d_sae, d_in]
  at::Tensor b_dec;      // [d_in]
  at::Tensor threshold;  // [d_sae]: jumprelu (trained), batchtopk (calibrated); undefined for topk/relu

  // Name -> tensor for the defined ones ("W_enc", "b_enc", "W_dec", "b_dec", "threshold").
  TensorMap named() const;
  SaeParams clone() const;
  SaeParams to(at::Device device) const;
};

class SAE {
 public:
  SaeArch arch = SaeArch::TopK;
  int64_t d_in = 0, d_sae = 0;
  int64_t k = 0;          // topk / batchtopk
  bool tied = false;      // W_dec is W_enc
  SaeParams params;       // float32
  at::Tensor input_mean;  // [d_in] μ (undefined: no standardisation)
  at::Tensor input_std;   // [d_in] σ
  // What the SAE was trained on and how: {"model", "site", "layer", "component", "config", "tokens_seen",
  // "steps", "final_metrics", ...}; written to config.json as is.
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();

  bool normalizes() const { return input_mean.defined(); }
  at::Device device() const { return params.W_enc.device(); }
  SAE to(at::Device device) const;

  // ---- inference (no autograd; any leading shape) ----
  at::Tensor normalize(const at::Tensor& x) const;       // raw -> standardised
  at::Tensor denormalize(const at::Tensor& x_n) const;   // standardised -> raw
  at::Tensor pre_activations(const at::Tensor& x) const;  // [.., d_sae]
  // Latents: a pure per-token function for every architecture (batchtopk uses its threshold; an SAE
  // without one is an error naming the fix).
  at::Tensor encode(const at::Tensor& x) const;           // [.., d_sae]
  at::Tensor decode(const at::Tensor& z) const;           // [.., d_in] raw space
  at::Tensor reconstruct(const at::Tensor& x) const { return decode(encode(x)); }

  // The same function with μ, σ folded into the weights (normalizes() == false afterwards).
  SAE folded() const;
  // "TopKSAE(d_in=64, d_sae=1024, k=32)"
  std::string describe() const;

  // ---- files ----
  // Native directory: weights.safetensors (W_enc, b_enc, W_dec, b_dec[, threshold][, input_mean,
  // input_std]) + config.json ({"format": "mlxterp-sae", "version": 1, "architecture", "d_in", "d_sae",
  // "k", "tied_weights", "normalize_input", ...metadata}). Each file is written atomically.
  void save(const std::string& dir) const;
  // A native, SAELens or sparsify directory (detected from the files present), or a sparsify run directory
  // holding exactly one hookpoint. Every tensor's name, dtype and shape is checked against the config.
  static SAE load(const std::string& path);
};

// Writes `sae` in `format`: "native" (save), "saelens" (cfg.json + sae_weights.safetensors; batchtopk as
// jumprelu with its threshold, relu as standard) or "sparsify" (<out>/<hookpoint>/cfg.json + sae.safetensors;
// topk only). Input normalisation is folded in for the foreign formats.
void export_sae(const SAE& sae, const std::string& format, const std::string& out_dir);
// Reads a directory in `format` ("auto", "native", "saelens", "sparsify").
SAE import_sae(const std::string& path, const std::string& format = "auto");

// TransformerLens hook name for a block component ("blocks.2.hook_resid_post" for layer 2, component ""),
// or "" when there is none. Used for SAELens' hook_name.
std::string transformer_lens_hook_name(int layer, const std::string& component);

}  // namespace mlxterp
