// `mlxterp demo`: the one-page HTML report (report::Page: inline CSS/SVG, nothing fetched).
#include <algorithm>
#include <cmath>

#include "demo.hpp"

#include "mlxterp/util.hpp"

namespace mlxterp::cli::demo {

namespace {

using report::html_escape;
using report::token_html;

const char* kStyle = R"css(
.tok{display:inline-block;border:1px solid #ccd;border-radius:3px;margin:1px;padding:0 3px;font-family:monospace;white-space:pre}
.tok small{color:#778;margin-left:3px}
.ctx{font-family:monospace;white-space:pre-wrap;margin:2px 0;line-height:1.6}
.ctx span{border-radius:2px}
.ctx .peak{outline:1px solid #c33}
.feat{border-left:3px solid #88a;padding-left:10px;margin:14px 0}
.note{color:#556}
)css";

// Token display with a shade of blue proportional to act / max.
std::string shaded_tokens(const Context& c) {
  std::string s = "<div class=\"ctx\">";
  double mx = 0;
  for (float a : c.acts) mx = std::max(mx, double(a));
  for (size_t p = 1; p < c.tokens.size(); ++p) {  // position 0 is BOS
    const double a = p < c.acts.size() ? double(c.acts[p]) : 0.0;
    const report::Color col = report::sequential(mx > 0 ? std::clamp(a / mx, 0.0, 1.0) : 0.0);
    s += "<span style=\"background:" + col.css() + ";color:" + col.text_on().css() + "\"" +
         (int64_t(p) == c.pos ? " class=\"peak\"" : "") + " title=\"" + html_escape(fixed(a, 3)) + "\">" +
         token_html(c.tokens[p], false) + "</span>";
  }
  return s + "</div>";
}

}  // namespace

Report::Report(const std::string& model_path, const InterpretableModel& m) : page_("mlxterp demo — " + basename(model_path)) {
  const ModelConfig& c = m.model().config();
  page_.style(kStyle);
  page_.paragraph("Model: " + model_path + " (" + c.model_type + ", " + std::to_string(c.n_layers) + " layers, d_model " +
                  std::to_string(c.d_model) + ", " + std::to_string(c.n_heads) + " heads, vocabulary " +
                  std::to_string(c.d_vocab) + ", " + human_count(int64_t(m.model().n_params())) + " parameters).");
}

void Report::tokens(const std::string& prompt, const std::vector<int32_t>& ids, const std::vector<std::string>& toks) {
  page_.heading("1. Tokenize");
  page_.paragraph("Prompt: " + quote(prompt) + " — " + std::to_string(ids.size()) + " tokens (token, id):");
  std::string h = "<div id=\"tokens\">";
  for (size_t i = 0; i < ids.size(); ++i)
    h += "<span class=\"tok\">" + token_html(toks[i]) + "<small>" + std::to_string(ids[i]) + "</small></span>";
  page_.html(h + "</div>");
}

void Report::trace(int64_t n_sites, const std::vector<std::pair<std::string, std::vector<int64_t>>>& shown,
                   const std::string& gen_prompt, const std::string& gen_text) {
  page_.heading("2. Trace");
  page_.paragraph(std::to_string(n_sites) + " sites captured in one forward pass; some of them:");
  report::Table t;
  t.header = {"site", "shape"};
  for (const auto& [name, shape] : shown) t.rows.push_back({name, shape_str(shape)});
  page_.table(t);
  page_.html("<p>Greedy continuation: <b>" + html_escape(gen_prompt) + "</b>" + html_escape(gen_text) + "</p>");
}

void Report::lens(const LensResult& r) {
  page_.heading("3. Logit lens");
  page_.paragraph("Top-1 token of unembed(final_norm(h)) for the residual stream h after each block (last block on top), "
                  "coloured by its probability; hover a cell for the top-3.");
  page_.html("<div id=\"lens\">" + lens_grid_svg(r) + "</div>");
}

void Report::patching(const PatchResult& r) {
  page_.heading("4. Activation patching");
  page_.paragraph("The corrupted prompt runs with the residual stream after block L at one position copied from the clean "
                  "run. Metric: logit(" + quote(r.answer_token) + ") - logit(" + quote(r.wrong_token) + ") at the last "
                  "position; clean " + fixed(r.clean_value, 2) + ", corrupted " + fixed(r.corrupt_value, 2) +
                  ". Recovery 1 = the clean answer is fully restored.");
  std::string clean, corrupt;
  for (const auto& t : r.clean_tokens) clean += t;
  for (const auto& t : r.corrupt_tokens) corrupt += t;
  page_.html("<p>clean: <code>" + html_escape(clean) + "</code><br>corrupted: <code>" + html_escape(corrupt) + "</code></p>");
  report::Heatmap hm;
  const int64_t R = int64_t(r.layers.size()), C = int64_t(r.positions.size());
  hm.values.rows = R;
  hm.values.cols = C;
  hm.values.data.resize(size_t(R * C));
  for (int64_t i = 0; i < R; ++i) {
    const int64_t row = R - 1 - i;
    hm.row_labels.push_back("L" + std::to_string(r.layers[size_t(row)]));
    for (int64_t j = 0; j < C; ++j) hm.values.at(i, j) = r.recovery[row][j][0].item<double>();
  }
  for (int64_t p : r.positions) hm.col_labels.push_back(p >= 0 && p < int64_t(r.corrupt_tokens.size()) ? r.corrupt_tokens[size_t(p)] : "all");
  hm.diverging = true;
  hm.vmin = -1;
  hm.vmax = 1;
  hm.show_values = true;
  hm.colorbar_label = "recovery";
  page_.html("<div id=\"patching\">" + report::heatmap_svg(hm) + "</div>");
}

void Report::sae(const SAEConfig& cfg, int layer, const SaeTrainResult& r,
                 const std::vector<std::pair<int64_t, std::map<std::string, double>>>& curve, size_t n_docs) {
  page_.heading("5. Sparse autoencoder");
  page_.paragraph("A TopK SAE (d_sae " + std::to_string(r.sae.d_sae) + " = " + std::to_string(cfg.expansion_factor) +
                  " x d_model, k = " + std::to_string(cfg.k) + ") trained in streaming mode on the residual stream after "
                  "block " + std::to_string(layer) + " (model.layers." + std::to_string(layer) + "), over " +
                  std::to_string(n_docs) + " documents: " + std::to_string(r.steps) + " steps, " +
                  std::to_string(r.tokens) + " tokens, " + fixed(r.seconds, 1) + " s.");
  report::Table t;
  t.header = {"metric (held-out tokens)", "value"};
  for (const auto& [k, v] : r.final_metrics) t.rows.push_back({k, report::fmt(v, "%.4g")});
  page_.html("<div id=\"sae-metrics\">" + report::table_html(t) + "</div>");
  if (!curve.empty()) {
    report::LineChart lc;
    lc.title = "SAE training";
    lc.x_label = "step";
    for (const char* key : {"fvu", "dead_frac"}) {
      report::Series s;
      s.name = key;
      for (const auto& [step, m] : curve)
        if (m.count(key)) {
          s.x.push_back(double(step));
          s.y.push_back(m.at(key));
        }
      if (!s.x.empty()) lc.series.push_back(s);
    }
    if (!lc.series.empty()) page_.html(report::line_chart_svg(lc));
  }
}

void Report::features(const std::vector<Feature>& feats) {
  page_.heading("6. Features and their top-activating contexts");
  page_.paragraph("Half of the features are the most frequent ones that fire on at most 5% of tokens, half a random "
                  "sample of the rest. Each context is one verse, shaded by the feature's activation; the outlined "
                  "token is the peak.");
  std::string h = "<div id=\"features\">";
  for (const auto& f : feats) {
    h += "<div class=\"feat\"><h3>feature " + std::to_string(f.id) + "</h3><p class=\"note\">" + f.why + "; active on " +
         fixed(100 * f.density, 2) + "% of tokens</p>";
    for (const auto& c : f.contexts) h += "<div>" + fixed(c.value, 2) + shaded_tokens(c) + "</div>";
    h += "</div>";
  }
  page_.html(h + "</div>");
}

void Report::footer(const std::string& text) { page_.html("<p class=\"note\" id=\"footer\">" + html_escape(text) + "</p>"); }

void Report::save(const std::string& path) { page_.save(path); }

}  // namespace mlxterp::cli::demo
