// The train-lm loop: batches -> forward (our Llama) -> cross-entropy -> backward -> clip -> AdamW, with
// periodic held-out evaluation, atomic checkpoints, exact resume, and an HF-layout model at the end.
#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "mlxterp/error.hpp"
#include "mlxterp/progress.hpp"
#include "mlxterp/trace.hpp"
#include "mlxterp/train_lm.hpp"

namespace mlxterp::lm {

namespace {

using json = nlohmann::json;

// The options that define the run: a checkpoint resumes only under the same ones.
json run_identity(const TrainLmOptions& o, const ModelConfig& c, const TokenStream& train) {
  return json{{"config", c.to_hf_json()},
              {"steps", o.steps},
              {"batch_size", o.batch_size},
              {"grad_accum", o.grad_accum},
              {"lr", o.lr},
              {"min_lr", o.min_lr},
              {"warmup_steps", o.warmup_steps},
              {"beta1", o.adamw.beta1},
              {"beta2", o.adamw.beta2},
              {"eps", o.adamw.eps},
              {"weight_decay", o.adamw.weight_decay},
              {"grad_clip", o.grad_clip},
              {"init_std", o.init_std},
              {"seed", std::to_string(o.seed)},
              {"train_tokens", int64_t(train.size())},
              {"train_fingerprint", std::to_string(train.fingerprint())}};
}

json log_to_json(const std::vector<LogRow>& log) {
  json a = json::array();
  auto num = [](double x) { return std::isfinite(x) ? json(x) : json(nullptr); };
  for (const auto& r : log)
    a.push_back({{"step", r.step}, {"lr", r.lr}, {"train_loss", num(r.train_loss)}, {"eval_loss", num(r.eval_loss)},
                 {"grad_norm", num(r.grad_norm)}, {"tokens", r.tokens}, {"seconds", r.seconds}});
  return a;
}

std::vector<LogRow> log_from_json(const nlohmann::json& a) {
  std::vector<LogRow> out;
  auto num = [](const nlohmann::json& x) { return x.is_null() ? NAN : x.get<double>(); };
  for (const auto& r : a) {
    LogRow row;
    row.step = r.at("step").get<int64_t>();
    row.lr = r.at("lr").get<double>();
    row.train_loss = num(r.at("train_loss"));
    row.eval_loss = num(r.at("eval_loss"));
    row.grad_norm = num(r.at("grad_norm"));
    row.tokens = r.at("tokens").get<int64_t>();
    row.seconds = r.at("seconds").get<double>();
    out.push_back(row);
  }
  return out;
}

std::string log_to_csv(const std::vector<LogRow>& log) {
  std::string s = "step,lr,train_loss,eval_loss,grad_norm,tokens,seconds\n";
  auto f = [](double x) {
    if (!std::isfinite(x)) return std::string();
    char b[32];
    std::snprintf(b, sizeof b, "%.6g", x);
    return std::string(b);
  };
  for (const auto& r : log)
    s += cat(r.step, ",", f(r.lr), ",", f(r.train_loss), ",", f(r.eval_loss), ",", f(r.grad_norm), ",", r.tokens, ",",
             f(r.seconds), "\n");
  return s;
}

// Prints a message line without breaking a progress bar drawn on a terminal.
void say(bool quiet, const std::string& msg) {
  if (quiet) return;
  static const bool tty = isatty(fileno(stderr)) != 0;
  std::fprintf(stderr, "%s%s\n", tty ? "\r\033[K" : "", msg.c_str());
  std::fflush(stderr);
}

std::string fmt(double x, int prec = 4) {
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", prec, x);
  return b;
}

void check_options(const TrainLmOptions& o) {
  MLXTERP_CHECK(o.steps > 0, "--steps: must be > 0, got ", o.steps);
  MLXTERP_CHECK(o.batch_size > 0, "--batch: must be > 0, got ", o.batch_size);
  MLXTERP_CHECK(o.grad_accum > 0, "--grad-accum: must be > 0, got ", o.grad_accum);
  MLXTERP_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr: must be > 0, got ", o.lr);
  MLXTERP_CHECK(o.min_lr >= 0 && o.min_lr <= o.lr, "--min-lr: must be in [0, lr=", o.lr, "], got ", o.min_lr);
  MLXTERP_CHECK(o.warmup_steps >= 0 && o.warmup_steps <= o.steps, "--warmup: must be in [0, steps=", o.steps, "], got ",
                o.warmup_steps);
  MLXTERP_CHECK(o.log_every > 0, "--log-every: must be > 0, got ", o.log_every);
  MLXTERP_CHECK(o.eval_every >= 0, "--eval-every: must be >= 0, got ", o.eval_every);
  MLXTERP_CHECK(o.eval_tokens >= 0, "--eval-tokens: must be >= 0, got ", o.eval_tokens);
  MLXTERP_CHECK(o.checkpoint_every >= 0, "--checkpoint-every: must be >= 0, got ", o.checkpoint_every);
  MLXTERP_CHECK(!o.out_dir.empty(), "--out: an output directory is required");
  MLXTERP_CHECK(o.stop_at_step >= 0, "--stop-at-step: must be >= 0, got ", o.stop_at_step);
  MLXTERP_CHECK(o.save_dtype == at::kFloat || o.save_dtype == at::kBFloat16 || o.save_dtype == at::kHalf,
                "--save-dtype: expected f32, bf16 or f16, got ", dtype_str(o.save_dtype));
  if (!o.tokenizer_path.empty())
    MLXTERP_CHECK(file_exists(o.tokenizer_path), o.tokenizer_path, ": cannot open: no such file (--tokenizer)");
}

}  // namespace

void save_hf_model(const std::string& dir, const ModelConfig& config, const TensorMap& weights, at::ScalarType dtype,
                   const std::string& tokenizer_path) {
  make_dirs(dir);
  nlohmann::json cfg = config.to_hf_json();
  cfg["architectures"] = {"LlamaForCausalLM"};
  // transformers 4.x reads rope_theta, 5.x rope_parameters: write both (they agree).
  cfg["rope_theta"] = config.rope_for_layer(0).theta;
  cfg["torch_dtype"] = dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16" : "float32";
  TensorMap out;
  for (const auto& [name, t] : weights) out[name] = t.detach().to(at::kCPU, dtype).contiguous();
  save_safetensors(join_path(dir, "model.safetensors"), out, {{"format", "pt"}});
  nlohmann::json gen = nlohmann::json::object();
  if (config.bos_token_id >= 0) gen["bos_token_id"] = config.bos_token_id;
  if (config.eos_token_id >= 0) gen["eos_token_id"] = config.eos_token_id;
  write_file_atomic(join_path(dir, "generation_config.json"), gen.dump(2) + "\n");
  if (!tokenizer_path.empty()) {
    std::string src = tokenizer_path;
    if (is_directory(src)) {
      src = file_exists(join_path(src, "tokenizer.json")) ? join_path(src, "tokenizer.json")
                                                          : join_path(src, "tokenizer.model");
      MLXTERP_CHECK(file_exists(src), tokenizer_path, ": no tokenizer.json or tokenizer.model in this directory");
    }
    if (ends_with(src, ".json")) {
      write_file_atomic(join_path(dir, "tokenizer.json"), read_file(src));
    } else {
      write_file_atomic(join_path(dir, "tokenizer.model"), read_file(src));
      // What transformers' LlamaTokenizer needs to read the SentencePiece model as we trained with it.
      nlohmann::json tc = {{"tokenizer_class", "LlamaTokenizer"},
                           {"add_bos_token", true},
                           {"add_eos_token", false},
                           {"model_max_length", config.n_ctx}};
      write_file_atomic(join_path(dir, "tokenizer_config.json"), tc.dump(2) + "\n");
    }
  }
  // config.json last: a directory with a config is a complete model.
  write_file_atomic(join_path(dir, "config.json"), cfg.dump(2) + "\n");
}

TrainLmResult train_lm(const TrainLmOptions& o, const TokenStream& train, const TokenStream* eval) {
  check_options(o);
  const bool quiet = o.quiet;
  int32_t bos = o.bos_id, eos = o.eos_id;
  if (o.tokenizer) {
    if (bos < 0) bos = o.tokenizer->special().bos;
    if (eos < 0) eos = o.tokenizer->special().eos;
  }
  TrainLmResult res;
  res.config = make_llama_config(o.size, bos, eos);
  const ModelConfig& cfg = res.config;
  const int64_t n_ctx = cfg.n_ctx;
  MLXTERP_CHECK(int64_t(train.size()) > n_ctx, "training data: ", train.size(), " tokens is less than one window of ",
                n_ctx + 1, " (--context + 1); expected more text or a smaller --context");
  for (int32_t id : train.ids)
    MLXTERP_CHECK(id >= 0 && id < cfg.d_vocab, "training data: token id ", id, " is outside the vocabulary (0 .. ",
                  cfg.d_vocab - 1, ")");
  if (eval) MLXTERP_CHECK(eval->size() >= 2, "evaluation data: needs at least 2 tokens, got ", eval->size());
  const std::string ckpt = o.checkpoint_path.empty() ? join_path(o.out_dir, "checkpoint.safetensors") : o.checkpoint_path;
  const json identity = run_identity(o, cfg, train);
  make_dirs(o.out_dir);
  if (!dirname(ckpt).empty()) make_dirs(dirname(ckpt));

  // ---- weights: fresh, or from the checkpoint ----
  TensorMap weights = init_llama_weights(cfg, o.seed, o.init_std);
  int64_t start = 0;
  double prior_seconds = 0;
  TensorMap opt_state;
  if (o.resume) {
    MLXTERP_CHECK(file_exists(ckpt), ckpt, ": cannot resume: no checkpoint here (--checkpoint / --out)");
    SafeTensors st = SafeTensors::open(ckpt);
    auto meta = st.metadata();
    MLXTERP_CHECK(meta.count("mlxterp.train_lm"), ckpt, ": not a train-lm checkpoint (no 'mlxterp.train_lm' metadata)");
    nlohmann::json m = nlohmann::json::parse(meta.at("mlxterp.train_lm"));
    json saved_id = m.at("identity");
    for (auto it = identity.begin(); it != identity.end(); ++it) {
      const auto& key = it.key();
      MLXTERP_CHECK(saved_id.contains(key) && saved_id[key] == it.value(), ckpt, ": cannot resume: '", key,
                    "' differs; checkpoint has ", saved_id.contains(key) ? saved_id[key].dump() : "nothing", ", this run has ",
                    it.value().dump(), " (resume with the same options and data)");
    }
    start = m.at("step").get<int64_t>();
    prior_seconds = m.at("seconds").get<double>();
    res.log = log_from_json(m.at("log"));
    for (auto& [name, w] : weights) {
      MLXTERP_CHECK(st.contains("param." + name), ckpt, ": weight '", name, "' is missing");
      w = st.get("param." + name).to(at::kFloat).clone();
    }
    for (const auto& name : st.names())
      if (starts_with(name, "m.") || starts_with(name, "v.")) opt_state[name] = st.get(name);
  }
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (auto& [name, w] : weights) {
    w = w.to(o.device).set_requires_grad(true);
    params.emplace_back(name, w);
  }
  std::shared_ptr<Model> model = create_model(cfg, weights);  // shares the tensors with `params`
  res.n_params = count_parameters(cfg);
  AdamW opt(params, o.adamw);
  if (o.resume) opt.load_state(opt_state, start);

  const int64_t tokens_per_step = o.batch_size * o.grad_accum * n_ctx;
  std::optional<InterpretableModel> sampler;
  if (o.tokenizer && !o.sample_prompt.empty()) sampler.emplace(LoadedModel{model, o.tokenizer, "train-lm", "hf"});

  if (eval) res.unigram = unigram_baseline(train, *eval, cfg.d_vocab, n_ctx);
  say(quiet, cat("train-lm: ", res.n_params, " parameters (d_model ", cfg.d_model, ", ", cfg.n_layers, " layers, ",
                 cfg.n_heads, " heads, ", cfg.n_kv_heads, " kv heads, d_mlp ", cfg.d_mlp, ", d_vocab ", cfg.d_vocab,
                 ", context ", n_ctx, "); ", train.size(), " training tokens in ", train.n_docs, " documents",
                 eval ? cat("; ", eval->size(), " held-out tokens (unigram baseline: loss ", fmt(res.unigram.loss),
                            ", perplexity ", fmt(res.unigram.perplexity(), 1), ")")
                      : std::string()));
  say(quiet || start == 0, cat("train-lm: resuming at step ", start, " of ", o.steps, " from ", ckpt));

  // Mean training loss since the last log row (kept in the checkpoint so a resumed log is identical).
  double loss_sum = 0;
  int64_t loss_n = 0;
  if (o.resume) {
    nlohmann::json m = nlohmann::json::parse(SafeTensors::open(ckpt).metadata().at("mlxterp.train_lm"));
    loss_sum = m.value("loss_sum", 0.0);
    loss_n = m.value("loss_n", int64_t(0));
  }
  auto save_checkpoint = [&](int64_t step, double seconds) {
    TensorMap t;
    for (const auto& [name, p] : params) t["param." + name] = p.detach();
    for (auto& [k, v] : opt.state()) t[k] = v;
    json m = {{"identity", identity}, {"step", step},           {"seconds", seconds},
              {"log", log_to_json(res.log)}, {"loss_sum", loss_sum}, {"loss_n", loss_n}};
    save_safetensors(ckpt, t, {{"format", "pt"}, {"mlxterp.train_lm", m.dump()}});
  };
  auto run_eval = [&](int64_t step) -> double {
    if (!eval) return NAN;
    EvalResult e = evaluate(*model, *eval, n_ctx, step >= o.steps ? 0 : o.eval_tokens);
    std::string line = cat("step ", step, ": held-out loss ", fmt(e.loss), " (perplexity ", fmt(e.perplexity(), 2),
                           ", ", e.tokens, " tokens)");
    if (sampler) {
      GenerateOptions g;
      g.max_tokens = 24;
      g.temperature = 0;
      // Decode prompt and continuation together: SentencePiece drops the leading space of a decoded piece
      // sequence, so decoding the new tokens alone would glue them to the prompt ("saidunto").
      GenerateResult r = sampler->generate(o.sample_prompt, g);
      std::vector<int32_t> all = r.prompt_ids;
      all.insert(all.end(), r.new_ids.begin(), r.new_ids.end());
      line += cat("  | ", o.tokenizer->decode(all, /*skip_special=*/true));
    }
    say(quiet, line);
    return e.loss;
  };

  Timer timer;
  Progress bar("Training", o.steps - start, stderr, quiet);
  double last_loss = NAN, last_eval = res.log.empty() ? NAN : res.log.back().eval_loss;
  const int64_t end = o.stop_at_step > 0 ? std::min(o.steps, o.stop_at_step) : o.steps;
  for (int64_t step = start; step < end; ++step) {
    const double lr = cosine_lr(step, o.steps, o.warmup_steps, o.lr, o.min_lr);
    opt.zero_grad();
    double step_loss = 0;
    for (int64_t micro = 0; micro < o.grad_accum; ++micro) {
      at::Tensor b = sample_batch(train, o.batch_size, n_ctx, o.seed, step * o.grad_accum + micro).to(o.device);
      at::Tensor logits = model->forward(b.narrow(1, 0, n_ctx));  // [batch, n_ctx, d_vocab]
      at::Tensor logp = at::log_softmax(logits.to(at::kFloat).reshape({-1, cfg.d_vocab}), -1);
      at::Tensor loss = at::nll_loss(logp, b.narrow(1, 1, n_ctx).reshape({-1}));
      (loss / double(o.grad_accum)).backward();
      step_loss += loss.item<double>() / double(o.grad_accum);
    }
    MLXTERP_CHECK(std::isfinite(step_loss), "train-lm: the loss became ", step_loss, " at step ", step + 1,
                  "; expected a finite value (try a lower --lr or --grad-clip 1)");
    const double gn = clip_grad_norm(params, o.grad_clip);
    opt.step(lr);
    const int64_t done = step + 1;
    loss_sum += step_loss;
    ++loss_n;
    last_loss = step_loss;
    const bool at_end = done == o.steps;
    const bool do_eval = at_end || (o.eval_every > 0 && done % o.eval_every == 0);
    const bool do_log = at_end || done % o.log_every == 0 || do_eval;
    if (do_log) {
      LogRow row;
      row.step = done;
      row.lr = lr;
      row.train_loss = loss_sum / double(loss_n);
      row.grad_norm = gn;
      row.tokens = done * tokens_per_step;
      if (do_eval) row.eval_loss = last_eval = run_eval(done);
      row.seconds = prior_seconds + timer.seconds();
      res.log.push_back(row);
      loss_sum = 0;
      loss_n = 0;
    }
    std::vector<ProgressField> fields = {{"loss", last_loss, "", 3}, {"lr", lr}};
    if (std::isfinite(last_eval)) fields.push_back({"eval", last_eval, "", 3});
    fields.push_back({"tok/s", double((done - start) * tokens_per_step) / std::max(1e-9, timer.seconds()), "", 0});
    bar.update(1, fields);
    if (o.checkpoint_every > 0 && done % o.checkpoint_every == 0 && !at_end) {
      save_checkpoint(done, prior_seconds + timer.seconds());
      save_hf_model(o.out_dir, cfg, weights, o.save_dtype, o.tokenizer_path);
    }
  }
  bar.finish();
  res.seconds = prior_seconds + timer.seconds();
  for (const auto& [name, p] : params) res.weights[name] = p.detach().to(at::kCPU).clone();
  if (end < o.steps) {
    if (start < end) {
      save_checkpoint(end, res.seconds);
      save_hf_model(o.out_dir, cfg, weights, o.save_dtype, o.tokenizer_path);
    }
    say(quiet, cat("train-lm: stopped at step ", std::max(start, end), " of ", o.steps, "; continue with --resume (checkpoint ",
                   ckpt, ")"));
    return res;
  }
  res.finished = true;

  // ---- outputs ----
  save_hf_model(o.out_dir, cfg, res.weights, o.save_dtype, o.tokenizer_path);
  if (eval) {
    // The held-out numbers of the model as saved (bf16/f16 rounding included).
    ModelFiles files = read_hf_model(o.out_dir);
    std::unique_ptr<Model> saved = create_model(files.config, std::move(files.weights));
    saved->to(o.device, at::kFloat);
    res.final_eval = evaluate(*saved, *eval, n_ctx);
  }
  write_file_atomic(join_path(o.out_dir, "training_log.csv"), log_to_csv(res.log));
  nlohmann::ordered_json summary = {
      {"parameters", res.n_params},
      {"config", {{"d_model", cfg.d_model}, {"n_layers", cfg.n_layers}, {"n_heads", cfg.n_heads},
                  {"n_kv_heads", cfg.n_kv_heads}, {"d_mlp", cfg.d_mlp}, {"d_vocab", cfg.d_vocab}, {"n_ctx", n_ctx},
                  {"tie_embeddings", cfg.tie_word_embeddings}}},
      {"training", {{"steps", o.steps}, {"batch_size", o.batch_size}, {"grad_accum", o.grad_accum},
                    {"tokens_per_step", tokens_per_step}, {"tokens_seen", o.steps * tokens_per_step},
                    {"lr", o.lr}, {"min_lr", o.min_lr}, {"warmup_steps", o.warmup_steps},
                    {"weight_decay", o.adamw.weight_decay}, {"beta1", o.adamw.beta1}, {"beta2", o.adamw.beta2},
                    {"grad_clip", o.grad_clip}, {"init_std", o.init_std}, {"seed", o.seed},
                    {"save_dtype", dtype_str(o.save_dtype)}}},
      {"data", {{"train_tokens", int64_t(train.size())}, {"train_documents", train.n_docs},
                {"train_fingerprint", std::to_string(train.fingerprint())}}},
      {"seconds", res.seconds},
      {"final_train_loss", res.log.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(res.log.back().train_loss)},
  };
  if (eval) {
    summary["data"]["heldout_tokens"] = int64_t(eval->size());
    summary["data"]["heldout_documents"] = eval->n_docs;
    summary["heldout"] = {{"loss", res.final_eval.loss}, {"perplexity", res.final_eval.perplexity()},
                          {"tokens", res.final_eval.tokens}};
    summary["unigram_baseline"] = {{"loss", res.unigram.loss}, {"perplexity", res.unigram.perplexity()}};
    say(quiet, cat("train-lm: held-out perplexity ", fmt(res.final_eval.perplexity(), 2), " (model as saved, ",
                   dtype_str(o.save_dtype), ") vs unigram baseline ", fmt(res.unigram.perplexity(), 2)));
  }
  write_file_atomic(join_path(o.out_dir, "training_summary.json"), summary.dump(2) + "\n");
  if (o.keep_checkpoint)
    save_checkpoint(o.steps, res.seconds);  // the exact float32 end state
  else
    std::remove(ckpt.c_str());
  say(quiet, cat("train-lm: wrote ", o.out_dir, " (", format_duration(res.seconds), ")"));
  return res;
}

}  // namespace mlxterp::lm
