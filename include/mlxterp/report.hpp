// mlxterp/report.hpp — self-contained HTML pages, SVG charts and JSON files for analysis results.
//
//   mlxterp::report::Page page("Logit lens — stories260K");
//   page.heading("Top-1 prediction per layer and position")
//       .paragraph("Hover a cell for the top-k tokens.");
//   mlxterp::report::Heatmap hm;
//   hm.values = mlxterp::report::Matrix::from(probs);        // [rows, cols] (at::Tensor or nested vectors)
//   hm.row_labels = {"L0", "L1"};  hm.col_labels = {"Once", " upon"};
//   hm.cell_text = top1_tokens;                                // optional text in each cell
//   page.html(mlxterp::report::heatmap_svg(hm));
//   page.save("lens.html");                                    // atomic; nothing is fetched by the page
//
//   mlxterp::report::write_json("lens.json", result_json);     // atomic, pretty-printed
//
// Every page is one file: inline CSS, inline SVG, inline JS, data embedded as
// <script type="application/json">. No fonts, scripts, images or styles are loaded from anywhere, so
// the pages open offline and inside sandboxes (tests/browser/ checks this in headless Chromium).
// Other modules (SAE dashboards, training curves) build their pages with the same pieces.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace mlxterp::report {

// ---- text ---------------------------------------------------------------------------------------

// Escapes & < > " ' for HTML text and attribute values.
std::string html_escape(std::string_view s);
// A token for display: HTML-escaped, with control characters and a leading/trailing space made
// visible ("\n" -> "⏎", " the" keeps its space but shows it as "␣the" when `mark_spaces`).
std::string token_html(std::string_view token, bool mark_spaces = true);
// JSON safe to put inside a <script> element (escapes "</" and "<!--").
std::string json_for_script(const nlohmann::json& j);
// printf-style number formatting ("%.3f"); NaN/inf print as "nan"/"inf".
std::string fmt(double v, const char* format = "%.3g");

// ---- colours ------------------------------------------------------------------------------------

struct Color {
  int r = 0, g = 0, b = 0;
  std::string css() const;  // "rgb(r,g,b)"
  // Black or white, whichever reads better on this background.
  Color text_on() const;
};
// t in [0, 1]: white -> blue (sequential).
Color sequential(double t);
// t in [-1, 1]: red (negative) -> white (0) -> blue (positive).
Color diverging(double t);
// A categorical colour for index i (10 distinct hues, then repeats).
Color categorical(int i);

// ---- data ---------------------------------------------------------------------------------------

// A dense row-major matrix of doubles (NaN = empty cell).
struct Matrix {
  int64_t rows = 0, cols = 0;
  std::vector<double> data;
  double at(int64_t r, int64_t c) const { return data[size_t(r * cols + c)]; }
  double& at(int64_t r, int64_t c) { return data[size_t(r * cols + c)]; }
  static Matrix from(const at::Tensor& t);  // any 1-D or 2-D tensor (1-D becomes one row)
  static Matrix from(const std::vector<std::vector<double>>& rows);
  double min() const;  // over finite values (NaN if none)
  double max() const;
};

// ---- charts (inline SVG strings) ----------------------------------------------------------------

struct Heatmap {
  Matrix values;
  std::vector<std::string> row_labels, col_labels;  // plain text (escaped when drawn)
  std::string title, x_label, y_label;
  bool diverging = false;  // centre the colour scale on 0 (red < 0 < blue)
  double vmin = std::numeric_limits<double>::quiet_NaN(), vmax = std::numeric_limits<double>::quiet_NaN();
  std::vector<std::vector<std::string>> cell_text;  // optional [rows][cols] text drawn in cells
  std::vector<std::vector<std::string>> tooltips;   // optional [rows][cols] hover text (<title>)
  bool show_values = false;  // draw the number in each cell when there is no cell_text
  const char* value_format = "%.2f";
  int cell_w = 0, cell_h = 0;  // 0 = automatic
  std::string css_class = "mx-heatmap";
  std::string colorbar_label;
};
std::string heatmap_svg(const Heatmap& h);

struct Series {
  std::string name;
  std::vector<double> x, y;
  std::string color;  // "" = categorical by index
  bool dashed = false;
};
struct LineChart {
  std::vector<Series> series;
  std::string title, x_label, y_label;
  bool log_y = false;
  int width = 640, height = 360;
};
std::string line_chart_svg(const LineChart& c);

struct BarChart {
  std::vector<std::string> labels;
  std::vector<double> values;
  std::vector<std::string> tooltips;  // optional, one per bar
  std::string title, x_label, y_label;
  bool diverging_colors = true;  // blue for >= 0, red for < 0
  int width = 0, height = 320;   // width 0 = automatic
};
std::string bar_chart_svg(const BarChart& c);

// An HTML table; cells are plain text unless `html_cells` (then trusted markup).
struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  bool html_cells = false;
  std::string css_class = "mx-table";
};
std::string table_html(const Table& t);

// ---- pages --------------------------------------------------------------------------------------

// A self-contained HTML page built from parts, in order.
class Page {
 public:
  explicit Page(std::string title);
  Page& heading(const std::string& text, int level = 2);
  Page& paragraph(const std::string& text);      // plain text, escaped
  Page& html(const std::string& markup);         // trusted markup (charts, tables, custom elements)
  Page& table(const Table& t) { return html(table_html(t)); }
  // Embeds JSON readable from page scripts: JSON.parse(document.getElementById(id).textContent).
  Page& data(const std::string& id, const nlohmann::json& j);
  Page& script(const std::string& js);  // inline JS, run after the body is parsed
  Page& style(const std::string& css);  // extra CSS
  std::string render() const;
  // Writes the page atomically (a reader never sees half a page).
  void save(const std::string& path) const;

 private:
  std::string title_;
  std::vector<std::string> body_, scripts_, styles_;
};

// Writes JSON atomically, pretty-printed with 2-space indent and a final newline.
void write_json(const std::string& path, const nlohmann::json& j);
// Replaces non-finite numbers by null (JSON has no NaN/inf) in a vector of doubles.
nlohmann::json finite_or_null(const std::vector<double>& v);
nlohmann::json finite_or_null(double v);
// A float tensor (any shape) as nested JSON lists (non-finite -> null).
nlohmann::json tensor_json(const at::Tensor& t);

}  // namespace mlxterp::report
