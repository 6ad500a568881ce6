// mlxterp/train_lm.hpp — train a small Llama-architecture language model from scratch on the CPU or GPU,
// with our own model code (models/llama.cpp), libtorch autograd, a hand-written AdamW and a cosine schedule.
// Used to make the embedded demo model (models/kjv-llama) and by anyone who studies toy models.
//
//   auto tok = mlxterp::load_tokenizer("tokenizer.model");
//   mlxterp::lm::TokenStream train = mlxterp::lm::tokenize_documents(
//       *tok, mlxterp::lm::read_documents("train.txt", mlxterp::lm::DocSplit::Lines), /*add_eos=*/true);
//   mlxterp::lm::TrainLmOptions o;
//   o.size = {.d_model = 256, .n_layers = 4, .n_heads = 8, .n_kv_heads = 4, .d_mlp = 640, .n_ctx = 128};
//   o.size.d_vocab = tok->vocab_size();
//   o.steps = 1000;  o.batch_size = 8;  o.lr = 3e-3;  o.out_dir = "models/my-lm";
//   o.tokenizer_path = "tokenizer.model";             // copied into out_dir
//   mlxterp::lm::TrainLmResult r = mlxterp::lm::train_lm(o, train, &heldout);
//   // out_dir now holds config.json + model.safetensors + tokenizer.model (loadable by `mlxterp --model`),
//   // training_log.csv (the loss curve) and training_summary.json.
//
// Determinism: the batch of step s is drawn from an RNG seeded with (seed, s) alone, and the checkpoint
// holds the float32 weights and both AdamW moments, so an interrupted run resumed from its checkpoint
// ends with the same weights as an uninterrupted one (same device and thread count).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mlxterp/config.hpp"
#include "mlxterp/io.hpp"
#include "mlxterp/model.hpp"
#include "mlxterp/tokenizer.hpp"

namespace mlxterp::lm {

// ---- model shape and initialisation ------------------------------------------------------------

struct LlamaSize {
  int64_t d_model = 256, n_layers = 4, n_heads = 8;
  int64_t n_kv_heads = 0;  // 0 = n_heads (no grouped-query attention)
  int64_t d_mlp = 0;       // 0 = 8/3 * d_model rounded up to a multiple of 64 (Llama's rule)
  int64_t n_ctx = 128;     // training context and max_position_embeddings
  int64_t d_vocab = 0;     // from the tokenizer
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = true;  // lm_head shares model.embed_tokens.weight
};

// A validated Llama ModelConfig (model_type "llama", silu, no biases). Throws mlxterp::Error naming the
// bad field ("--n-heads: d_model (250) must be a multiple of n_heads (8)").
ModelConfig make_llama_config(const LlamaSize& size, int32_t bos_id = -1, int32_t eos_id = -1);

// Fresh float32 CPU weights, HF names: normal(0, init_std) for embeddings and projections, with the
// residual-stream writers (o_proj, down_proj) scaled by 1/sqrt(2 n_layers) (GPT-2); norms = 1.
TensorMap init_llama_weights(const ModelConfig& config, uint64_t seed, double init_std = 0.02);

// Parameter count a config implies (tied embeddings counted once).
int64_t count_parameters(const ModelConfig& config);

// ---- data ----------------------------------------------------------------------------------------

enum class DocSplit {
  Lines,       // every non-empty line is a document
  Paragraphs,  // blank-line-separated paragraphs (lines joined with "\n")
  Whole,       // the whole file is one document
};
// Reads a UTF-8 text file into documents. Throws if the file is missing or has no text.
std::vector<std::string> read_documents(const std::string& path, DocSplit split);
DocSplit parse_doc_split(const std::string& s);  // "lines" | "paragraphs" | "whole"

// All documents concatenated into one token stream: each document as tok.encode() gives it (BOS when
// the tokenizer adds one), followed by EOS when add_eos and the tokenizer has one.
struct TokenStream {
  std::vector<int32_t> ids;
  int64_t n_docs = 0;
  size_t size() const { return ids.size(); }
  uint64_t fingerprint() const;  // FNV-1a of the ids, to refuse resuming on other data
};
TokenStream tokenize_documents(const Tokenizer& tok, const std::vector<std::string>& docs, bool add_eos,
                               bool show_progress = false);
// Pre-tokenized data: one document per line, ids separated by spaces (what `mlxterp tokenize` prints),
// used verbatim. Every id must be in [0, d_vocab).
TokenStream read_id_file(const std::string& path, int64_t d_vocab);

// The training batch of one step: `batch` windows of n_ctx + 1 tokens at offsets drawn uniformly from
// an RNG seeded by (seed, step). Returns [batch, n_ctx + 1] int64 (inputs = [:, :-1], targets = [:, 1:]).
at::Tensor sample_batch(const TokenStream& data, int64_t batch, int64_t n_ctx, uint64_t seed, int64_t step);

// Evaluation windows: the stream cut into consecutive, non-overlapping windows of n_ctx + 1 tokens that
// share their boundary token (window k covers [k n_ctx, (k+1) n_ctx]), so every token after the first is
// predicted exactly once. A last partial window is kept. max_tokens > 0 stops after that many targets.
std::vector<at::Tensor> eval_windows(const TokenStream& data, int64_t n_ctx, int64_t max_tokens = 0);

struct EvalResult {
  double loss = 0;     // mean negative log-likelihood per predicted token (nats)
  int64_t tokens = 0;  // predicted tokens
  double perplexity() const;
};

// Mean next-token cross-entropy of `model` over eval_windows(data, n_ctx, max_tokens), without grad.
EvalResult evaluate(Model& model, const TokenStream& data, int64_t n_ctx, int64_t max_tokens = 0,
                    int64_t batch = 16);

// Unigram baseline: token frequencies of `train` with add-one smoothing over d_vocab, scored on the
// same targets evaluate() predicts on `eval`. The per-token loss of a model that ignores all context.
EvalResult unigram_baseline(const TokenStream& train, const TokenStream& eval, int64_t d_vocab, int64_t n_ctx,
                            int64_t max_tokens = 0);

// ---- optimisation --------------------------------------------------------------------------------

// Linear warm-up from 0 to max_lr over `warmup` steps, then cosine decay to min_lr at step `total`.
// step counts from 0 (the first update uses lr(0) = max_lr / warmup when warmup > 0).
double cosine_lr(int64_t step, int64_t total, int64_t warmup, double max_lr, double min_lr);

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// AdamW (Loshchilov & Hutter; PyTorch's torch.optim.AdamW update) on named float32 tensors that have
// requires_grad. Weight decay applies to matrices (dim >= 2) only, not to norm weights.
//   p <- p - lr * wd * p                        (decoupled decay, before the Adam step)
//   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
//   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options);
  // One update with the gradients currently in .grad() (a parameter without a gradient is skipped).
  void step(double lr);
  void zero_grad();
  int64_t steps_taken() const { return t_; }
  // Moments as "m.<name>" / "v.<name>" for checkpoints, and back.
  TensorMap state() const;
  void load_state(const TensorMap& state, int64_t steps_taken);
  const std::vector<std::pair<std::string, at::Tensor>>& params() const { return params_; }

