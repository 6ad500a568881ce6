// Inline SVG charts: heatmap, line chart, bar chart; colour maps (report.hpp).
#include <cstdio>

#include "mlxterp/error.hpp"
#include "mlxterp/report.hpp"

namespace mlxterp::report {

// ---- colours ------------------------------------------------------------------------------------

std::string Color::css() const {
  return "rgb(" + std::to_string(r) + "," + std::to_string(g) + "," + std::to_string(b) + ")";
}

Color Color::text_on() const {
  double lum = 0.299 * r + 0.587 * g + 0.114 * b;
  return lum > 140 ? Color{17, 17, 17} : Color{255, 255, 255};
}

static Color lerp(Color a, Color b, double t) {
  t = std::clamp(t, 0.0, 1.0);
  return {int(std::lround(a.r + (b.r - a.r) * t)), int(std::lround(a.g + (b.g - a.g) * t)),
          int(std::lround(a.b + (b.b - a.b) * t))};
}

Color sequential(double t) {
  if (!std::isfinite(t)) return {238, 238, 238};
  // white -> light blue -> dark blue
  return t < 0.5 ? lerp({255, 255, 255}, {107, 174, 214}, t * 2) : lerp({107, 174, 214}, {8, 48, 107}, t * 2 - 1);
}

Color diverging(double t) {
  if (!std::isfinite(t)) return {238, 238, 238};
  t = std::clamp(t, -1.0, 1.0);
  return t < 0 ? lerp({255, 255, 255}, {178, 24, 43}, -t) : lerp({255, 255, 255}, {33, 102, 172}, t);
}

Color categorical(int i) {
  static const Color k[10] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}, {148, 103, 189},
                              {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
  return k[((i % 10) + 10) % 10];
}

// ---- matrix -------------------------------------------------------------------------------------

Matrix Matrix::from(const at::Tensor& t0) {
  at::Tensor t = t0.detach().to(at::kCPU, at::kDouble).contiguous();
  MLXTERP_CHECK(t.dim() == 1 || t.dim() == 2, "report::Matrix: expected a 1-D or 2-D tensor, got shape ",
                t.sizes());
  Matrix m;
  m.rows = t.dim() == 2 ? t.size(0) : 1;
  m.cols = t.dim() == 2 ? t.size(1) : t.size(0);
  m.data.assign(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  return m;
}

Matrix Matrix::from(const std::vector<std::vector<double>>& rows) {
  Matrix m;
  m.rows = int64_t(rows.size());
  m.cols = rows.empty() ? 0 : int64_t(rows[0].size());
  for (const auto& r : rows) {
    MLXTERP_CHECK(int64_t(r.size()) == m.cols, "report::Matrix: ragged rows; expected ", m.cols, " columns, got ",
                  r.size());
    m.data.insert(m.data.end(), r.begin(), r.end());
  }
  return m;
}

double Matrix::min() const {
  double v = std::numeric_limits<double>::quiet_NaN();
  for (double x : data)
    if (std::isfinite(x) && !(x >= v)) v = x;
  return v;
}
double Matrix::max() const {
  double v = std::numeric_limits<double>::quiet_NaN();
  for (double x : data)
    if (std::isfinite(x) && !(x <= v)) v = x;
  return v;
}

// ---- helpers ------------------------------------------------------------------------------------

static std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

static std::string text_el(double x, double y, const std::string& s, const std::string& attrs = "") {
  return "<text x=\"" + num(x) + "\" y=\"" + num(y) + "\" " + attrs + ">" + html_escape(s) + "</text>";
}

static std::string shorten(const std::string& s, size_t n) {
  // Cut on UTF-8 boundaries.
  if (s.size() <= n) return s;
  size_t cut = n;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return s.substr(0, cut) + "\u2026";
}

// Token-like labels: make leading/trailing spaces and newlines visible.
static std::string visible(const std::string& s) {
  std::string o;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '\n') o += "\u23CE";
    else if (c == ' ' && (i == 0 || i + 1 == s.size())) o += "\u2423";
    else if (static_cast<unsigned char>(c) < 0x20) o += "?";
    else o += c;
  }
  return o;
}

