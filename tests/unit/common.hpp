// Shared helpers for the test suite.
#pragma once

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::test {

// ../shared/data (CI has it; elsewhere the tests that need it skip, saying why).
inline std::string data_dir() {
  const char* env = std::getenv("MLXTERP_DATA_DIR");
  return env ? env : MLXTERP_TEST_DATA_DIR;
}
inline std::string data_path(const std::string& rel) { return join_path(data_dir(), rel); }
inline std::string golden_path(const std::string& rel) { return join_path(MLXTERP_TEST_GOLDEN_DIR, rel); }
inline std::string cli_path() { return MLXTERP_TEST_CLI; }

// Device under test: MLXTERP_TEST_DEVICE=cuda runs the device-aware tests on the GPU.
inline at::Device test_device() {
  const char* env = std::getenv("MLXTERP_TEST_DEVICE");
  return env ? parse_device(env) : at::Device(at::kCPU);
}

#define MLXTERP_REQUIRE_DATA(rel)                                                                       \
  do {                                                                                                  \
    if (!::mlxterp::file_exists(::mlxterp::test::data_path(rel)))                                       \
      GTEST_SKIP() << "shared data not found: " << ::mlxterp::test::data_path(rel)                      \
                   << " (these tests read ../shared/data; set MLXTERP_DATA_DIR to run them)";           \
  } while (0)

// The message of the mlxterp::Error that f() throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A scratch directory removed at the end of the test.
struct TempDir {
  std::string path;
  TempDir();
  ~TempDir();
  std::string file(const std::string& name) const { return join_path(path, name); }
};

// Runs the mlxterp CLI with `args` (a shell-quoted string); captures stdout, stderr and the exit code.
struct CliResult {
  int code = -1;
  std::string out, err;
};
CliResult run_cli(const std::string& args, const std::string& stdin_text = "");

// Max |a - b| over all elements (as float64).
inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble).cpu() - b.to(at::kDouble).cpu()).abs().max().item<double>();
}

// JSON nested list -> float64 tensor.
at::Tensor json_to_tensor(const nlohmann::json& j);

}  // namespace mlxterp::test
