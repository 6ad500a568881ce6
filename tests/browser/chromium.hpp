// Headless-Chromium page checks for the test suite (header-only; include from any tests/unit/*.cpp).
//
//   #include "../browser/chromium.hpp"
//   if (mlxterp::test::browser::chromium().empty()) GTEST_SKIP() << mlxterp::test::browser::kNoChromium;
//   auto r = mlxterp::test::browser::open_page(tmp.file("page.html"), tmp.path);
//   EXPECT_TRUE(r.console.empty());                 // no console messages (errors, CSP violations, ...)
//   EXPECT_NE(r.dom.find("<svg"), std::string::npos);   // the DOM after scripts ran
//   EXPECT_GT(r.ink_fraction, 0.01);                // the screenshot shows content
//
// One Chromium run per page (Debian's /usr/bin/chromium, or $MLXTERP_CHROMIUM): --headless with a fresh
// profile and every background network feature off, --dump-dom for the DOM after 2 s of virtual time,
// --screenshot at half scale, --enable-logging=stderr so console messages ("...:CONSOLE:N] \"msg\"")
// can be collected. The screenshot's pixels are measured by png_stats.py (stdlib Python).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mlxterp/util.hpp"

namespace mlxterp::test::browser {

inline const char* kNoChromium =
    "headless Chromium not found (/usr/bin/chromium; set MLXTERP_CHROMIUM, or install Debian's chromium package: "
    "scripts/setup.sh lists it)";

inline std::string chromium() {
  if (const char* env = std::getenv("MLXTERP_CHROMIUM")) return file_exists(env) ? env : "";
  return file_exists("/usr/bin/chromium") ? "/usr/bin/chromium" : "";
}

inline std::string current_dir() {
  char buf[4096];
  return ::getcwd(buf, sizeof buf) ? std::string(buf) : std::string(".");
}

inline std::string shell_quote(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

struct PageResult {
  int exit_code = -1;
  std::string dom;
  std::vector<std::string> console;  // console messages, any level
  std::string screenshot;            // PNG path
  double ink_fraction = -1;          // share of non-white pixels in the screenshot
  int colors = 0;                    // distinct colours (capped at 4096)
  int width = 0, height = 0;
};

// Opens `html_path` (a file) in headless Chromium; scratch files go to `work_dir`.
inline PageResult open_page(const std::string& html_path, const std::string& work_dir, int width = 1280, int height = 1600) {
  PageResult r;
  const std::string stem = join_path(work_dir, basename(html_path));
  const std::string dom = stem + ".dom", log = stem + ".log", png = stem + ".png", profile = stem + ".profile";
  const std::string url = "file://" + (html_path[0] == '/' ? html_path : join_path(current_dir(), html_path));
  std::string cmd = "timeout 120 " + shell_quote(chromium()) +
                    " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
                    " --disable-component-update --disable-sync --disable-default-apps --disable-extensions"
                    " --user-data-dir=" + shell_quote(profile) +
                    " --hide-scrollbars --window-size=" + std::to_string(width) + "," + std::to_string(height) +
                    " --force-device-scale-factor=0.5 --enable-logging=stderr --v=0 --virtual-time-budget=2000"
                    " --screenshot=" + shell_quote(png) + " --dump-dom " + shell_quote(url) + " >" + shell_quote(dom) +
                    " 2>" + shell_quote(log);
  int status = std::system(cmd.c_str());
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.dom = file_exists(dom) ? read_file(dom) : "";
  if (file_exists(log)) {
    for (const auto& line : split(read_file(log), '\n'))
      if (line.find(":CONSOLE") != std::string::npos) r.console.push_back(line);
  }
  if (file_exists(png)) {
    r.screenshot = png;
    std::string stats = stem + ".stats";
    std::string py = std::string(MLXTERP_TEST_SOURCE_DIR) + "/tests/browser/png_stats.py";
    if (std::system(("/usr/bin/python3 " + shell_quote(py) + " " + shell_quote(png) + " >" + shell_quote(stats) + " 2>&1").c_str()) == 0) {
      auto j = nlohmann::json::parse(read_file(stats), nullptr, false);
      if (j.is_object()) {
        r.ink_fraction = j.value("ink_fraction", -1.0);
        r.colors = j.value("colors", 0);
        r.width = j.value("width", 0);
        r.height = j.value("height", 0);
      }
    }
  }
  remove_tree(profile);
  return r;
}

}  // namespace mlxterp::test::browser