// Nice tick values for [lo, hi].
static std::vector<double> ticks(double lo, double hi, int n = 5) {
  std::vector<double> out;
  if (!(hi > lo)) {
    out.push_back(lo);
    return out;
  }
  double span = hi - lo, raw = span / n, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push_back(std::abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

// ---- heatmap ------------------------------------------------------------------------------------

std::string heatmap_svg(const Heatmap& h) {
  const Matrix& m = h.values;
  MLXTERP_CHECK(m.rows > 0 && m.cols > 0, "report::heatmap_svg: empty matrix");
  MLXTERP_CHECK(h.row_labels.empty() || int64_t(h.row_labels.size()) == m.rows, "report::heatmap_svg: ",
                h.row_labels.size(), " row labels for ", m.rows, " rows");
  MLXTERP_CHECK(h.col_labels.empty() || int64_t(h.col_labels.size()) == m.cols, "report::heatmap_svg: ",
                h.col_labels.size(), " column labels for ", m.cols, " columns");
  double lo = std::isnan(h.vmin) ? m.min() : h.vmin, hi = std::isnan(h.vmax) ? m.max() : h.vmax;
  if (h.diverging) {
    double a = std::max(std::abs(std::isnan(lo) ? 0 : lo), std::abs(std::isnan(hi) ? 0 : hi));
    if (!(a > 0)) a = 1;
    lo = -a;
    hi = a;
  }
  if (std::isnan(lo)) lo = 0;
  if (std::isnan(hi) || !(hi > lo)) hi = lo + 1;
  auto color_of = [&](double v) {
    if (!std::isfinite(v)) return Color{238, 238, 238};
    return h.diverging ? diverging(v / hi) : sequential((v - lo) / (hi - lo));
  };
  const bool has_text = !h.cell_text.empty();
  size_t max_cell_chars = 0;
  if (has_text)
    for (const auto& r : h.cell_text)
      for (const auto& c : r) max_cell_chars = std::max(max_cell_chars, std::min<size_t>(c.size(), 10));
  int cw = h.cell_w ? h.cell_w : (has_text ? std::max(44, int(max_cell_chars) * 8 + 8) : (h.show_values ? 44 : 28));
  int ch = h.cell_h ? h.cell_h : (has_text || h.show_values ? 24 : 22);
  size_t rl = 0, cl = 0;
  for (const auto& s : h.row_labels) rl = std::max(rl, std::min<size_t>(s.size(), 18));
  for (const auto& s : h.col_labels) cl = std::max(cl, std::min<size_t>(s.size(), 14));
  const double left = 12 + rl * 7.5 + (h.y_label.empty() ? 0 : 18), top = (h.title.empty() ? 8 : 30);
  const double col_label_h = h.col_labels.empty() ? 4 : 10 + cl * 6.5;
  const double grid_w = cw * double(m.cols), grid_h = ch * double(m.rows);
  const double bar_x = left + grid_w + 16, width = bar_x + 90, height = top + grid_h + col_label_h + (h.x_label.empty() ? 8 : 26);
  std::string o;
  o += "<div class=\"mx-scroll\"><svg class=\"" + html_escape(h.css_class) + "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
       num(width) + "\" height=\"" + num(height) + "\" viewBox=\"0 0 " + num(width) + " " + num(height) + "\">";
  if (!h.title.empty()) o += text_el(left, 20, h.title, "font-size=\"14\" font-weight=\"bold\"");
  for (int64_t r = 0; r < m.rows; ++r) {
    if (!h.row_labels.empty())
      o += text_el(left - 6, top + ch * (r + 0.5) + 4, shorten(visible(h.row_labels[r]), 18),
                   "font-size=\"11\" text-anchor=\"end\"");
    for (int64_t c = 0; c < m.cols; ++c) {
      double v = m.at(r, c);
      Color col = color_of(v);
      double x = left + cw * double(c), y = top + ch * double(r);
      o += "<g><rect x=\"" + num(x) + "\" y=\"" + num(y) + "\" width=\"" + std::to_string(cw) + "\" height=\"" +
           std::to_string(ch) + "\" fill=\"" + col.css() + "\" stroke=\"#fff\" stroke-width=\"0.5\"/>";
      std::string label;
      if (has_text && r < int64_t(h.cell_text.size()) && c < int64_t(h.cell_text[r].size()))
        label = shorten(visible(h.cell_text[r][c]), 10);
      else if (h.show_values && std::isfinite(v))
        label = fmt(v, h.value_format);
      if (!label.empty())
        o += text_el(x + cw / 2.0, y + ch / 2.0 + 4, label,
                     "font-size=\"10\" text-anchor=\"middle\" fill=\"" + col.text_on().css() + "\"");
      std::string tip;
      if (!h.tooltips.empty() && r < int64_t(h.tooltips.size()) && c < int64_t(h.tooltips[r].size()))
        tip = h.tooltips[r][c];
      else
        tip = (h.row_labels.empty() ? "" : h.row_labels[r] + " / ") + (h.col_labels.empty() ? "" : h.col_labels[c] + ": ") +
              fmt(v, "%.4g");
      o += "<title>" + html_escape(tip) + "</title></g>";
    }
  }
  for (int64_t c = 0; c < int64_t(h.col_labels.size()); ++c) {
    double x = left + cw * (c + 0.5), y = top + grid_h + 8;
    o += "<text font-size=\"11\" text-anchor=\"end\" transform=\"translate(" + num(x + 3) + "," + num(y) +
         ") rotate(-60)\">" + html_escape(shorten(visible(h.col_labels[c]), 14)) + "</text>";
  }
  if (!h.x_label.empty()) o += text_el(left + grid_w / 2, height - 6, h.x_label, "font-size=\"12\" text-anchor=\"middle\"");
  if (!h.y_label.empty())
    o += "<text font-size=\"12\" text-anchor=\"middle\" transform=\"translate(12," + num(top + grid_h / 2) +
         ") rotate(-90)\">" + html_escape(h.y_label) + "</text>";
  // Colour bar.
  const int steps = 24;
  double bar_h = std::max(60.0, std::min(grid_h, 200.0));
  for (int i = 0; i < steps; ++i) {
    double v = hi - (hi - lo) * (i + 0.5) / steps;
    o += "<rect x=\"" + num(bar_x) + "\" y=\"" + num(top + bar_h * i / steps) + "\" width=\"14\" height=\"" +
         num(bar_h / steps + 0.5) + "\" fill=\"" + color_of(v).css() + "\"/>";
  }
  o += "<rect x=\"" + num(bar_x) + "\" y=\"" + num(top) + "\" width=\"14\" height=\"" + num(bar_h) +
       "\" fill=\"none\" stroke=\"#999\" stroke-width=\"0.5\"/>";
  o += text_el(bar_x + 18, top + 9, fmt(hi, "%.3g"), "font-size=\"10\"");
  o += text_el(bar_x + 18, top + bar_h, fmt(lo, "%.3g"), "font-size=\"10\"");
  if (!h.colorbar_label.empty()) o += text_el(bar_x, top + bar_h + 14, h.colorbar_label, "font-size=\"10\"");
  o += "</svg></div>";
  return o;
}

// ---- line chart ---------------------------------------------------------------------------------

std::string line_chart_svg(const LineChart& c) {
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  for (const auto& s : c.series) {
    MLXTERP_CHECK(s.x.size() == s.y.size(), "report::line_chart_svg: series '", s.name, "' has ", s.x.size(),
                  " x values and ", s.y.size(), " y values");
    for (size_t i = 0; i < s.x.size(); ++i) {
      double y = c.log_y ? std::log10(s.y[i]) : s.y[i];
      if (!std::isfinite(s.x[i]) || !std::isfinite(y)) continue;
      xlo = std::min(xlo, s.x[i]);
      xhi = std::max(xhi, s.x[i]);
      ylo = std::min(ylo, y);
      yhi = std::max(yhi, y);
    }
  }
  if (!std::isfinite(xlo)) xlo = 0, xhi = 1, ylo = 0, yhi = 1;
  if (!(xhi > xlo)) xhi = xlo + 1;
  if (!(yhi > ylo)) yhi = ylo + 1, ylo -= 1;
  double pad = (yhi - ylo) * 0.05;
  ylo -= pad;
  yhi += pad;
  const double L = 64, R = 150, T = c.title.empty() ? 12 : 32, B = 44;
  const double W = c.width, H = c.height, pw = W - L - R, ph = H - T - B;
  auto X = [&](double x) { return L + (x - xlo) / (xhi - xlo) * pw; };
  auto Y = [&](double y) { return T + (1 - (y - ylo) / (yhi - ylo)) * ph; };
  std::string o = "<div class=\"mx-scroll\"><svg class=\"mx-line\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
                  num(W) + "\" height=\"" + num(H) + "\" viewBox=\"0 0 " + num(W) + " " + num(H) + "\">";
  if (!c.title.empty()) o += text_el(L, 20, c.title, "font-size=\"14\" font-weight=\"bold\"");
  o += "<rect x=\"" + num(L) + "\" y=\"" + num(T) + "\" width=\"" + num(pw) + "\" height=\"" + num(ph) +
       "\" fill=\"#fafafa\" stroke=\"#bbb\"/>";
  for (double t : ticks(ylo, yhi)) {
    o += "<line x1=\"" + num(L) + "\" x2=\"" + num(L + pw) + "\" y1=\"" + num(Y(t)) + "\" y2=\"" + num(Y(t)) +
         "\" stroke=\"#e4e4e4\"/>";
    o += text_el(L - 4, Y(t) + 4, c.log_y ? fmt(std::pow(10.0, t), "%.3g") : fmt(t, "%.4g"),
                 "font-size=\"10\" text-anchor=\"end\"");
  }
  for (double t : ticks(xlo, xhi, 6))
    o += text_el(X(t), T + ph + 14, fmt(t, "%.4g"), "font-size=\"10\" text-anchor=\"middle\"");
  if (!c.x_label.empty()) o += text_el(L + pw / 2, H - 8, c.x_label, "font-size=\"12\" text-anchor=\"middle\"");
  if (!c.y_label.empty())
    o += "<text font-size=\"12\" text-anchor=\"middle\" transform=\"translate(14," + num(T + ph / 2) +
         ") rotate(-90)\">" + html_escape(c.y_label) + "</text>";
  for (size_t si = 0; si < c.series.size(); ++si) {
    const Series& s = c.series[si];
    std::string color = s.color.empty() ? categorical(int(si)).css() : s.color;
    std::string pts;
    for (size_t i = 0; i < s.x.size(); ++i) {
      double y = c.log_y ? std::log10(s.y[i]) : s.y[i];
      if (!std::isfinite(s.x[i]) || !std::isfinite(y)) continue;
      pts += num(X(s.x[i])) + "," + num(Y(y)) + " ";
    }
    o += "<polyline fill=\"none\" stroke=\"" + color + "\" stroke-width=\"1.8\"" +
         (s.dashed ? std::string(" stroke-dasharray=\"5,3\"") : std::string()) + " points=\"" + pts + "\"><title>" +
         html_escape(s.name) + "</title></polyline>";
    if (s.x.size() <= 64)
      for (size_t i = 0; i < s.x.size(); ++i) {
        double y = c.log_y ? std::log10(s.y[i]) : s.y[i];
        if (!std::isfinite(s.x[i]) || !std::isfinite(y)) continue;
        o += "<circle cx=\"" + num(X(s.x[i])) + "\" cy=\"" + num(Y(y)) + "\" r=\"2.5\" fill=\"" + color + "\"><title>" +
             html_escape(s.name + ": (" + fmt(s.x[i], "%.4g") + ", " + fmt(s.y[i], "%.4g") + ")") + "</title></circle>";
      }
    double ly = T + 12 + 16 * double(si);
    o += "<line x1=\"" + num(L + pw + 10) + "\" x2=\"" + num(L + pw + 28) + "\" y1=\"" + num(ly - 4) + "\" y2=\"" +
         num(ly - 4) + "\" stroke=\"" + color + "\" stroke-width=\"2\"" +
         (s.dashed ? std::string(" stroke-dasharray=\"5,3\"") : std::string()) + "/>";
    o += text_el(L + pw + 32, ly, shorten(s.name, 16), "font-size=\"11\"");
  }
  return o + "</svg></div>";
}

// ---- bar chart ----------------------------------------------------------------------------------

std::string bar_chart_svg(const BarChart& c) {
  MLXTERP_CHECK(c.labels.size() == c.values.size(), "report::bar_chart_svg: ", c.labels.size(), " labels for ",
                c.values.size(), " values");
  MLXTERP_CHECK(c.tooltips.empty() || c.tooltips.size() == c.values.size(), "report::bar_chart_svg: ",
                c.tooltips.size(), " tooltips for ", c.values.size(), " values");
  double lo = 0, hi = 0;
  for (double v : c.values)
    if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(hi > lo)) hi = lo + 1;
  double pad = (hi - lo) * 0.05;
  if (lo < 0) lo -= pad;
  hi += pad;
  size_t ll = 0;
  for (const auto& s : c.labels) ll = std::max(ll, std::min<size_t>(s.size(), 14));
  const double bw = std::max(8.0, std::min(36.0, 900.0 / std::max<size_t>(c.values.size(), 1)));
  const double L = 64, T = c.title.empty() ? 12 : 32, B = 16 + ll * 6.5 + (c.x_label.empty() ? 0 : 16);
  const double pw = bw * double(c.values.size()), W = c.width ? c.width : L + pw + 20, H = c.height, ph = H - T - B;
  auto Y = [&](double y) { return T + (1 - (y - lo) / (hi - lo)) * ph; };
  std::string o = "<div class=\"mx-scroll\"><svg class=\"mx-bar\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
                  num(W) + "\" height=\"" + num(H) + "\" viewBox=\"0 0 " + num(W) + " " + num(H) + "\">";
  if (!c.title.empty()) o += text_el(L, 20, c.title, "font-size=\"14\" font-weight=\"bold\"");
  for (double t : ticks(lo, hi)) {
    o += "<line x1=\"" + num(L) + "\" x2=\"" + num(L + pw) + "\" y1=\"" + num(Y(t)) + "\" y2=\"" + num(Y(t)) +
         "\" stroke=\"#e4e4e4\"/>";
    o += text_el(L - 4, Y(t) + 4, fmt(t, "%.4g"), "font-size=\"10\" text-anchor=\"end\"");
  }
  for (size_t i = 0; i < c.values.size(); ++i) {
    double v = std::isfinite(c.values[i]) ? c.values[i] : 0;
    double y0 = Y(0), y1 = Y(v);
    Color col = c.diverging_colors ? (v >= 0 ? Color{33, 102, 172} : Color{178, 24, 43}) : categorical(0);
    std::string tip = c.tooltips.empty() ? c.labels[i] + ": " + fmt(c.values[i], "%.4g") : c.tooltips[i];
    o += "<rect x=\"" + num(L + bw * double(i) + 1) + "\" y=\"" + num(std::min(y0, y1)) + "\" width=\"" + num(bw - 2) +
         "\" height=\"" + num(std::max(std::abs(y1 - y0), 0.5)) + "\" fill=\"" + col.css() + "\" fill-opacity=\"0.85\"><title>" +
         html_escape(tip) + "</title></rect>";
    double x = L + bw * (double(i) + 0.5);
    o += "<text font-size=\"10\" text-anchor=\"end\" transform=\"translate(" + num(x + 3) + "," + num(T + ph + 8) +
         ") rotate(-60)\">" + html_escape(shorten(visible(c.labels[i]), 14)) + "</text>";
  }
  o += "<line x1=\"" + num(L) + "\" x2=\"" + num(L + pw) + "\" y1=\"" + num(Y(0)) + "\" y2=\"" + num(Y(0)) +
       "\" stroke=\"#333\"/>";
  if (!c.x_label.empty()) o += text_el(L + pw / 2, H - 4, c.x_label, "font-size=\"12\" text-anchor=\"middle\"");
  if (!c.y_label.empty())
    o += "<text font-size=\"12\" text-anchor=\"middle\" transform=\"translate(14," + num(T + ph / 2) +
         ") rotate(-90)\">" + html_escape(c.y_label) + "</text>";
  return o + "</svg></div>";
}

}  // namespace mlxterp::report
