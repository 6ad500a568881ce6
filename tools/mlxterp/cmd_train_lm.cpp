// mlxterp train-lm --data F --tokenizer T --out DIR [sizes] [schedule] [--eval-data F] [--resume]
// Trains a small Llama-architecture model from scratch (see include/mlxterp/train_lm.hpp).
#include <iostream>

#include "cli.hpp"
#include "mlxterp/train_lm.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string data, data_ids, eval_data, eval_data_ids, tokenizer, split = "lines", save_dtype = "bf16";
  int64_t vocab_size = 0;
  bool no_eos = false;
  lm::TrainLmOptions t;
};

lm::TokenStream load_stream(const std::string& text, const std::string& ids, const Opts& o,
                            const std::shared_ptr<Tokenizer>& tok, int64_t d_vocab, bool progress) {
  if (!ids.empty()) return lm::read_id_file(ids, d_vocab);
  MLXTERP_CHECK(tok, "--tokenizer: needed to tokenize ", text, " (or give pre-tokenized --data-ids with --vocab-size)");
  return lm::tokenize_documents(*tok, lm::read_documents(text, lm::parse_doc_split(o.split)), !o.no_eos, progress);
}

int run(Opts& o, const Globals& g) {
  if (o.data.empty() == o.data_ids.empty()) throw UsageError("train-lm: give exactly one of --data and --data-ids");
  if (!o.eval_data.empty() && !o.eval_data_ids.empty())
    throw UsageError("train-lm: give at most one of --eval-data and --eval-data-ids");
  lm::TrainLmOptions& t = o.t;
  t.device = g.torch_device();
  t.quiet = g.quiet;
  t.save_dtype = parse_dtype(o.save_dtype);
  std::shared_ptr<Tokenizer> tok;
  if (!o.tokenizer.empty()) {
    tok = load_tokenizer(o.tokenizer);
    t.tokenizer = tok;
    t.tokenizer_path = o.tokenizer;
  }
  int64_t d_vocab = o.vocab_size;
  if (tok) {
    MLXTERP_CHECK(d_vocab == 0 || d_vocab >= tok->vocab_size(), "--vocab-size: ", d_vocab,
                  " is smaller than the tokenizer's vocabulary (", tok->vocab_size(), ")");
    if (d_vocab == 0) d_vocab = tok->vocab_size();
  }
  MLXTERP_CHECK(d_vocab > 0, "--vocab-size: needed with --data-ids when no --tokenizer is given");
  t.size.d_vocab = d_vocab;
  lm::TokenStream train = load_stream(o.data, o.data_ids, o, tok, d_vocab, !g.quiet);
  std::optional<lm::TokenStream> eval;
  if (!o.eval_data.empty() || !o.eval_data_ids.empty())
    eval = load_stream(o.eval_data, o.eval_data_ids, o, tok, d_vocab, false);
  lm::TrainLmResult r = lm::train_lm(t, train, eval ? &*eval : nullptr);
  // The result on stdout (messages and the progress bar went to stderr).
  std::cout << "model: " << t.out_dir << (r.finished ? "" : " (stopped early: --resume to continue)") << "\n";
  std::cout << "parameters: " << r.n_params << "\n";
  if (!r.log.empty()) std::cout << "final train loss: " << r.log.back().train_loss << "\n";
  if (eval && r.finished) {
    std::cout << "held-out loss: " << r.final_eval.loss << " (perplexity " << r.final_eval.perplexity() << ", "
              << r.final_eval.tokens << " tokens)\n";
    std::cout << "unigram baseline: " << r.unigram.loss << " (perplexity " << r.unigram.perplexity() << ")\n";
  }
  std::cout << "seconds: " << r.seconds << "\n";
  return 0;
}

