// The static feature dashboard: index.html (app) + data/*.js loaded on demand (format: sae_features.hpp).
#include <cmath>
#include <ctime>

#include "mlxterp/error.hpp"
#include "mlxterp/report.hpp"
#include "mlxterp/sae_features.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

const char* kCss =
#include "assets/dashboard.css.inc"
    ;
const char* kJs =
#include "assets/dashboard.js.inc"
    ;

// Rounds to 4 significant digits so the JSON stays short (the page shows 3).
double r4(double v) {
  if (v == 0 || !std::isfinite(v)) return std::isfinite(v) ? 0.0 : 0.0;
  const double scale = std::pow(10.0, 3 - std::floor(std::log10(std::fabs(v))));
  return std::round(v * scale) / scale;
}

nlohmann::json ctx_json(const FeatureContext& c) {
  nlohmann::json acts = nlohmann::json::array();
  for (float a : c.acts) acts.push_back(a > 0 ? nlohmann::json(r4(a)) : nlohmann::json(0));
  return nlohmann::json::array({r4(c.value), c.doc, c.position, c.centre, c.tokens, acts});
}

// Valid UTF-8 for JSON: bytes that are not part of a well-formed sequence (a byte-level token holding half a
// character) are shown as \xNN.
std::string utf8_display(const std::string& s) {
  std::string o;
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (ok && n > 1) {  // no overlong or surrogate forms
      const unsigned char d = static_cast<unsigned char>(s[i + 1]);
      if ((n == 2 && c < 0xC2) || (n == 3 && c == 0xE0 && d < 0xA0) || (n == 3 && c == 0xED && d >= 0xA0) ||
          (n == 4 && c == 0xF0 && d < 0x90) || (n == 4 && c > 0xF4) || (n == 4 && c == 0xF4 && d >= 0x90))
        ok = false;
    }
    if (ok) {
      o.append(s, i, n);
      i += n;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      o += buf;
      ++i;
    }
  }
  return o;
}

// A data file: a script handing its data to the page.
void write_script(const std::string& path, const std::string& call_prefix, const nlohmann::json& j, const std::string& suffix) {
  write_file_atomic(path, call_prefix + report::json_for_script(j) + suffix);
}

}  // namespace

nlohmann::json feature_json(const FeatureStats& f, int64_t quantile_groups) {
  nlohmann::json j;
  j["id"] = f.feature;
  j["count"] = f.count;
  j["density"] = f.density;
  j["max"] = r4(f.max_act);
  j["mean"] = r4(f.mean_act);
  j["hist"] = {{"range", f.hist_range}, {"counts", f.hist.empty() ? std::vector<int64_t>(32, 0) : f.hist}};
  nlohmann::json top = nlohmann::json::array();
  for (const auto& c : f.top) top.push_back(ctx_json(c));
  j["top"] = top;
  // The reservoir (a uniform sample of activating tokens, weakest first) cut into equal-count quantile groups,
  // strongest group first.
  nlohmann::json groups = nlohmann::json::array();
  const int64_t n = int64_t(f.samples.size()), G = std::max<int64_t>(1, std::min<int64_t>(quantile_groups, n));
  for (int64_t g = G - 1; g >= 0 && n > 0; --g) {
    const int64_t a = g * n / G, b = (g + 1) * n / G;
    if (b <= a) continue;
    nlohmann::json s = nlohmann::json::array();
    for (int64_t i = b - 1; i >= a; --i) s.push_back(ctx_json(f.samples[size_t(i)]));
    groups.push_back({{"label", cat("Quantile ", g + 1, "/", G, " (", 100 * g / G, "–", 100 * (g + 1) / G, "%)")},
                      {"lo", r4(f.samples[size_t(a)].value)},
                      {"hi", r4(f.samples[size_t(b - 1)].value)},
                      {"samples", s}});
  }
  j["groups"] = groups;
  nlohmann::json pos = nlohmann::json::array(), neg = nlohmann::json::array();
  for (const auto& t : f.promoted) pos.push_back({t.token, r4(t.value)});
  for (const auto& t : f.suppressed) neg.push_back({t.token, r4(t.value)});
  j["pos"] = pos;
  j["neg"] = neg;
  j["logit_hist"] = {{"lo", r4(f.logit_lo)}, {"hi", r4(f.logit_hi)}, {"counts", f.logit_hist}};
  nlohmann::json nn = nlohmann::json::array();
  for (const auto& [id, c] : f.neighbors) nn.push_back({id, r4(c)});
  j["nn"] = nn;
  return j;
}

