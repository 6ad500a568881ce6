// Logit lens, token predictions and the lens pages (analysis_lens.hpp).
#include "mlxterp/analysis_lens.hpp"

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

at::Tensor lens_logits(const Model& model, const at::Tensor& h, bool apply_norm) {
  MLXTERP_CHECK(h.size(-1) == model.config().d_model, "lens: hidden state has ", h.size(-1), " features; the model's d_model is ",
                model.config().d_model);
  at::Tensor x = h.to(model.device(), model.dtype());
  return model.unembed(apply_norm ? model.final_norm(x) : x);
}

static std::vector<TokenPrediction> topk_row(const InterpretableModel& m, const at::Tensor& logits_row, int k) {
  // logits_row: [V] (any device); probabilities from a float32 softmax over the full vocabulary.
  at::Tensor lf = logits_row.to(at::kFloat);
  at::Tensor probs = at::softmax(lf, -1);
  k = int(std::min<int64_t>(k, lf.size(0)));
  auto [vals, idx] = lf.topk(k);
  at::Tensor p = probs.index_select(0, idx).cpu();
  vals = vals.cpu();
  idx = idx.cpu();
  std::vector<TokenPrediction> out;
  for (int i = 0; i < k; ++i) {
    TokenPrediction tp;
    tp.id = int32_t(idx[i].item<int64_t>());
    tp.logit = vals[i].item<float>();
    tp.prob = p[i].item<float>();
    tp.token = token_string(m, tp.id);
    out.push_back(std::move(tp));
  }
  return out;
}

std::vector<std::vector<TokenPrediction>> get_token_predictions(const InterpretableModel& m, const at::Tensor& h, int top_k,
                                                                bool apply_norm) {
  MLXTERP_CHECK(top_k >= 1, "get_token_predictions: top_k must be >= 1, got ", top_k);
  MLXTERP_CHECK(h.dim() == 1 || h.dim() == 2, "get_token_predictions: expected a hidden state [d_model] or [n, d_model], got ",
                shape_str(h.sizes()));
  at::NoGradGuard ng;
  at::Tensor x = h.dim() == 1 ? h.unsqueeze(0) : h;
  at::Tensor logits = lens_logits(m.model(), x, apply_norm);  // [n, V]
  std::vector<std::vector<TokenPrediction>> out;
  for (int64_t i = 0; i < logits.size(0); ++i) out.push_back(topk_row(m, logits[i], top_k));
  return out;
}

