// Self-contained HTML pages, tables, JSON files (report.hpp).
#include <cstdio>

#include "mlxterp/error.hpp"
#include "mlxterp/report.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::report {

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string token_html(std::string_view token, bool mark_spaces) {
  std::string shown;
  for (size_t i = 0; i < token.size(); ++i) {
    char c = token[i];
    if (c == '\n') shown += "\u23CE";
    else if (c == '\t') shown += "\u21E5";
    else if (c == '\r') shown += "\\r";
    else if (c == ' ' && mark_spaces && (i == 0 || i + 1 == token.size())) shown += "\u2423";
    else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(c));
      shown += buf;
    } else shown += c;
  }
  return html_escape(shown);
}

std::string json_for_script(const nlohmann::json& j) {
  // dump() with replacement of invalid UTF-8 so odd tokens never make the page unparseable.
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<' && i + 1 < s.size() && (s[i + 1] == '/' || s[i + 1] == '!')) {
      out += "\\u003c";
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string fmt(double v, const char* format) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string table_html(const Table& t) {
  std::string o = "<table class=\"" + html_escape(t.css_class) + "\">";
  if (!t.header.empty()) {
    o += "<thead><tr>";
    for (const auto& h : t.header) o += "<th>" + html_escape(h) + "</th>";
    o += "</tr></thead>";
  }
  o += "<tbody>";
  for (const auto& row : t.rows) {
    o += "<tr>";
    for (const auto& c : row) o += "<td>" + (t.html_cells ? c : html_escape(c)) + "</td>";
    o += "</tr>";
  }
  return o + "</tbody></table>";
}

// ---- page ---------------------------------------------------------------------------------------

static const char* kBaseCss = R"CSS(
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px;
       color: #1a1a1a; background: #fff; max-width: 1400px; }
h1 { font-size: 1.5em; margin: 0 0 .5em; } h2 { font-size: 1.2em; margin: 1.4em 0 .4em; }
h3 { font-size: 1.05em; margin: 1.2em 0 .3em; }
p { line-height: 1.45; margin: .4em 0; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.mx-table { border-collapse: collapse; font-size: 13px; margin: .5em 0; }
.mx-table th, .mx-table td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
.mx-table th { background: #f4f4f4; }
.mx-table td:first-child, .mx-table th:first-child { text-align: left; }
.mx-scroll { overflow-x: auto; max-width: 100%; }
svg text { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.mx-note { color: #555; font-size: 13px; }
.mx-meta { color: #555; font-size: 13px; margin-bottom: 1em; }
)CSS";

Page::Page(std::string title) : title_(std::move(title)) {}

Page& Page::heading(const std::string& text, int level) {
  level = std::clamp(level, 1, 4);
  body_.push_back("<h" + std::to_string(level) + ">" + html_escape(text) + "</h" + std::to_string(level) + ">");
  return *this;
}
Page& Page::paragraph(const std::string& text) {
  body_.push_back("<p>" + html_escape(text) + "</p>");
  return *this;
}
Page& Page::html(const std::string& markup) {
  body_.push_back(markup);
  return *this;
}
Page& Page::data(const std::string& id, const nlohmann::json& j) {
  body_.push_back("<script type=\"application/json\" id=\"" + html_escape(id) + "\">" + json_for_script(j) +
                  "</script>");
  return *this;
}
Page& Page::script(const std::string& js) {
  scripts_.push_back(js);
  return *this;
}
Page& Page::style(const std::string& css) {
  styles_.push_back(css);
  return *this;
}

std::string Page::render() const {
  std::string o;
  o += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
  // No network: the page may only use what is inline (data: URIs included).
  o += "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'; img-src data:\">\n";
  o += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  o += "<meta name=\"generator\" content=\"mlxterp\">\n";
  o += "<title>" + html_escape(title_) + "</title>\n<style>" + kBaseCss;
  for (const auto& s : styles_) o += s + "\n";
  o += "</style></head>\n<body>\n<h1>" + html_escape(title_) + "</h1>\n";
  for (const auto& b : body_) o += b + "\n";
  for (const auto& s : scripts_) {
    // "</script" inside a script would end it early.
    MLXTERP_ASSERT(s.find("</script") == std::string::npos);
    o += "<script>\n\"use strict\";\n" + s + "\n</script>\n";
  }
  o += "</body></html>\n";
  return o;
}

void Page::save(const std::string& path) const { write_file_atomic(path, render()); }

// ---- JSON ---------------------------------------------------------------------------------------

void write_json(const std::string& path, const nlohmann::json& j) {
  write_file_atomic(path, j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

nlohmann::json finite_or_null(const std::vector<double>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (double x : v) a.push_back(finite_or_null(x));
  return a;
}

static nlohmann::json tensor_json_rec(const double* p, const std::vector<int64_t>& shape, size_t dim, int64_t stride) {
  nlohmann::json a = nlohmann::json::array();
  if (dim + 1 == shape.size()) {
    for (int64_t i = 0; i < shape[dim]; ++i) a.push_back(finite_or_null(p[i]));
    return a;
  }
  int64_t inner = stride / std::max<int64_t>(shape[dim], 1);
  for (int64_t i = 0; i < shape[dim]; ++i) a.push_back(tensor_json_rec(p + i * inner, shape, dim + 1, inner));
  return a;
}

nlohmann::json tensor_json(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous();
  if (c.dim() == 0) return finite_or_null(c.item<double>());
  std::vector<int64_t> shape = c.sizes().vec();
  return tensor_json_rec(c.data_ptr<double>(), shape, 0, c.numel());
}

}  // namespace mlxterp::report
