// HTML pages for activation patching, attribution patching and causal tracing.
#include "mlxterp/analysis_causal.hpp"
#include "mlxterp/analysis_patching.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

std::string joined(const std::vector<std::string>& toks) {
  std::string s;
  for (const auto& t : toks) s += t;
  return s;
}

// values [n_layers, n_positions, n_heads] -> one or more charts.
std::string patch_charts(const at::Tensor& values, const std::vector<int>& layers, const std::vector<int64_t>& positions,
                         int64_t n_heads, const std::vector<std::string>& tokens, const std::string& title,
                         const std::string& bar_label) {
  std::string out;
  const int64_t L = values.size(0), P = values.size(1), H = values.size(2);
  std::vector<std::string> lrows;
  for (int l : layers) lrows.push_back("L" + std::to_string(l));
  if (P == 1 && H == 1) {
    report::BarChart bc;
    bc.title = title;
    for (int64_t l = 0; l < L; ++l) {
      bc.labels.push_back(lrows[size_t(l)]);
      bc.values.push_back(values[l][0][0].item<double>());
    }
    bc.x_label = "layer";
    bc.y_label = bar_label;
    return report::bar_chart_svg(bc);
  }
  if (H == 1) {
    report::Heatmap hm;
    hm.title = title + " (layer x position)";
    hm.values = report::Matrix::from(values.select(2, 0));
    hm.row_labels = lrows;
    for (int64_t p : positions) hm.col_labels.push_back(std::to_string(p) + ":" + tokens[size_t(p)]);
    hm.diverging = true;
    hm.show_values = P <= 24;
    hm.x_label = "position (corrupted prompt)";
    hm.y_label = "layer";
    hm.colorbar_label = bar_label;
    return report::heatmap_svg(hm);
  }
  // Per head: layer x head, once per position (or once when all positions were patched together).
  for (int64_t pi = 0; pi < P; ++pi) {
    report::Heatmap hm;
    hm.title = title + (positions[size_t(pi)] < 0 ? std::string(" (layer x head, all positions)")
                                                  : " (layer x head, position " + std::to_string(positions[size_t(pi)]) + ": " +
                                                        quote(tokens[size_t(positions[size_t(pi)])]) + ")");
    hm.values = report::Matrix::from(values.select(1, pi));
    hm.row_labels = lrows;
    for (int64_t h = 0; h < n_heads; ++h) hm.col_labels.push_back("H" + std::to_string(h));
    hm.diverging = true;
    hm.show_values = true;
    hm.x_label = "head";
    hm.y_label = "layer";
    hm.colorbar_label = bar_label;
    out += report::heatmap_svg(hm);
  }
  return out;
}

std::string prompts_html(const std::vector<std::string>& clean, const std::vector<std::string>& corrupt) {
  return "<p class=\"mx-meta\">Clean: <code>" + report::html_escape(joined(clean)) + "</code><br>Corrupted: <code>" +
         report::html_escape(joined(corrupt)) + "</code></p>";
}

}  // namespace

report::Page patching_page(const PatchResult& r) {
  report::Page page("Activation patching: " + r.component);
  page.html(prompts_html(r.clean_tokens, r.corrupt_tokens));
  std::string m = r.metric + (r.answer_token.empty() ? "" : " (answer " + quote(r.answer_token) + ")") +
                  (r.wrong_token.empty() ? "" : " vs " + quote(r.wrong_token));
  page.paragraph("Metric: " + m + ". Clean " + report::fmt(r.clean_value, "%.4f") + ", corrupted " +
                 report::fmt(r.corrupt_value, "%.4f") + ". Recovery = (patched - corrupted) / (clean - corrupted): 1 = the "
                 "clean activation restores the clean behaviour, 0 = no effect, < 0 = moves further away.");
  page.html(patch_charts(r.recovery, r.layers, r.positions, r.n_heads, r.corrupt_tokens, "Recovery", "recovery"));
  page.data("mx-patch-data", r.to_json());
  return page;
}