namespace {

// Shared by logit and tuned lens: `translate(h, layer)` maps a block output before the lens.
LensResult run_lens(const InterpretableModel& m, const Prompt& prompt, const LensOptions& o,
                    const std::function<at::Tensor(const at::Tensor&, int)>& translate, const std::string& kind) {
  MLXTERP_CHECK(o.top_k >= 1, kind, " lens: top_k must be >= 1, got ", o.top_k);
  at::NoGradGuard ng;
  LensResult r;
  r.lens = kind;
  r.input_ids = prompt_ids(m, prompt);
  r.input_tokens = token_strings(m, r.input_ids);
  r.layers = resolve_layers(o.layers, m.n_layers(), kind + " lens");
  r.target = o.target;
  if (o.target) {
    MLXTERP_CHECK(*o.target >= 0 && *o.target < m.model().config().d_vocab, kind, " lens: target token ", *o.target,
                  " is out of range");
    r.target_token = token_string(m, *o.target);
  }
  const int64_t t = int64_t(r.input_ids.size());
  if (o.position) {
    r.positions = {resolve_position(*o.position, t)};
  } else {
    for (int64_t p = 0; p < t; ++p) r.positions.push_back(p);
  }
  TraceOptions to;
  for (int l : r.layers) to.sites.push_back("model.layers." + std::to_string(l));
  TraceResult tr = m.trace_ids(ids_tensor(r.input_ids), {}, to);
  at::Tensor pos = at::tensor(r.positions, at::kLong);
  at::Tensor final_logits = tr.logits[0].index_select(0, pos.to(tr.logits.device())).to(at::kFloat);  // [P, V]
  at::Tensor final_lp = at::log_softmax(final_logits, -1);
  for (int64_t c = 0; c < int64_t(r.positions.size()); ++c) r.final_top.push_back(topk_row(m, final_logits[c], o.top_k));
  const int64_t R = int64_t(r.layers.size()), P = int64_t(r.positions.size());
  r.kl_to_final = at::zeros({R, P}, at::kDouble);
  r.entropy = at::zeros({R, P}, at::kDouble);
  if (o.target) {
    r.target_prob = at::zeros({R, P}, at::kDouble);
    r.target_rank = at::zeros({R, P}, at::kLong);
  }
  for (int64_t ri = 0; ri < R; ++ri) {
    const int l = r.layers[size_t(ri)];
    at::Tensor h = tr.get("model.layers." + std::to_string(l))[0].index_select(0, pos.to(tr.logits.device()));  // [P, d]
    if (translate) h = translate(h, l);
    at::Tensor logits = lens_logits(m.model(), h, o.apply_norm).to(at::kFloat);  // [P, V]
    at::Tensor lp = at::log_softmax(logits, -1);
    r.kl_to_final[ri] = (final_lp.exp() * (final_lp - lp)).sum(-1).cpu().to(at::kDouble);
    r.entropy[ri] = -(lp.exp() * lp).sum(-1).cpu().to(at::kDouble);
    std::vector<std::vector<TokenPrediction>> row;
    for (int64_t c = 0; c < P; ++c) row.push_back(topk_row(m, logits[c], o.top_k));
    r.top.push_back(std::move(row));
    if (o.target) {
      at::Tensor tl = logits.select(1, *o.target);  // [P]
      r.target_prob[ri] = lp.select(1, *o.target).exp().cpu().to(at::kDouble);
      r.target_rank[ri] = (logits > tl.unsqueeze(1)).sum(1).cpu();
    }
  }
  return r;
}

}  // namespace

LensResult logit_lens(const InterpretableModel& m, const Prompt& prompt, const LensOptions& options) {
  return run_lens(m, prompt, options, nullptr, "logit");
}

LensResult tuned_lens(const InterpretableModel& m, const TunedLens& lens, const Prompt& prompt, const LensOptions& options) {
  MLXTERP_CHECK(lens.n_layers() == m.n_layers() && lens.d_model() == m.model().config().d_model,
                "tuned lens: trained for ", lens.n_layers(), " layers x d_model ", lens.d_model(), "; the model has ",
                m.n_layers(), " layers x d_model ", m.model().config().d_model, " (a lens for another model?)");
  return run_lens(
      m, prompt, options, [&](const at::Tensor& h, int l) { return lens.translate(h, l); }, "tuned");
}

static nlohmann::json preds_json(const std::vector<TokenPrediction>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& p : v) a.push_back({{"id", p.id}, {"token", p.token}, {"logit", p.logit}, {"prob", p.prob}});
  return a;
}

nlohmann::json LensResult::to_json() const {
  nlohmann::ordered_json j;
  j["lens"] = lens;
  j["input_ids"] = input_ids;
  j["input_tokens"] = input_tokens;
  j["layers"] = layers;
  j["positions"] = positions;
  if (target) {
    j["target"] = *target;
    j["target_token"] = target_token;
  }
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (size_t r = 0; r < layers.size(); ++r) {
    nlohmann::ordered_json cols = nlohmann::ordered_json::array();
    for (size_t c = 0; c < positions.size(); ++c) {
      nlohmann::ordered_json cell;
      cell["position"] = positions[c];
      cell["top"] = preds_json(top[r][c]);
      cell["kl_to_final"] = kl_to_final[int64_t(r)][int64_t(c)].item<double>();
      cell["entropy"] = entropy[int64_t(r)][int64_t(c)].item<double>();
      if (target) {
        cell["target_prob"] = target_prob[int64_t(r)][int64_t(c)].item<double>();
        cell["target_rank"] = target_rank[int64_t(r)][int64_t(c)].item<int64_t>();
      }
      cols.push_back(cell);
    }
    nlohmann::ordered_json row;
    row["layer"] = layers[r];
    row["positions"] = cols;
    rows.push_back(row);
  }
  j["predictions"] = rows;
  nlohmann::json fin = nlohmann::json::array();
  for (const auto& f : final_top) fin.push_back(preds_json(f));
  j["model_top"] = fin;
  return j;
}

