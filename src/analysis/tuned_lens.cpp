// Tuned lens: translators, training (SGD-Nesterov on KL to the final layer), save/load, evaluation.
#include <random>

#include "mlxterp/analysis_lens.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/io.hpp"
#include "mlxterp/progress.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

TunedLens::TunedLens(int n_layers, int64_t d_model) : n_layers_(n_layers), d_model_(d_model) {
  MLXTERP_CHECK(n_layers >= 1 && d_model >= 1, "TunedLens: need n_layers >= 1 and d_model >= 1, got ", n_layers, " and ",
                d_model);
  for (int l = 0; l + 1 < n_layers; ++l) {
    A_.push_back(at::zeros({d_model, d_model}, at::kFloat));
    b_.push_back(at::zeros({d_model}, at::kFloat));
  }
}

at::Tensor TunedLens::translate(const at::Tensor& h, int layer) const {
  MLXTERP_CHECK(layer >= 0 && layer < n_layers_, "layer_idx ", layer, " out of range [0, ", n_layers_, ")");
  if (layer == n_layers_ - 1) return h;  // the final layer's lens is exact
  const at::Tensor& A = A_[size_t(layer)];
  const at::Tensor& b = b_[size_t(layer)];
  at::Tensor x = h.to(A.device(), at::kFloat);
  return (x + at::linear(x, A, b)).to(h.scalar_type());
}

void TunedLens::to(at::Device device) {
  for (auto& a : A_) a = a.to(device);
  for (auto& b : b_) b = b.to(device);
}

void TunedLens::save(const std::string& dir) const {
  make_dirs(dir);
  TensorMap t;
  for (size_t l = 0; l < A_.size(); ++l) {
    t["translators." + std::to_string(l) + ".weight"] = A_[l].detach().cpu().contiguous();
    t["translators." + std::to_string(l) + ".bias"] = b_[l].detach().cpu().contiguous();
  }
  save_safetensors(join_path(dir, "translators.safetensors"), t, {{"format", "mlxterp-tuned-lens"}});
  nlohmann::ordered_json cfg;
  cfg["format"] = "mlxterp-tuned-lens";
  cfg["version"] = 1;
  cfg["n_layers"] = n_layers_;
  cfg["d_model"] = d_model_;
  cfg["parametrization"] = "h + h @ A^T + b for layers 0..n_layers-2 (block outputs); identity at the last layer";
  cfg["training"] = info_;
  write_file_atomic(join_path(dir, "config.json"), cfg.dump(2) + "\n");
}

TunedLens TunedLens::load(const std::string& dir) {
  const std::string cfg_path = join_path(dir, "config.json"), w_path = join_path(dir, "translators.safetensors");
  MLXTERP_CHECK(file_exists(cfg_path), dir, ": not a tuned lens directory; expected config.json and "
                "translators.safetensors (what `mlxterp tuned-lens train` writes)");
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    MLXTERP_FAIL(cfg_path, ": invalid JSON: ", e.what());
  }
  MLXTERP_CHECK(cfg.value("format", "") == "mlxterp-tuned-lens", cfg_path, ": format is ",
                quote(cfg.value("format", "")), "; expected \"mlxterp-tuned-lens\"");
  MLXTERP_CHECK(cfg.contains("n_layers") && cfg["n_layers"].is_number_integer() && cfg.contains("d_model") &&
                    cfg["d_model"].is_number_integer(),
                cfg_path, ": missing integer fields n_layers / d_model");
  TunedLens lens(cfg["n_layers"].get<int>(), cfg["d_model"].get<int64_t>());
  SafeTensors st = SafeTensors::open(w_path);
  for (int l = 0; l + 1 < lens.n_layers_; ++l) {
    for (const char* part : {"weight", "bias"}) {
      std::string name = "translators." + std::to_string(l) + "." + part;
      MLXTERP_CHECK(st.contains(name), w_path, ": missing tensor '", name, "'");
      at::Tensor t = st.get(name).to(at::kFloat).clone();
      at::Tensor& dst = std::string(part) == "weight" ? lens.A_[size_t(l)] : lens.b_[size_t(l)];
      MLXTERP_CHECK(t.sizes() == dst.sizes(), w_path, ": '", name, "' has shape ", shape_str(t.sizes()), "; expected ",
                    shape_str(dst.sizes()));
      dst = t;
    }
  }
  lens.info_ = cfg.value("training", nlohmann::json::object());
  return lens;
}

nlohmann::json TunedLensEval::to_json() const {
  nlohmann::json j = nlohmann::json::array();
  for (size_t i = 0; i < layers.size(); ++i)
    j.push_back({{"layer", layers[i]}, {"logit_lens_kl", logit_kl[i]}, {"tuned_lens_kl", tuned_kl[i]}});
  return {{"n_tokens", n_tokens}, {"per_layer", j}};
}

