// Shared by bench_sae and bench_pipeline: timing, running the PyTorch peers, formatting.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mlxterp/sae_kernels.hpp"

namespace mlxterp::bench {

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median over `repeats` of the mean time (ms) of `iters` calls; the device is synchronised around each
// group only (asynchronous work inside a group overlaps as it would in training). fn(i) gets a running index.
inline double time_ms(at::Device dev, int warmup, int iters, int repeats, const std::function<void(int)>& fn) {
  int i = 0;
  for (int w = 0; w < warmup; ++w) fn(i++);
  sae_kernels::synchronize(dev);
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    sae_kernels::synchronize(dev);
    const auto t0 = std::chrono::steady_clock::now();
    for (int it = 0; it < iters; ++it) fn(i++);
    sae_kernels::synchronize(dev);
    const auto t1 = std::chrono::steady_clock::now();
    times.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / iters);
  }
  return median(times);
}

inline std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / double(1 << 30));
  return buf;
}

inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs a PyTorch peer script, echoing its output; returns the JSON of its `PEER_JSON {...}` line, or an
// object {"error": ...} when it failed.
inline nlohmann::json run_peer(const std::string& command) {
  std::printf("  $ %s\n", command.c_str());
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return {{"error", "popen failed"}};
  nlohmann::json result = {{"error", "no PEER_JSON line in the peer's output"}};
  char line[1 << 16];
  while (std::fgets(line, sizeof line, p)) {
    std::string s(line);
    if (s.rfind("PEER_JSON ", 0) == 0) {
      try {
        result = nlohmann::json::parse(s.substr(10));
      } catch (const std::exception& e) {
        result = {{"error", std::string("bad PEER_JSON: ") + e.what()}};
      }
    } else {
      std::printf("    %s", s.c_str());
      if (s.empty() || s.back() != '\n') std::printf("\n");
    }
  }
  const int status = pclose(p);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  (peer finished in %.1f s, exit status %d)\n", secs, status);
  if (status != 0 && !result.contains("error") && result.empty()) result = {{"error", "peer exited with an error"}};
  return result;
}

// peer[key][field] as a number, or NaN.
inline double peer_num(const nlohmann::json& peer, const std::string& key, const std::string& field) {
  if (!peer.is_object() || !peer.contains(key)) return NAN;
  const auto& v = peer[key];
  if (v.is_number()) return v.get<double>();
  if (v.is_object() && v.contains(field) && v[field].is_number()) return v[field].get<double>();
  return NAN;
}

inline std::string verdict(bool ok) { return ok ? "ok" : "MISSED"; }

}  // namespace mlxterp::bench