// ---- pages --------------------------------------------------------------------------------------

std::string lens_grid_svg(const LensResult& r, const std::string& title) {
  const int64_t R = int64_t(r.layers.size()), P = int64_t(r.positions.size());
  report::Heatmap hm;
  hm.title = title;
  hm.values.rows = R;
  hm.values.cols = P;
  hm.values.data.resize(size_t(R * P));
  hm.cell_text.assign(size_t(R), std::vector<std::string>(size_t(P)));
  hm.tooltips.assign(size_t(R), std::vector<std::string>(size_t(P)));
  for (int64_t i = 0; i < R; ++i) {
    const int64_t ri = R - 1 - i;  // last layer on top
    hm.row_labels.push_back("L" + std::to_string(r.layers[size_t(ri)]));
    for (int64_t c = 0; c < P; ++c) {
      const auto& preds = r.top[size_t(ri)][size_t(c)];
      hm.values.at(i, c) = preds[0].prob;
      hm.cell_text[size_t(i)][size_t(c)] = preds[0].token;
      std::string tip = "layer " + std::to_string(r.layers[size_t(ri)]) + ", position " + std::to_string(r.positions[size_t(c)]) +
                        " (input " + quote(r.input_tokens[size_t(r.positions[size_t(c)])]) + ")\n";
      for (const auto& p : preds) tip += quote(p.token) + "  p=" + report::fmt(p.prob, "%.4f") + "  logit=" + report::fmt(p.logit, "%.3f") + "\n";
      tip += "KL to final: " + report::fmt(r.kl_to_final[ri][c].item<double>(), "%.4f") + " nats";
      if (r.target) tip += "\ntarget rank: " + std::to_string(r.target_rank[ri][c].item<int64_t>());
      hm.tooltips[size_t(i)][size_t(c)] = tip;
    }
  }
  for (int64_t p : r.positions) hm.col_labels.push_back(r.input_tokens[size_t(p)]);
  hm.vmin = 0;
  hm.vmax = 1;
  hm.x_label = "input position (the prediction is for the next token)";
  hm.y_label = "layer";
  hm.colorbar_label = "top-1 prob";
  return report::heatmap_svg(hm);
}

namespace {

std::string value_grid(const LensResult& r, const at::Tensor& values, const std::string& title, const std::string& bar,
                       bool integer) {
  const int64_t R = int64_t(r.layers.size());
  at::Tensor flipped = values.to(at::kDouble).flip({0});
  report::Heatmap hm;
  hm.title = title;
  hm.values = report::Matrix::from(flipped);
  for (int64_t i = 0; i < R; ++i) hm.row_labels.push_back("L" + std::to_string(r.layers[size_t(R - 1 - i)]));
  for (int64_t p : r.positions) hm.col_labels.push_back(r.input_tokens[size_t(p)]);
  hm.show_values = true;
  hm.value_format = integer ? "%.0f" : "%.2f";
  hm.colorbar_label = bar;
  hm.y_label = "layer";
  return report::heatmap_svg(hm);
}

}  // namespace