int64_t write_feature_dashboard(const std::string& dir, const FeatureAnalysis& fa, const InterpretableModel& model,
                                const SAE& sae, const DashboardOptions& o) {
  MLXTERP_CHECK(o.features_per_file >= 1 && o.page_size >= 1, "dashboard: features_per_file and page_size must be >= 1");
  make_dirs(join_path(dir, "data"));
  int64_t written = 0;

  // Vocabulary (display strings), shared by every file.
  const int64_t V = model.model().config().d_vocab;
  nlohmann::json vocab = nlohmann::json::array();
  for (int64_t id = 0; id < V; ++id) {
    std::string s = model.has_tokenizer() && id < model.tokenizer().vocab_size() ? model.tokenizer().token_to_str(int32_t(id))
                                                                                  : "#" + std::to_string(id);
    vocab.push_back(utf8_display(s));
  }
  write_file_atomic(join_path(dir, "data/vocab.js"), "window.SAEDASH_VOCAB = " + report::json_for_script(vocab) + ";\n");
  ++written;

  // Per-feature files.
  const int64_t per = o.features_per_file;
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i0 = 0; i0 < fa.features.size(); i0 += size_t(per)) {
    const int64_t file = int64_t(i0) / per;
    nlohmann::json data = nlohmann::json::object();
    for (size_t i = i0; i < std::min(fa.features.size(), i0 + size_t(per)); ++i) {
      const FeatureStats& f = fa.features[i];
      data[std::to_string(f.feature)] = feature_json(f, 5);
      int64_t top_tok = -1;
      if (!f.top.empty() && !f.top[0].tokens.empty()) top_tok = f.top[0].tokens[size_t(f.top[0].centre)];
      rows.push_back({f.feature, f.count, f.density, r4(f.max_act), r4(f.mean_act), top_tok,
                      f.promoted.empty() ? -1 : int64_t(f.promoted[0].token), file});
    }
    char name[32];
    std::snprintf(name, sizeof name, "data/f_%05lld.js", (long long)file);
    write_script(join_path(dir, name), cat("SAEDASH_FILE(", file, ", "), data, ");\n");
    ++written;
  }

  std::string title = o.title;
  if (title.empty()) title = cat(sae.describe(), " at ", fa.site);
  char when[64];
  std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M", std::localtime(&now));
  nlohmann::json meta = {{"title", title},
                         {"sae", o.sae_path},
                         {"model", o.model_path.empty() ? model.source() : o.model_path},
                         {"site", fa.site},
                         {"sae_description", sae.describe()},
                         {"d_sae", sae.d_sae},
                         {"data", fa.data_path},
                         {"tokens", fa.tokens},
                         {"sequences", fa.sequences},
                         {"documents", fa.documents},
                         {"context_size", fa.context_size},
                         {"n_features", int64_t(fa.features.size())},
                         {"has_logits", fa.has_logits},
                         {"features_per_file", per},
                         {"page_size", o.page_size},
                         {"created", when}};
  nlohmann::json index = {{"meta", meta},
                          {"fields", {"id", "count", "density", "max", "mean", "top_token", "top_logit", "file"}},
                          {"rows", rows}};
  write_script(join_path(dir, "data/index.js"), "window.SAEDASH_INDEX = ", index, ";\n");
  ++written;

  std::string html;
  html += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
  // Nothing leaves the machine: only inline code and the data scripts beside the page.
  html += "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline' file: "
          "'self'; style-src 'unsafe-inline'; img-src data:\">\n";
  html += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  html += "<title>" + report::html_escape(title) + "</title>\n<style>" + std::string(kCss) + "</style>\n</head><body>\n";
  html += "<header><h1>" + report::html_escape(title) + "</h1><div class=\"meta\">" +
          report::html_escape(cat(fa.features.size(), " features · ", fa.tokens, " tokens of ", basename(fa.data_path), " (",
                                  fa.documents, " documents) · model ", basename(meta["model"].get<std::string>()), " · ",
                                  when)) +
          "</div></header>\n<main id=\"app\"><noscript>This dashboard needs JavaScript.</noscript></main>\n";
  html += "<script src=\"data/index.js\"></script>\n<script src=\"data/vocab.js\"></script>\n";
  html += "<script>" + std::string(kJs) + "</script>\n</body></html>\n";
  write_file_atomic(join_path(dir, "index.html"), html);
  ++written;
  return written;
}

}  // namespace mlxterp