const bool registered = register_command(
    "train-lm", "Train a small Llama-architecture language model from scratch (AdamW, cosine schedule)",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      lm::TrainLmOptions& t = o->t;
      app.add_option("--data", o->data, "Training text (UTF-8); documents per --split");
      app.add_option("--data-ids", o->data_ids, "Pre-tokenized training data: ids separated by spaces, one document a line");
      app.add_option("--eval-data", o->eval_data, "Held-out text for periodic evaluation and the final perplexity");
      app.add_option("--eval-data-ids", o->eval_data_ids, "Held-out data, pre-tokenized");
      app.add_option("--tokenizer", o->tokenizer, "tokenizer.model / tokenizer.json (copied into --out)");
      app.add_option("--vocab-size", o->vocab_size, "Vocabulary size (default: the tokenizer's)");
      app.add_option("--bos-id", t.bos_id, "bos_token_id for config.json (default: the tokenizer's)");
      app.add_option("--eos-id", t.eos_id, "eos_token_id for config.json (default: the tokenizer's)");
      app.add_option("--split", o->split, "Documents: lines | paragraphs | whole")->capture_default_str();
      app.add_flag("--no-eos", o->no_eos, "Do not append EOS after each document");
      app.add_option("--out", t.out_dir, "Output model directory (HF layout)")->required();
      app.add_option("--d-model", t.size.d_model, "Residual width")->capture_default_str();
      app.add_option("--n-layers", t.size.n_layers, "Blocks")->capture_default_str();
      app.add_option("--n-heads", t.size.n_heads, "Attention heads")->capture_default_str();
      app.add_option("--n-kv-heads", t.size.n_kv_heads, "Key/value heads (0 = n_heads)")->capture_default_str();
      app.add_option("--d-mlp", t.size.d_mlp, "MLP width (0 = 8/3 d_model rounded up to 64)")->capture_default_str();
      app.add_option("--context", t.size.n_ctx, "Training context = max_position_embeddings")->capture_default_str();
      app.add_option("--rope-theta", t.size.rope_theta, "RoPE base")->capture_default_str();
      app.add_flag("!--no-tie", t.size.tie_embeddings, "Separate lm_head (default: tied to the embedding)");
      app.add_option("--steps", t.steps, "Optimizer steps")->capture_default_str();
      app.add_option("--batch", t.batch_size, "Sequences per micro-batch")->capture_default_str();
      app.add_option("--grad-accum", t.grad_accum, "Micro-batches per step")->capture_default_str();
      app.add_option("--lr", t.lr, "Peak learning rate")->capture_default_str();
      app.add_option("--min-lr", t.min_lr, "Final learning rate of the cosine decay")->capture_default_str();
      app.add_option("--warmup", t.warmup_steps, "Linear warm-up steps")->capture_default_str();
      app.add_option("--weight-decay", t.adamw.weight_decay, "AdamW decoupled weight decay (matrices only)")
          ->capture_default_str();
      app.add_option("--beta1", t.adamw.beta1, "AdamW beta1")->capture_default_str();
      app.add_option("--beta2", t.adamw.beta2, "AdamW beta2")->capture_default_str();
      app.add_option("--grad-clip", t.grad_clip, "Max global gradient norm (0 = off)")->capture_default_str();
      app.add_option("--init-std", t.init_std, "Std of the initial weights")->capture_default_str();
      app.add_option("--seed", t.seed, "Seed for the init and the batches")->capture_default_str();
      app.add_option("--log-every", t.log_every, "Steps per training_log.csv row")->capture_default_str();
      app.add_option("--eval-every", t.eval_every, "Steps between held-out evaluations (0 = only at the end)")
          ->capture_default_str();
      app.add_option("--eval-tokens", t.eval_tokens, "Held-out tokens per periodic evaluation (0 = all)")
          ->capture_default_str();
      app.add_option("--checkpoint-every", t.checkpoint_every, "Steps between atomic checkpoints (0 = none)")
          ->capture_default_str();
      app.add_option("--checkpoint", t.checkpoint_path, "Checkpoint file (default OUT/checkpoint.safetensors)");
      app.add_flag("--keep-checkpoint", t.keep_checkpoint, "Keep the checkpoint (with the final state) after the run");
      app.add_flag("--resume", t.resume, "Continue from the checkpoint (same options and data)");
      app.add_option("--stop-at-step", t.stop_at_step, "Stop with a checkpoint once this many steps are done (train in slices)");
      app.add_option("--save-dtype", o->save_dtype, "dtype of model.safetensors: bf16 | f16 | f32")->capture_default_str();
      app.add_option("--sample-prompt", t.sample_prompt, "Show a greedy continuation of this prompt at every evaluation");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
