// mlxterp/sae_eval.hpp — how good is an SAE? Reconstruction, sparsity and downstream-loss metrics on held-out text.
//
//   auto model = mlxterp::InterpretableModel::load("stories260K.gguf");
//   mlxterp::SAE sae = mlxterp::SAE::load("runs/l2");                 // native, SAELens or sparsify directory
//   auto corpus = mlxterp::TextCorpus::open("tinystories.txt");
//   mlxterp::SaeEvalOptions o;
//   o.data.holdout = 0.1;                     // the last 10% of the documents (what validation_split = 0.1 held out)
//   nlohmann::ordered_json r = mlxterp::evaluate_sae_on_corpus(model, sae, corpus, o);
//   double recovered = r["downstream"]["ce_loss_score"];             // CE-loss recovered
//   double fvu = r["reconstruction"]["fvu"];
//   double score = r["original_report"]["quality_score"];             // the original's 0-5 score
//
// What is measured (every definition, with its source, in docs/sae-evaluation.md). Notation: x the site's
// activation at one evaluated token, x̂ = decode(encode(x)), z = encode(x) [d_sae], N evaluated tokens, x̄ the
// per-dimension mean of x over the N tokens.
//   reconstruction: mse = mean_t Σ_d (x - x̂)² (SAELens / dictionary_learning), mse_per_element (the original's
//     mean over all elements), fvu = Σ_t ‖x - x̂‖² / Σ_t ‖x - x̄‖² (per-dimension centring, sparsify), explained_variance
//     = 1 - fvu, fvu_by_dimension[d], frac_variance_explained_centered (dictionary_learning),
//     explained_variance_global (the original's: variance over all elements), nmse_openai, cosine.
//   shrinkage: l2_norm_in, l2_norm_out, l2_ratio, relative_reconstruction_bias.
//   sparsity: l0 (mean, std, min, max, quantiles, histogram), l1, per-latent firing counts -> dead (never fired on
//     the evaluated tokens), practically dead (fired on fewer than max(10, 1% of N) tokens: the original's rare
//     threshold), dense (fired on more than 10% of tokens), log10-density histogram.
//   downstream (the SAE's reconstruction spliced into the model at its site, on evaluated positions; BOS/EOS/PAD
//     positions keep their own activation as in SAELens): ce_loss_without_sae / with_sae / with_ablation (site
//     zeroed), ce_loss_score (= CE-loss recovered), delta_lm_loss, kl_div_with_sae / with_ablation, kl_div_score.
//   original_report: the original's evaluate_sae.py JSON fields and its 0-5 quality score with verdict.
//
// The evaluation streams: memory is one batch of forwards plus per-latent counters, whatever the corpus size.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "mlxterp/sae.hpp"
#include "mlxterp/sae_data.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp {

// The site an SAE reads: `override_site` when given, else (in order) the SAE's metadata "site" (native files),
// "hook_name" (SAELens; TransformerLens names such as "blocks.2.hook_resid_post" resolve through the model's alias
// table), "hookpoint" (sparsify: "layers.2", "layers.2.mlp"), or "layer" + "component". Throws mlxterp::Error when
// none resolves (naming what was tried and the fix: --site) or when the site's width is not the SAE's d_in.
int resolve_sae_site(const SAE& sae, const InterpretableModel& model, const std::string& override_site = "");

// Which tokens are evaluated and how they are batched (shared by evaluation and feature analysis).
struct SaeDataOptions {
  std::string site;            // "" = the SAE's own site (resolve_sae_site)
  int64_t context_size = 0;    // tokens per sequence; 0 = the SAE's training context_size (else 256), <= n_ctx
  int64_t batch_sequences = 0; // sequences per forward; 0 = automatic (bounded logits memory)
  // Fraction of the documents used, counted from the END of the corpus (0.1 = the last 10%, exactly the documents
  // `sae train --set validation_split=0.1` held out). 1 = every document.
  double holdout = 1.0;
  int64_t max_tokens = 0;      // stop after the sequence that reaches this many evaluated tokens (0 = all)
  bool exclude_special = true; // BOS/EOS/PAD positions are not evaluated (as in training)
  bool progress = false;       // progress bar on stderr
  std::string progress_label = "Evaluating SAE";
};

struct SaeEvalOptions {
  SaeDataOptions data;
  bool downstream = true;       // CE / KL with the SAE spliced in (three forward passes per batch)
  double rare_fraction = 0.01;  // practically dead: fired on fewer than max(rare_min, rare_fraction * N) tokens
  int64_t rare_min = 10;
  double dense_density = 0.1;   // dense: fired on more than this fraction of tokens
  int64_t n_examples_features = 10;  // the original's interpretability check: this many most frequent latents...
  int64_t n_examples = 5;            // ... with their top rows' documents (first 200 characters)
  std::string save_tokens;      // write the evaluated sequences as JSONL {"ids": [...], "keep": [...]} (reproducibility)
  std::string sae_path;         // for the report ("" = unknown)
  std::string model_path;
};

// Evaluates `sae` on `corpus` through `model`. Returns the JSON report (layout in docs/sae-evaluation.md):
// {format, version, sae, model, data, reconstruction, shrinkage, sparsity, downstream, original_report, timing}.
nlohmann::ordered_json evaluate_sae_on_corpus(const InterpretableModel& model, const SAE& sae, const TextCorpus& corpus,
                                              const SaeEvalOptions& options);

// The original's 0-5 score (mlxterp evaluate_sae.py): reconstruction 2 / 1.5 / 1 for cosine > 0.95 / 0.90 / 0.85;
// sparsity 2 / 1.5 / 1 for a practically-dead fraction < 0.30 / 0.50 / 0.70; interpretability 1 if >= 8 of the 10
// most frequent latents have example texts, 0.5 if >= 5. Verdict: >= 4.5 EXCELLENT, >= 3.5 GOOD, >= 2.5 FAIR, else POOR.
struct SaeQualityScore {
  double reconstruction = 0, sparsity = 0, interpretability = 0, total = 0;
  std::string verdict;
};
SaeQualityScore sae_quality_score(double cosine, double practical_dead_fraction, int64_t features_with_examples);

// The fraction of documents `sae train` held out for validation when `data_path` is the file the SAE was trained
// on (its metadata's data path and config.validation_split); -1 when the SAE was trained on other data or says
// nothing. `sae eval` uses it as the default --holdout so that it never silently evaluates on training text.
double sae_training_holdout(const SAE& sae, const std::string& data_path);

}  // namespace mlxterp