 private:
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<at::Tensor> m_, v_;
  AdamWOptions o_;
  int64_t t_ = 0;
};

// Scales all gradients so that their joint L2 norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(const std::vector<std::pair<std::string, at::Tensor>>& params, double max_norm);

// ---- the training run ----------------------------------------------------------------------------

struct TrainLmOptions {
  LlamaSize size;
  int64_t steps = 1000;
  int64_t batch_size = 8;       // sequences per step (each n_ctx tokens)
  int64_t grad_accum = 1;       // micro-batches per step (effective batch = batch_size * grad_accum)
  double lr = 3e-3, min_lr = 3e-4;
  int64_t warmup_steps = 50;
  AdamWOptions adamw;
  double grad_clip = 1.0;       // <= 0: off
  double init_std = 0.02;
  uint64_t seed = 1234;
  int64_t log_every = 10;       // a row of training_log.csv (mean train loss since the last row)
  int64_t eval_every = 100;     // held-out loss every N steps (and at the end); 0 = only at the end
  int64_t eval_tokens = 0;      // cap on held-out targets for periodic evals (0 = all)
  int64_t checkpoint_every = 100;  // atomic checkpoint every N steps (0 = never)
  std::string out_dir;          // the HF model directory written at the end
  std::string checkpoint_path;  // "" = <out_dir>/checkpoint.safetensors
  bool keep_checkpoint = false; // keep the checkpoint after a successful run
  bool resume = false;          // continue from checkpoint_path (must exist; options and data must match)
  // Stop once this many steps are done (0 = run to `steps`), leaving a checkpoint to --resume from: for
  // training in time slices. The result then has no final evaluation and out_dir holds the model so far.
  int64_t stop_at_step = 0;
  std::string tokenizer_path;   // copied into out_dir (as tokenizer.model / tokenizer.json); "" = none
  at::ScalarType save_dtype = at::kBFloat16;  // dtype of model.safetensors
  at::Device device = at::kCPU;
  bool quiet = false;           // no progress bar / messages
  // Optional: a prompt to sample greedily at every eval (shown in the log), and the tokenizer to use.
  std::string sample_prompt;
  std::shared_ptr<Tokenizer> tokenizer;
  // bos_token_id / eos_token_id written to config.json: -1 = the tokenizer's (none without a tokenizer).
  int32_t bos_id = -1, eos_id = -1;
};

struct LogRow {
  int64_t step = 0;        // optimizer steps done
  double lr = 0;
  double train_loss = NAN; // mean over the steps since the previous row
  double eval_loss = NAN;  // when evaluated at this step
  double grad_norm = NAN;
  int64_t tokens = 0;      // training tokens seen
  double seconds = 0;      // wall time since the start (including earlier runs when resumed)
};

struct TrainLmResult {
  bool finished = false;  // false when stopped early by stop_at_step
  ModelConfig config;
  TensorMap weights;  // float32, final
  std::vector<LogRow> log;
  EvalResult final_eval, unigram;  // on the eval stream (loss NAN / tokens 0 without one)
  double seconds = 0;
  int64_t n_params = 0;
};

// Trains and writes out_dir (see the top of this file). eval may be null (no held-out numbers).
// Throws mlxterp::Error for bad options ("--steps must be > 0, got 0"), too little data for one window,
// a mismatched checkpoint on resume; out_dir is only ever replaced file by file, atomically.
TrainLmResult train_lm(const TrainLmOptions& options, const TokenStream& train, const TokenStream* eval);

// Writes an HF-layout directory: config.json (transformers format, architectures LlamaForCausalLM),
// model.safetensors in `dtype`, generation_config.json, and the tokenizer file (plus tokenizer_config.json
// for a SentencePiece .model). Every file atomically.
void save_hf_model(const std::string& dir, const ModelConfig& config, const TensorMap& weights, at::ScalarType dtype,
                   const std::string& tokenizer_path);

}  // namespace mlxterp::lm