report::Page lens_page(const LensResult& r, const std::string& title0) {
  std::string title = title0.empty() ? (r.lens == "tuned" ? "Tuned lens" : "Logit lens") : title0;
  report::Page page(title);
  std::string text;
  for (const auto& t : r.input_tokens) text += t;
  page.html("<p class=\"mx-meta\">Input (" + std::to_string(r.input_ids.size()) + " tokens): <code>" +
            report::html_escape(text) + "</code></p>");
  page.paragraph("Each cell shows the most likely next token when the residual stream after that layer is read through " +
                 std::string(r.lens == "tuned" ? "the layer's trained translator, " : "") +
                 "the final norm and the unembedding; colour = its probability. Hover a cell for the top-k and the KL "
                 "divergence to the model's final distribution.");
  page.html(lens_grid_svg(r, "Top-1 prediction"));
  page.html(value_grid(r, r.kl_to_final, "KL(final || lens), nats", "nats", false));
  if (r.target) {
    page.html(value_grid(r, r.target_rank, "Rank of the target token " + quote(r.target_token), "rank", true));
  }
  page.data("mx-lens-data", r.to_json());
  return page;
}

report::Page lens_comparison_page(const LensResult& logit, const LensResult& tuned, const TunedLensEval* eval) {
  report::Page page("Logit lens vs tuned lens");
  std::string text;
  for (const auto& t : logit.input_tokens) text += t;
  page.html("<p class=\"mx-meta\">Input: <code>" + report::html_escape(text) + "</code></p>");
  page.style(".mx-side { display: flex; flex-wrap: wrap; gap: 24px; } .mx-side > div { flex: 1 1 480px; }");
  page.html("<div class=\"mx-side\"><div><h2>Logit lens</h2>" + lens_grid_svg(logit, "") + "</div><div><h2>Tuned lens</h2>" +
            lens_grid_svg(tuned, "") + "</div></div>");
  // Per-layer KL on this prompt (mean over positions).
  report::Table t;
  t.header = {"layer", "logit lens KL (this prompt)", "tuned lens KL (this prompt)"};
  if (eval) t.header.insert(t.header.end(), {"logit lens KL (held out)", "tuned lens KL (held out)"});
  for (size_t i = 0; i < logit.layers.size(); ++i) {
    std::vector<std::string> row = {std::to_string(logit.layers[i]),
                                    report::fmt(logit.kl_to_final[int64_t(i)].mean().item<double>(), "%.4f"),
                                    report::fmt(tuned.kl_to_final[int64_t(i)].mean().item<double>(), "%.4f")};
    if (eval) {
      auto it = std::find(eval->layers.begin(), eval->layers.end(), logit.layers[i]);
      if (it != eval->layers.end()) {
        size_t k = size_t(it - eval->layers.begin());
        row.push_back(report::fmt(eval->logit_kl[k], "%.4f"));
        row.push_back(report::fmt(eval->tuned_kl[k], "%.4f"));
      } else {
        row.insert(row.end(), {"", ""});
      }
    }
    t.rows.push_back(row);
  }
  page.heading("KL divergence to the final distribution per layer (nats)");
  page.table(t);
  if (eval) {
    report::LineChart lc;
    lc.title = "Held-out KL to the final layer";
    lc.x_label = "layer";
    lc.y_label = "KL (nats)";
    report::Series a{"logit lens", {}, {}, "", false}, b{"tuned lens", {}, {}, "", false};
    for (size_t i = 0; i < eval->layers.size(); ++i) {
      a.x.push_back(eval->layers[i]);
      a.y.push_back(eval->logit_kl[i]);
      b.x.push_back(eval->layers[i]);
      b.y.push_back(eval->tuned_kl[i]);
    }
    lc.series = {a, b};
    page.html(report::line_chart_svg(lc));
  }
  page.data("mx-logit-lens", logit.to_json());
  page.data("mx-tuned-lens", tuned.to_json());
  if (eval) page.data("mx-tuned-eval", eval->to_json());
  return page;
}

}  // namespace mlxterp