namespace {

// One forward pass: block outputs of every layer [L][b, t, d] and the final log-probs [b, t, V].
struct Targets {
  std::vector<at::Tensor> h;
  at::Tensor final_lp;
};

Targets run_targets(const InterpretableModel& m, const at::Tensor& ids) {
  TraceOptions o;
  for (int l = 0; l < m.n_layers(); ++l) o.sites.push_back("model.layers." + std::to_string(l));
  TraceResult tr = m.trace_ids(ids, {}, o);
  Targets t;
  for (int l = 0; l < m.n_layers(); ++l) t.h.push_back(tr.get("model.layers." + std::to_string(l)));
  t.final_lp = at::log_softmax(tr.logits.to(at::kFloat), -1);
  return t;
}

// Mean over tokens of KL(p_final || softmax(logits)).
at::Tensor kl_mean(const at::Tensor& final_lp, const at::Tensor& logits) {
  at::Tensor lp = at::log_softmax(logits.to(at::kFloat), -1);
  return (final_lp.exp() * (final_lp - lp)).sum(-1).mean();
}

std::vector<at::Tensor> windows(const std::vector<std::vector<int32_t>>& seqs, int64_t seq_len) {
  std::vector<int64_t> stream;
  for (const auto& s : seqs) stream.insert(stream.end(), s.begin(), s.end());
  std::vector<at::Tensor> out;
  for (size_t i = 0; i + size_t(seq_len) <= stream.size(); i += size_t(seq_len))
    out.push_back(at::tensor(std::vector<int64_t>(stream.begin() + int64_t(i), stream.begin() + int64_t(i) + seq_len), at::kLong));
  return out;
}

}  // namespace

TunedLensEval evaluate_tuned_lens(const InterpretableModel& m, const TunedLens& lens,
                                  const std::vector<std::vector<int32_t>>& sequences, int64_t batch_size) {
  at::NoGradGuard ng;
  TunedLensEval ev;
  const int L = m.n_layers();
  for (int l = 0; l < L; ++l) ev.layers.push_back(l);
  ev.logit_kl.assign(size_t(L), 0.0);
  ev.tuned_kl.assign(size_t(L), 0.0);
  int64_t n = 0;
  size_t i = 0;
  while (i < sequences.size()) {
    // Consecutive equal-length rows batch together.
    std::vector<at::Tensor> rows;
    size_t j = i;
    for (; j < sequences.size() && j < i + size_t(batch_size); ++j) {
      if (!rows.empty() && int64_t(sequences[j].size()) != rows[0].size(0)) break;
      rows.push_back(ids_tensor(sequences[j])[0]);
    }
    at::Tensor ids = at::stack(rows);
    Targets t = run_targets(m, ids);
    const int64_t tokens = ids.numel();
    for (int l = 0; l < L; ++l) {
      double lk = kl_mean(t.final_lp, lens_logits(m.model(), t.h[size_t(l)])).item<double>();
      double tk = kl_mean(t.final_lp, lens_logits(m.model(), lens.translate(t.h[size_t(l)], l))).item<double>();
      ev.logit_kl[size_t(l)] += lk * double(tokens);
      ev.tuned_kl[size_t(l)] += tk * double(tokens);
    }
    n += tokens;
    i = j;
  }
  for (int l = 0; l < L; ++l) {
    ev.logit_kl[size_t(l)] /= double(std::max<int64_t>(n, 1));
    ev.tuned_kl[size_t(l)] /= double(std::max<int64_t>(n, 1));
  }
  ev.n_tokens = n;
  return ev;
}

