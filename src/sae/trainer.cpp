// The SAE training loop (see sae_train.hpp for what it prints, writes and guarantees).
#include <cmath>
#include <ctime>
#include <cstdio>
#include <fstream>

#include "mlxterp/error.hpp"
#include "mlxterp/progress.hpp"
#include "mlxterp/sae_step.hpp"
#include "mlxterp/sae_train.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

using ojson = nlohmann::ordered_json;

// CPU time of the whole process (all threads): robust to other processes competing for the cores.
double process_cpu_seconds() {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

std::string commas(int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v), o;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) o += ',';
    o += s[i];
  }
  return (v < 0 ? "-" : "") + o;
}

std::string fmt(double v, int prec = 4) {
  char b[48];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

// Config fields that may differ between a checkpoint and its --resume (they do not change the math, or, for
// optimizer_state_dtype, the moments are converted on loading).
bool resume_may_change(const std::string& key) {
  return key == "checkpoint_every" || key == "log_every" || key == "eval_every" || key == "use_wandb" ||
         starts_with(key, "wandb_") || key == "device" || key == "optimizer_state_dtype";
}

struct Logger {
  std::string dir, jsonl;
  std::unique_ptr<TensorBoardWriter> tb;
  std::vector<ojson> history;
  std::string title;

  void open(const std::string& d, int64_t resume_step, const std::string& t) {
    dir = d;
    title = t;
    if (dir.empty()) return;
    make_dirs(dir);
    jsonl = join_path(dir, "metrics.jsonl");
    // On resume keep the rows up to the checkpoint (a killed run may have logged past it).
    if (file_exists(jsonl)) {
      std::string kept;
      std::istringstream in(read_file(jsonl));
      for (std::string line; std::getline(in, line);) {
        ojson r = ojson::parse(line, nullptr, false);
        if (r.is_discarded() || !r.contains("step")) continue;
        if (resume_step < 0 || r["step"].get<int64_t>() > resume_step) continue;
        kept += line + "\n";
        history.push_back(r);
      }
      write_file_atomic(jsonl, kept);
    }
    tb = std::make_unique<TensorBoardWriter>(dir);
  }
  void log(const ojson& row, const std::string& prefix) {
    if (dir.empty()) return;
    history.push_back(row);
    if (history.size() > 20000) {  // keep the page light: drop every other old point
      std::vector<ojson> h;
      for (size_t i = 0; i < history.size(); ++i)
        if (i % 2 == 0 || i + 1000 > history.size()) h.push_back(history[i]);
      history.swap(h);
    }
    std::ofstream f(jsonl, std::ios::app);
    f << row.dump() << "\n";
    const int64_t step = row["step"].get<int64_t>();
    for (auto it = row.begin(); it != row.end(); ++it)
      if (it.value().is_number() && it.key() != "step") tb->scalar(prefix + it.key(), it.value().get<double>(), step);
    tb->flush();
  }
  void html() {
    if (!dir.empty()) write_training_curves_html(join_path(dir, "training_curves.html"), title, history);
  }
};

[[noreturn]] void gradient_failed(int64_t from, int64_t to, double last_loss, int64_t last_ckpt, const SAEConfig& c) {
  std::string clip = c.gradient_clip ? fmt(*c.gradient_clip, 3) : "off";
  MLXTERP_FAIL("Gradient computation failed: the loss or the gradients became NaN/inf between steps ", from + 1, " and ",
               to, " (last finite loss ", std::isfinite(last_loss) ? fmt(last_loss) : "none",
               "); those updates were skipped so the weights stay finite, and nothing was written after ",
               last_ckpt > 0 ? cat("the checkpoint at step ", last_ckpt) : std::string("the start"),
               ". This is usually numerical instability; try gradient_clip=0.5 (now ", clip, "), learning_rate=5e-5 (now ",
               c.learning_rate, "), normalize_input=false (now ", c.normalize_input ? "true" : "false",
               "), and check the data for corrupted values");
}

}  // namespace