report::Page attribution_page(const AttributionResult& a) {
  report::Page page("Attribution patching: " + a.component);
  page.html(prompts_html(a.clean_tokens, a.corrupt_tokens));
  page.paragraph("Metric: " + a.metric + ". Clean " + report::fmt(a.clean_value, "%.4f") + ", corrupted " +
                 report::fmt(a.corrupt_value, "%.4f") + ". Estimate = gradient of the metric at the corrupted run x "
                 "(clean - corrupted activation), normalised by (clean - corrupted).");
  page.html(patch_charts(a.recovery, a.layers, a.positions, a.n_heads, a.corrupt_tokens, "Estimated recovery", "recovery"));
  if (a.patched_effect.defined()) {
    const double denom = a.clean_value - a.corrupt_value;
    at::Tensor real = std::abs(denom) > 1e-12 ? a.patched_effect / denom : a.patched_effect;
    page.paragraph("Validation against real activation patching: Pearson r = " + report::fmt(a.pearson_r, "%.4f") + ".");
    page.html(patch_charts(real, a.layers, a.positions, a.n_heads, a.corrupt_tokens, "Real patching recovery", "recovery"));
  }
  page.data("mx-attribution-data", a.to_json());
  return page;
}

report::Page causal_trace_page(const CausalTraceResult& r) {
  report::Page page("Causal tracing: " + r.component);
  page.html("<p class=\"mx-meta\">Prompt: <code>" + report::html_escape(joined(r.tokens)) + "</code><br>Subject tokens [" +
            std::to_string(r.subject_start) + ", " + std::to_string(r.subject_end) + "), target " +
            report::html_escape(quote(r.target_token)) + "</p>");
  page.paragraph("P(target): clean " + report::fmt(r.p_clean, "%.4f") + ", corrupted " + report::fmt(r.p_corrupt, "%.4f") +
                 " (noise std " + report::fmt(r.noise_std, "%.4f") + " on the subject's embeddings, " + std::to_string(r.samples) +
                 " samples). Each cell: P(target) when the " + r.component +
                 " state at that layer and position is restored to its clean value.");
  std::vector<std::string> labels;
  for (size_t p = 0; p < r.tokens.size(); ++p) {
    bool subj = int64_t(p) >= r.subject_start && int64_t(p) < r.subject_end;
    labels.push_back(r.tokens[p] + (subj ? "*" : ""));
  }
  report::Heatmap hm;
  hm.title = "P(target) after restoring (subject tokens marked *)";
  hm.values = report::Matrix::from(r.prob.t());
  hm.row_labels = labels;
  for (int l : r.layers) hm.col_labels.push_back("L" + std::to_string(l));
  hm.x_label = "layer";
  hm.y_label = "restored position";
  hm.show_values = r.layers.size() <= 24;
  hm.value_format = "%.3f";
  hm.colorbar_label = "P(target)";
  page.html(report::heatmap_svg(hm));
  page.data("mx-causal-data", r.to_json());
  return page;
}

report::Page causal_trace_summary_page(const CausalTraceSummary& s) {
  report::Page page("Causal tracing over facts");
  page.paragraph(std::to_string(s.n_used) + " of " + std::to_string(s.n_facts) + " facts used (" + std::to_string(s.n_skipped) +
                 " skipped). Mean P(target): clean " + report::fmt(s.mean_p_clean, "%.4f") + ", corrupted " +
                 report::fmt(s.mean_p_corrupt, "%.4f") + ".");
  report::Heatmap hm;
  hm.title = "Average indirect effect: P(restored) - P(corrupted)";
  hm.values = report::Matrix::from(s.indirect_effect);
  for (int g = 0; g < CausalTraceSummary::kGroups; ++g) hm.row_labels.push_back(CausalTraceSummary::group_name(g));
  for (int l : s.layers) hm.col_labels.push_back("L" + std::to_string(l));
  hm.show_values = s.layers.size() <= 24;
  hm.value_format = "%.3f";
  hm.x_label = "layer";
  page.html(report::heatmap_svg(hm));
  report::LineChart lc;
  lc.title = "Mean recovery by token group";
  lc.x_label = "layer";
  lc.y_label = "recovery";
  for (int g = 0; g < CausalTraceSummary::kGroups; ++g) {
    report::Series se;
    se.name = CausalTraceSummary::group_name(g);
    for (size_t i = 0; i < s.layers.size(); ++i) {
      se.x.push_back(s.layers[i]);
      se.y.push_back(s.recovery[g][int64_t(i)].item<double>());
    }
    lc.series.push_back(se);
  }
  page.html(report::line_chart_svg(lc));
  if (!s.skipped_reasons.empty()) {
    page.heading("Skipped (first few)", 3);
    report::Table t;
    t.header = {"reason"};
    for (const auto& r : s.skipped_reasons) t.rows.push_back({r});
    page.table(t);
  }
  page.data("mx-causal-summary", s.to_json());
  return page;
}

}  // namespace mlxterp
