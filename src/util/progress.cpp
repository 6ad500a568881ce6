#include "mlxterp/progress.hpp"

#include <unistd.h>

#include <cmath>

#include "mlxterp/error.hpp"

namespace mlxterp {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "??:??";
  long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

Progress::Progress(std::string label, int64_t total, FILE* out, bool quiet)
    : label_(std::move(label)), total_(total), out_(out), quiet_(quiet), tty_(isatty(fileno(out)) != 0) {}

Progress::~Progress() {
  if (!finished_) finish();
}

double Progress::rate() const {
  double t = timer_.seconds();
  return t > 0 ? count_ / t : 0.0;
}

void Progress::update(int64_t n, const std::vector<ProgressField>& fields) {
  count_ += n;
  if (!fields.empty()) fields_ = fields;
  double now = timer_.seconds();
  double every = tty_ ? 0.1 : plain_every_s_;
  if (now - last_draw_ >= every) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

static std::string fmt_field(const ProgressField& f) {
  char buf[64];
  if (f.precision >= 0)
    std::snprintf(buf, sizeof buf, "%.*f", f.precision, f.value);
  else
    std::snprintf(buf, sizeof buf, "%.4g", f.value);
  return f.name + "=" + buf + f.unit;
}

void Progress::draw(bool final) {
  if (quiet_) return;
  double t = timer_.seconds();
  double r = t > 0 ? count_ / t : 0.0;
  std::string rate = r >= 1 || r == 0 ? cat(std::round(r * 100) / 100, " it/s") : cat(std::round(100 / r) / 100, " s/it");
  std::string tail;
  for (const auto& f : fields_) tail += ", " + fmt_field(f);
  std::string line;
  if (total_ > 0) {
    double frac = std::min(1.0, double(count_) / double(total_));
    double eta = r > 0 ? (total_ - count_) / r : NAN;
    if (tty_) {
      const int width = 20;
      const char* blocks[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
      int full = int(frac * width);
      int part = int((frac * width - full) * 8);
      std::string bar;
      for (int i = 0; i < full; ++i) bar += "█";
      if (full < width) {
        bar += blocks[part];
        for (int i = full + 1; i < width; ++i) bar += " ";
      }
      line = cat(label_, " ", int(frac * 100), "%|", bar, "| ", count_, "/", total_, " [", format_duration(t), "<",
                 format_duration(eta), ", ", rate, tail, "]");
    } else {
      line = cat(label_, ": ", count_, "/", total_, " (", int(frac * 100), "%) elapsed ", format_duration(t), " eta ",
                 format_duration(eta), ", ", rate, tail);
    }
  } else {
    line = cat(label_, ": ", count_, " [", format_duration(t), ", ", rate, tail, "]");
  }
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

}  // namespace mlxterp
