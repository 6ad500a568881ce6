// Training logs: TensorBoard event files (TFRecord + Event protobuf, encoded by hand) and an HTML page of
// training curves (inline SVG, no scripts, no network).
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstring>
#include <ctime>

#include "mlxterp/error.hpp"
#include "mlxterp/sae_train.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

// ---- CRC32C ---------------------------------------------------------------------------------------

uint32_t crc32c(const void* data, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

// ---- protobuf helpers -----------------------------------------------------------------------------

namespace {

void put_varint(std::string& s, uint64_t v) {
  while (v >= 0x80) {
    s.push_back(char((v & 0x7F) | 0x80));
    v >>= 7;
  }
  s.push_back(char(v));
}
void put_tag(std::string& s, int field, int wire) { put_varint(s, uint64_t(field << 3 | wire)); }
void put_bytes(std::string& s, int field, const std::string& b) {
  put_tag(s, field, 2);
  put_varint(s, b.size());
  s += b;
}
template <class T>
void put_fixed(std::string& s, int field, int wire, T v) {
  put_tag(s, field, wire);
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));  // little-endian hosts only (x86, ARM)
  s.append(buf, sizeof(T));
}

std::string event(double wall_time, int64_t step) {
  std::string e;
  put_fixed<double>(e, 1, 1, wall_time);  // Event.wall_time
  put_tag(e, 2, 0);                        // Event.step
  put_varint(e, uint64_t(step));
  return e;
}

double now_seconds() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  make_dirs(dir);
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  path_ = join_path(dir, cat("events.out.tfevents.", int64_t(now_seconds()), ".", host, ".", getpid()));
  f_ = std::fopen(path_.c_str(), "ab");
  MLXTERP_CHECK(f_, path_, ": cannot write: ", std::strerror(errno));
  std::string e = event(now_seconds(), 0);
  put_bytes(e, 3, "brain.Event:2");  // Event.file_version
  record(e);
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

void TensorBoardWriter::record(const std::string& data) {
  uint64_t len = data.size();
  uint32_t len_crc = masked_crc32c(&len, 8), data_crc = masked_crc32c(data.data(), data.size());
  std::fwrite(&len, 8, 1, f_);
  std::fwrite(&len_crc, 4, 1, f_);
  std::fwrite(data.data(), 1, data.size(), f_);
  std::fwrite(&data_crc, 4, 1, f_);
}

void TensorBoardWriter::scalar(const std::string& tag, double value, int64_t step) {
  if (!std::isfinite(value)) return;
  std::string v;
  put_bytes(v, 1, tag);                     // Summary.Value.tag
  put_fixed<float>(v, 2, 5, float(value));  // Summary.Value.simple_value
  std::string summary;
  put_bytes(summary, 1, v);                 // Summary.value
  std::string e = event(now_seconds(), step);
  put_bytes(e, 5, summary);                 // Event.summary
  record(e);
}

void TensorBoardWriter::flush() {
  if (f_) std::fflush(f_);
}

// ---- HTML curves ----------------------------------------------------------------------------------

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

struct Series {
  std::string label, color;
  std::vector<std::pair<double, double>> pts;
};

std::string chart(const std::string& title, const std::vector<Series>& series) {
  const double W = 460, H = 200, L = 58, R = 12, T = 26, B = 30;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : series)
    for (auto [x, y] : s.pts) {
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  if (!std::isfinite(x0)) return "";
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + (y0 == 0 ? 1 : std::fabs(y0) * 0.1);
  auto sx = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto sy = [&](double y) { return T + (1 - (y - y0) / (y1 - y0)) * (H - T - B); };
  std::string o = cat("<svg xmlns='http://www.w3.org/2000/svg' width='", W, "' height='", H, "' role='img'>",
                      "<text x='", L, "' y='16' class='t'>", esc(title), "</text>",
                      "<rect x='", L, "' y='", T, "' width='", W - L - R, "' height='", H - T - B, "' class='f'/>");
  for (int i = 0; i <= 4; ++i) {
    double yv = y0 + (y1 - y0) * i / 4.0, py = sy(yv);
    o += cat("<line x1='", L, "' x2='", W - R, "' y1='", py, "' y2='", py, "' class='g'/>", "<text x='", L - 4, "' y='",
             py + 4, "' class='a' text-anchor='end'>", num(yv), "</text>");
  }
  o += cat("<text x='", L, "' y='", H - 10, "' class='a'>", num(x0), "</text><text x='", W - R, "' y='", H - 10,
           "' class='a' text-anchor='end'>step ", num(x1), "</text>");
  int li = 0;
  for (const auto& s : series) {
    if (s.pts.empty()) continue;
    if (s.pts.size() == 1) {
      o += cat("<circle cx='", sx(s.pts[0].first), "' cy='", sy(s.pts[0].second), "' r='3' fill='", s.color, "'/>");
    } else {
      std::string pts;
      for (auto [x, y] : s.pts) pts += cat(sx(x), ",", sy(y), " ");
      o += cat("<polyline fill='none' stroke='", s.color, "' stroke-width='1.5' points='", pts, "'/>");
    }
    o += cat("<text x='", W - R - 4, "' y='", T + 14 + 14 * li++, "' class='a' text-anchor='end' fill='", s.color, "'>",
             esc(s.label), "</text>");
  }
  return o + "</svg>";
}

}  // namespace

void write_training_curves_html(const std::string& path, const std::string& title,
                                const std::vector<nlohmann::ordered_json>& rows) {
  struct Plot {
    const char* key;
    const char* title;
  };
  const Plot plots[] = {{"loss", "loss"},           {"fvu", "FVU (fraction of variance unexplained)"},
                        {"l0", "L0 (active latents per token)"}, {"dead_frac", "dead fraction (windowed)"},
                        {"lr", "learning rate"},    {"aux_loss", "AuxK loss"},
                        {"grad_norm", "gradient norm"}, {"cosine", "cosine(x, x̂)"},
                        {"rss_mb", "resident memory (MB)"}, {"tokens_per_s", "tokens / s"}};
  std::string body;
  for (const auto& p : plots) {
    Series train{"train", "#1f77b4", {}}, val{"validation", "#d62728", {}};
    for (const auto& r : rows) {
      if (!r.contains(p.key) || !r[p.key].is_number() || !r.contains("step")) continue;
      double v = r[p.key].get<double>();
      if (!std::isfinite(v)) continue;
      bool is_val = r.value("split", "train") == "val";
      (is_val ? val : train).pts.emplace_back(r["step"].get<double>(), v);
    }
    std::string svg = chart(p.title, {train, val});
    if (!svg.empty()) body += "<div class='c'>" + svg + "</div>\n";
  }
  std::string html = "<!doctype html><html><head><meta charset='utf-8'><title>" + esc(title) +
                     "</title><style>body{font-family:sans-serif;margin:16px;background:#fff;color:#222}"
                     ".c{display:inline-block;margin:6px}.t{font-size:13px;font-weight:bold}"
                     ".a{font-size:10px;fill:#555}.g{stroke:#eee}.f{fill:#fafafa;stroke:#ccc}</style></head><body><h2>" +
                     esc(title) + "</h2>\n" + body + "</body></html>\n";
  write_file_atomic(path, html);
}

}  // namespace mlxterp
