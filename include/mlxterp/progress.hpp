// mlxterp/progress.hpp — a progress bar for long work (SAE training, caching, tuned lens, dashboards).
//
//   mlxterp::Progress bar("Training SAE", total_steps);
//   for (...) { ...; bar.update(1, {{"loss", loss}, {"l0", l0}, {"dead", dead_pct, "%"}}); }
//   bar.finish();
//
// On a terminal it redraws one line:  Training SAE  42%|████▏     | 420/1000 [00:10<00:14, 41.3 it/s, loss=0.123, l0=32.0, dead=12.5%]
// When stderr is not a terminal (CI, a log file) it prints a plain line every `plain_every_s`
// seconds instead, plus one at the end, so logs stay readable.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "mlxterp/util.hpp"

namespace mlxterp {

struct ProgressField {
  std::string name;
  double value;
  std::string unit;  // appended verbatim ("%", " MB", ...)
  int precision = -1;  // -1: 4 significant digits
};

class Progress {
 public:
  // total <= 0: unknown total (no percentage / ETA).
  Progress(std::string label, int64_t total, FILE* out = stderr, bool quiet = false);
  ~Progress();
  void update(int64_t n = 1, const std::vector<ProgressField>& fields = {});
  void set_total(int64_t total) { total_ = total; }
  int64_t count() const { return count_; }
  double rate() const;  // items per second since start
  void finish();
  // Forces the plain (non-terminal) mode, e.g. for tests.
  void set_plain(bool plain, double every_s = 10.0) { tty_ = !plain; plain_every_s_ = every_s; }

 private:
  void draw(bool final);
  std::string label_;
  int64_t total_, count_ = 0;
  FILE* out_;
  bool quiet_, tty_, finished_ = false;
  double plain_every_s_ = 10.0, last_draw_ = -1e9;
  Timer timer_;
  std::vector<ProgressField> fields_;
};

// "01:02:03" or "02:03"
std::string format_duration(double seconds);

}  // namespace mlxterp