SaeTrainResult train_sae(ActivationSource& src, const SAEConfig& user_cfg, const ojson& metadata_in,
                         const SaeTrainOptions& opt) {
  const ojson metadata = metadata_in.is_object() ? metadata_in : ojson::object();
  MLXTERP_CHECK(!opt.out_dir.empty(), "SAE training: an output directory is required (--out DIR)");
  const int64_t D = src.d_in();
  user_cfg.validate_for(D);
  SAEConfig cfg = user_cfg;
  FILE* out = stdout;
  auto say = [&](const std::string& s) {
    if (!opt.quiet) {
      std::fprintf(out, "%s\n", s.c_str());
      std::fflush(out);
    }
  };
  Timer wall;
  const int64_t tokens_per_epoch = src.tokens_per_epoch();
  const int64_t total_steps = tokens_per_epoch * cfg.num_epochs / cfg.batch_size;
  MLXTERP_CHECK(total_steps >= 1, "SAE training: ", commas(tokens_per_epoch * cfg.num_epochs),
                " training tokens make no full batch of batch_size = ", cfg.batch_size,
                "; expected more data or a smaller batch_size");
  ojson adjustments = ojson::object();
  if (cfg.warmup_steps >= total_steps && cfg.warmup_steps > 0) {
    int64_t w = std::max<int64_t>(1, total_steps / 10);
    say(cat("⚠ warmup_steps (", cfg.warmup_steps, ") >= total steps (", total_steps, "): warming up over ", w,
            " steps (10%) instead, so the learning rate reaches its peak; set warmup_steps below ", total_steps,
            " to choose"));
    adjustments["warmup_steps"] = w;
    cfg.warmup_steps = w;
    if (cfg.lr_decay_steps && *cfg.lr_decay_steps <= w) cfg.lr_decay_steps = std::nullopt;
  }
  const SaeArch arch = parse_sae_arch(cfg.sae_type);
  const int64_t calib_steps = arch != SaeArch::BatchTopK ? 0
                              : cfg.threshold_calibration_steps > 0 ? std::min(cfg.threshold_calibration_steps, total_steps)
                                                                    : std::clamp<int64_t>(total_steps / 10, 1, 1000);
  const int64_t buffer_rows = cfg.shuffle_buffer_for(D, src.cheap_refill() ? tokens_per_epoch : 0);
  const at::Device device = src.device();

  say(cat("✓ Activation dimension: ", D));
  BatchStream stream(src, cfg.batch_size, buffer_rows, uint64_t(cfg.seed));
  SaeTrainState st;
  int64_t step = 0, last_ckpt = 0;
  double prior_seconds = 0;
  const std::string ckpt_path = join_path(opt.out_dir, "checkpoint.safetensors");
  make_dirs(opt.out_dir);

  if (!opt.resume_dir.empty()) {
    const std::string path = join_path(opt.resume_dir, "checkpoint.safetensors");
    MLXTERP_CHECK(file_exists(path), "--resume ", opt.resume_dir, ": no checkpoint.safetensors there; expected the --out ",
                  "directory of an interrupted `sae train` run");
    SafeTensors ck = SafeTensors::open(path);
    MLXTERP_CHECK(ck.metadata().count("mlxterp_checkpoint"), path, ": not an mlxterp SAE checkpoint (no metadata)");
    ojson meta = ojson::parse(ck.metadata().at("mlxterp_checkpoint"));
    ojson saved = meta["config"], now = user_cfg.to_json();
    for (auto it = now.begin(); it != now.end(); ++it) {
      if (resume_may_change(it.key())) continue;
      MLXTERP_CHECK(saved.contains(it.key()) && saved[it.key()] == it.value(), "--resume: the checkpoint was trained with ",
                    it.key(), " = ", saved.contains(it.key()) ? saved[it.key()].dump() : "nothing", "; now ",
                    it.value().dump(), " (resuming needs the same config; only checkpoint_every, log_every, eval_every, ",
                    "device, optimizer_state_dtype and the wandb_* fields may change)");
    }
    ojson fp = src.fingerprint();
    for (auto it = fp.begin(); it != fp.end(); ++it)
      MLXTERP_CHECK(meta["fingerprint"].contains(it.key()) && meta["fingerprint"][it.key()] == it.value(),
                    "--resume: the data differs from the checkpoint's: ", it.key(), " = ",
                    meta["fingerprint"].value(it.key(), ojson()).dump(), " then, ", it.value().dump(), " now");
    st.arch = arch;
    st.d_in = D;
    st.d_sae = cfg.d_sae(D);
    st.tied = cfg.tied_weights;
    st.from_map(ck.all(), device);
    // Weight-matrix moments of another dtype than optimizer_state_dtype (a checkpoint from before the field has
    // float32 ones) are converted: to float32 exactly, to bfloat16 by rounding to nearest.
    const char* had = st.moment_dtype() == at::kBFloat16 ? "bfloat16" : "float32";
    if (st.set_moment_dtype(sae_moment_dtype(cfg)) && !opt.quiet)
      std::fprintf(stderr,
                   "note: %s: the Adam moments of W_enc, W_dec are %s; converted to %s (optimizer_state_dtype)\n",
                   path.c_str(), had, cfg.optimizer_state_dtype.c_str());
    step = meta["step"].get<int64_t>();
    last_ckpt = step;
    prior_seconds = meta.value("elapsed_s", 0.0);
    stream.restore({meta["epoch"].get<int64_t>(), meta["cursor"].get<int64_t>(), meta["offset"].get<int64_t>()});
  } else {
    st = sae_init_state(cfg, D, stream.current_buffer(), device);
  }
  SAE shape = sae_from_state(st, cfg.k);
  say("🏗️  Created " + shape.describe());
  say(cat("✓ Split: ", commas(src.train_documents()), " training documents, ", commas(src.validation_documents()),
          " validation documents"));
  say(cat("✓ ", commas(tokens_per_epoch), " training tokens per epoch (", src.mode(), ", shuffle buffer ",
          commas(buffer_rows), " tokens)"));
  say(cat("✓ ", commas(tokens_per_epoch / cfg.batch_size), " steps per epoch, ", commas(total_steps), " total steps",
          step > 0 ? cat(" (resuming at step ", commas(step), ")") : std::string()));

  std::string log_dir = opt.log_dir;
  if (log_dir.empty() && cfg.use_wandb) {
    log_dir = join_path(opt.out_dir, "logs");
    say(cat("✓ use_wandb: logging offline to ", log_dir, " (TensorBoard events + metrics.jsonl + training_curves.html; ",
            "project ", cfg.wandb_project, ")"));
  }
  Logger logger;
  logger.open(log_dir, opt.resume_dir.empty() ? -1 : step,
              cat(cfg.wandb_name.value_or("SAE training"), " — ", metadata.value("site", std::string("")), " (",
                  cfg.wandb_project, ")"));

  at::Tensor x_val = src.validation_rows(cfg.validation_max_tokens);

  auto save_checkpoint = [&](int64_t at_step) {
    StreamPosition p = stream.position();
    ojson meta = {{"version", 1},
                  {"step", at_step},
                  {"total_steps", total_steps},
                  {"epoch", p.epoch},
                  {"cursor", p.cursor},
                  {"offset", p.offset},
                  {"tokens_seen", at_step * cfg.batch_size},
                  {"elapsed_s", prior_seconds + wall.seconds()},
                  {"config", user_cfg.to_json()},
                  {"fingerprint", src.fingerprint()}};
    save_safetensors(ckpt_path, st.to_map(), {{"mlxterp_checkpoint", meta.dump()}});
    last_ckpt = at_step;
  };

  auto val_metrics = [&](double threshold) {
    SAE s = sae_from_state(st, cfg.k, threshold);
    if (arch == SaeArch::BatchTopK && !s.params.threshold.defined()) s.arch = SaeArch::TopK;  // no θ yet
    return evaluate_sae(s, x_val);
  };

  Progress bar("Training", total_steps, stderr, opt.quiet);
  if (opt.plain_progress) bar.set_plain(true, 2.0);
  if (step > 0) bar.update(step);
  std::vector<ProgressField> fields;
  double last_loss = NAN, step_seconds = 0, step_cpu_seconds = 0;
  const double cpu_start = process_cpu_seconds();
  int64_t last_sync = step, tokens_session = 0;
  Timer session;
  int epochs_reported = int(step * cfg.batch_size / tokens_per_epoch);
  SaeStepArgs args;

  while (step < total_steps) {
    at::Tensor x = stream.next();
    if (st.input_mean.defined()) x = (x - st.input_mean) / st.input_std;
    args = sae_step_args(cfg, D, step, total_steps);
    if (st.input_mean.defined()) {
      args.metric_scale = st.input_std;
      args.metric_mean = st.input_mean;
    }
    Timer ts;
    const double cpu0 = process_cpu_seconds();
    sae_train_step(st, x, args);
    step_seconds += ts.seconds();
    step_cpu_seconds += process_cpu_seconds() - cpu0;
    st.adam_step += 1;
    if (calib_steps > 0 && step >= total_steps - calib_steps) sae_threshold_histogram_update(st, x, args);
    if (cfg.resample_dead_every > 0 && (step + 1) % cfg.resample_dead_every == 0) {
      int64_t n = sae_resample_dead(st, x, args, mix_seed({uint64_t(cfg.seed), 0x5A3, uint64_t(step)}));
      if (n > 0 && !logger.dir.empty()) logger.log({{"step", step + 1}, {"split", "train"}, {"resampled", n}}, "train/");
    }
    ++step;
    tokens_session += cfg.batch_size;

    const bool end = step == total_steps;
    const bool ckpt_due = (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && !end) ||
                          step == opt.stop_after_steps;
    const int epoch_now = int(step * cfg.batch_size / tokens_per_epoch);
    const bool epoch_end = epoch_now > epochs_reported || end;
    const bool eval_due = (cfg.eval_every > 0 && step % cfg.eval_every == 0) || epoch_end;
    if (step % cfg.log_every == 0 || end || ckpt_due || eval_due) {
      std::map<std::string, double> m = sae_read_metrics(st, args);
      if (m["bad_steps"] > 0) gradient_failed(last_sync, step, last_loss, last_ckpt, cfg);
      last_sync = step;
      last_loss = m["loss"];
      const double el = session.seconds();
      ojson row = {{"step", step}, {"split", "train"}, {"epoch", double(step * cfg.batch_size) / double(tokens_per_epoch)},
                   {"tokens", step * cfg.batch_size}, {"lr", args.lr}, {"k", args.k}};
      for (const auto& [k, v] : m)
        if (k != "steps" && k != "tokens" && k != "bad_steps") row[k] = v;
      row["rss_mb"] = double(current_rss_bytes()) / 1048576.0;
      row["elapsed_s"] = prior_seconds + wall.seconds();
      row["tokens_per_s"] = el > 0 ? double(tokens_session) / el : 0.0;
      logger.log(row, "train/");
      fields = {{"loss", m["loss"], "", 4}, {"l0", m["l0"], "", 1}, {"dead", 100.0 * m["dead_frac"], "%", 2}};
      if (opt.on_sync) opt.on_sync(step, m);
    }
    bar.update(1, fields);
    if (step % cfg.feature_sampling_window == 0) {
      SaeDensity d = sae_take_density(st);
      logger.log({{"step", step}, {"split", "train"}, {"dense_frac", d.dense_frac}, {"never_fired_frac", d.never_frac}},
                 "train/");
    }
    if (eval_due && x_val.size(0) > 0) {
      auto vm = val_metrics(arch == SaeArch::BatchTopK ? st.threshold_ema.item<double>() : -1.0);
      ojson row = {{"step", step}, {"split", "val"}};
      for (const auto& [k, v] : vm) row[k] = v;
      logger.log(row, "val/");
      const int epoch_target = end ? int(cfg.num_epochs) : epoch_now;
      if (epoch_end && epoch_target > epochs_reported) {
        for (int e = epochs_reported + 1; e <= std::min<int>(epoch_target, int(cfg.num_epochs)); ++e)
          say(cat("\nEpoch ", e, "/", cfg.num_epochs, " - Val loss: ", fmt(vm["mse"]), " (fvu=", fmt(vm["fvu"]),
                  ", l0=", fmt(vm["l0"], 1), ", active=", fmt(100 * vm["frac_active"], 1), "%)"));
      }
    }
    if (epoch_now > epochs_reported || end) epochs_reported = end ? int(cfg.num_epochs) : epoch_now;
    if (ckpt_due) {
      save_checkpoint(step);
      say(cat("\n📸 Checkpoint at step ", step));
      say("   💾 Saved checkpoint to " + ckpt_path);
      logger.html();
    }
    if (step == opt.stop_after_steps && !end) {
      bar.finish();
      SaeTrainResult r;
      r.steps = step;
      r.total_steps = total_steps;
      r.tokens = step * cfg.batch_size;
      r.seconds = wall.seconds();
      r.step_seconds = step_seconds;
      r.sae = sae_from_state(st, cfg.k);
      return r;
    }
  }
  bar.finish();
  save_checkpoint(step);

  double theta = -1;
  if (arch == SaeArch::BatchTopK) {
    const int64_t calib_tokens = calib_steps * cfg.batch_size;
    theta = sae_threshold_from_histogram(st.calib_hist, cfg.k, calib_tokens);
    say(cat("✓ BatchTopK inference threshold: ", fmt(theta, 6), " (calibrated over the last ", commas(calib_tokens),
            " training tokens; running EMA ", fmt(st.threshold_ema.item<double>(), 6), ")"));
  }
  SaeTrainResult r;
  r.sae = sae_from_state(st, cfg.k, theta);
  std::map<std::string, double> fm;
  if (x_val.size(0) > 0) fm = evaluate_sae(r.sae, x_val);
  fm["dead_frac"] = (st.tokens_since_fired >= cfg.dead_window_tokens()).to(at::kDouble).mean().item<double>();
  r.sae.metadata = metadata;
  r.sae.metadata["config"] = user_cfg.to_json();
  if (!adjustments.empty()) r.sae.metadata["config_adjustments"] = adjustments;
  r.sae.metadata["tokens_seen"] = step * cfg.batch_size;
  r.sae.metadata["steps"] = step;
  ojson fmj = ojson::object();
  for (const auto& [k, v] : fm) fmj[k] = std::isfinite(v) ? ojson(v) : ojson(nullptr);
  r.sae.metadata["final_metrics"] = fmj;
  r.sae.metadata["final_metrics_on"] = x_val.size(0) > 0 ? "validation split" : "none (validation_split = 0)";
  r.sae.metadata["data"] = src.fingerprint();
  if (arch == SaeArch::BatchTopK) r.sae.metadata["batchtopk_threshold"] = theta;
  const double session_s = session.seconds();
  r.sae.metadata["timing"] = {{"session_seconds", session_s},
                              {"session_steps", tokens_session / cfg.batch_size},
                              {"sae_step_seconds", step_seconds},
                              {"sae_steps_per_s", step_seconds > 0 ? double(tokens_session / cfg.batch_size) / step_seconds : 0.0},
                              {"tokens_per_s", session_s > 0 ? double(tokens_session) / session_s : 0.0},
                              {"sae_step_cpu_seconds", step_cpu_seconds},
                              {"session_cpu_seconds", process_cpu_seconds() - cpu_start},
                              {"tokens_per_cpu_s", double(tokens_session) / std::max(1e-9, process_cpu_seconds() - cpu_start)},
                              {"peak_rss_mb", double(peak_rss_bytes()) / 1048576.0}};
  r.sae.save(opt.out_dir);
  if (!logger.dir.empty()) {
    ojson row = {{"step", step}, {"split", "val"}, {"final", true}};
    for (const auto& [k, v] : fm) row[k] = v;
    logger.log(row, "final/");
    logger.html();
  }
  say("💾 Saved SAE to " + opt.out_dir);
  say("✅ Training complete!");
  r.steps = step;
  r.total_steps = total_steps;
  r.tokens = step * cfg.batch_size;
  r.final_metrics = fm;
  r.seconds = wall.seconds();
  r.step_seconds = step_seconds;
  r.finished = true;
  return r;
}