TunedLens train_tuned_lens_ids(const InterpretableModel& m, const std::vector<std::vector<int32_t>>& sequences,
                               const TunedLensTrainOptions& o, TunedLensEval* eval_out) {
  MLXTERP_CHECK(o.steps >= 1, "tuned lens: steps must be >= 1, got ", o.steps);
  MLXTERP_CHECK(o.seq_len >= 2, "tuned lens: seq_len must be >= 2, got ", o.seq_len);
  MLXTERP_CHECK(o.batch_size >= 1, "tuned lens: batch_size must be >= 1, got ", o.batch_size);
  MLXTERP_CHECK(o.lr > 0 && o.momentum >= 0 && o.momentum < 1 && o.weight_decay >= 0, "tuned lens: need lr > 0, "
                "0 <= momentum < 1, weight_decay >= 0; got lr ", o.lr, ", momentum ", o.momentum, ", weight_decay ", o.weight_decay);
  MLXTERP_CHECK(o.holdout_fraction >= 0 && o.holdout_fraction < 1, "tuned lens: holdout_fraction must be in [0, 1), got ",
                o.holdout_fraction);
  const int L = m.n_layers();
  const int64_t d = m.model().config().d_model;
  std::vector<at::Tensor> win = windows(sequences, o.seq_len);
  MLXTERP_CHECK(!win.empty(), "Dataset too small: need at least ", o.seq_len, " tokens for one training sequence; "
                "provide more text or a smaller seq_len");
  std::mt19937_64 rng(o.seed);
  std::shuffle(win.begin(), win.end(), rng);
  size_t n_hold = size_t(double(win.size()) * o.holdout_fraction);
  if (o.holdout_fraction > 0 && n_hold == 0 && win.size() >= 2) n_hold = 1;
  std::vector<at::Tensor> hold(win.end() - int64_t(n_hold), win.end());
  win.resize(win.size() - n_hold);
  MLXTERP_CHECK(!win.empty(), "tuned lens: no training sequences left after the hold-out split; provide more text");

  TunedLens lens(L, d);
  const at::Device dev = m.model().device();
  lens.to(dev);
  std::vector<at::Tensor> params, bufs;
  for (int l = 0; l + 1 < L; ++l) {
    lens.weight(l).requires_grad_(true);
    lens.bias(l).requires_grad_(true);
    params.push_back(lens.weight(l));
    params.push_back(lens.bias(l));
  }
  for (const auto& p : params) bufs.push_back(at::zeros_like(p));
  nlohmann::json losses = nlohmann::json::array();
  Progress bar("Training tuned lens", o.steps, stderr, !o.progress);
  size_t cursor = 0;
  double last_loss = 0;
  for (int step = 0; step < o.steps; ++step) {
    std::vector<at::Tensor> rows;
    for (int64_t b = 0; b < o.batch_size; ++b) {
      rows.push_back(win[cursor % win.size()]);
      ++cursor;
    }
    at::Tensor ids = at::stack(rows);
    Targets t;
    {
      at::NoGradGuard ng;
      t = run_targets(m, ids);
    }
    at::Tensor loss = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(dev));
    for (int l = 0; l + 1 < L; ++l) loss = loss + kl_mean(t.final_lp, lens_logits(m.model(), lens.translate(t.h[size_t(l)], l)));
    loss = loss / double(std::max(L - 1, 1));
    for (auto& p : params)
      if (p.grad().defined()) p.grad().zero_();
    loss.backward();
    {
      at::NoGradGuard ng;
      double gn2 = 0;
      for (auto& p : params) gn2 += p.grad().pow(2).sum().item<double>();
      double gn = std::sqrt(gn2);
      double clip = (o.grad_clip > 0 && gn > o.grad_clip) ? o.grad_clip / (gn + 1e-6) : 1.0;
      const double lr = o.lr * (1.0 - double(step) / double(o.steps));
      for (size_t i = 0; i < params.size(); ++i) {
        at::Tensor g = params[i].grad() * clip;
        if (o.weight_decay > 0) g = g + params[i] * o.weight_decay;
        bufs[i].mul_(o.momentum).add_(g);
        at::Tensor upd = g + bufs[i] * o.momentum;  // Nesterov
        params[i].sub_(upd * lr);
      }
      last_loss = loss.item<double>();
      losses.push_back(last_loss);
      bar.update(1, {{"loss", last_loss, ""}, {"lr", lr, ""}, {"grad_norm", gn, ""}});
    }
  }
  bar.finish();
  for (auto& p : params) p.requires_grad_(false);
  lens.to(at::kCPU);
  nlohmann::ordered_json info;
  info["steps"] = o.steps;
  info["lr"] = o.lr;
  info["momentum"] = o.momentum;
  info["weight_decay"] = o.weight_decay;
  info["grad_clip"] = o.grad_clip;
  info["seq_len"] = o.seq_len;
  info["batch_size"] = o.batch_size;
  info["train_sequences"] = win.size();
  info["heldout_sequences"] = hold.size();
  info["final_loss"] = last_loss;
  info["loss_curve"] = losses;
  if (!hold.empty()) {
    std::vector<std::vector<int32_t>> hs;
    for (const auto& w : hold) {
      auto acc = w.accessor<int64_t, 1>();
      std::vector<int32_t> v;
      for (int64_t i = 0; i < w.size(0); ++i) v.push_back(int32_t(acc[i]));
      hs.push_back(std::move(v));
    }
    TunedLensEval ev = evaluate_tuned_lens(m, lens, hs, o.batch_size);
    info["heldout"] = ev.to_json();
    if (eval_out) *eval_out = ev;
  }
  lens.info() = info;
  return lens;
}

TunedLens train_tuned_lens(const InterpretableModel& m, const std::vector<Prompt>& texts, const TunedLensTrainOptions& o) {
  MLXTERP_CHECK(!texts.empty(), "Dataset is empty. Provide a non-empty list of text strings for training.");
  std::vector<std::vector<int32_t>> seqs;
  for (const auto& t : texts) {
    if (!t.is_ids && trim(t.text).empty()) continue;
    seqs.push_back(prompt_ids(m, t));
  }
  MLXTERP_CHECK(!seqs.empty(), "Dataset contains only empty or whitespace strings. Provide text strings with actual content.");
  return train_tuned_lens_ids(m, seqs, o);
}

}  // namespace mlxterp