SaeTrainResult train_sae(const InterpretableModel& model, int layer, const std::string& component,
                         const TextCorpus& corpus, const SAEConfig& cfg, const SaeTrainOptions& opt) {
  cfg.validate();
  auto say = [&](const std::string& s) {
    if (!opt.quiet) {
      std::printf("%s\n", s.c_str());
      std::fflush(stdout);
    }
  };
  say(cat("🎯 Training SAE on Layer ", layer, " ", component.empty() ? "resid_post" : component));
  say(cat("📊 Config: ", cfg.expansion_factor, "x expansion, k=", cfg.k, " (", cfg.sae_type, ")"));
  const int site = model.sites().resolve_component(layer, component);
  HarvestOptions h;
  h.context_size = std::min<int64_t>(cfg.context_size, model.model().config().n_ctx);
  h.text_batch_size = cfg.text_batch_size;
  h.exclude_special = cfg.exclude_special_tokens;
  at::Device device = cfg.device == "auto" ? model.model().device() : parse_device(cfg.device);
  ModelActivationSource src(model, corpus, site, h, cfg.validation_split, uint64_t(cfg.seed), device);
  ojson meta = {{"model", model.source()},
                {"site", model.sites()[site].name},
                {"layer", layer},
                {"component", model.sites()[site].component},
                {"data", corpus.path()}};
  return train_sae(src, cfg, meta, opt);
}

}  // namespace mlxterp
