// bench_tokenizer — encoding throughput of our tokenizers beside HF `tokenizers` (single-threaded), same text,
// same machine, same invocation; also checks that both produce the same ids.
//
//   build/bench/bench_tokenizer [--text FILE] [--tokenizer FILE ...] [--repeats N] [--peer node|python|none]
//
// Defaults: ../shared/data/text/tinyshakespeare.txt with the GPT-2 and Llama-3 tokenizer.json files. The text
// is encoded line by line (each line with its newline, as a corpus is fed to a model), without BOS; time is
// the median over --repeats full passes, after one warm-up pass, as wall time and as process CPU time (the
// fair number on a machine shared with other work: both sides run on one thread). The peer (bench/reference/tokenizer_peer.js
// through Node, or tokenizer_peer.py) does exactly the same with RAYON_NUM_THREADS=1.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"

namespace {

using json = nlohmann::json;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    size_t end = nl == std::string::npos ? text.size() : nl + 1;
    out.push_back(text.substr(start, end - start));
    start = end;
  }
  return out;
}

// FNV-1a over the id stream: a cheap fingerprint both sides print.
uint64_t fingerprint(const std::vector<int32_t>& ids, uint64_t h) {
  for (int32_t id : ids) {
    for (int b = 0; b < 4; ++b) {
      h ^= (uint32_t(id) >> (8 * b)) & 0xff;
      h *= 1099511628211ull;
    }
  }
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenizer encoding speed vs HF tokenizers (single-threaded)"};
  const std::string data = std::string(MLXTERP_BENCH_DIR) + "/../../shared/data";
  std::string text_file = data + "/text/tinyshakespeare.txt", peer = "node";
  std::vector<std::string> tokenizers = {data + "/tokenizers/gpt2/tokenizer.json",
                                         data + "/tokenizers/llama3-bpe/tokenizer.json"};
  int repeats = 5;
  app.add_option("--text", text_file, "Text file (encoded line by line)");
  app.add_option("--tokenizer", tokenizers, "tokenizer.json / .model / .gguf files");
  app.add_option("--repeats", repeats, "Timed passes (median)")->check(CLI::Range(1, 100));
  app.add_option("--peer", peer, "node (tokenizers via npm), python, or none")
      ->check(CLI::IsMember({"node", "python", "none"}));
  CLI11_PARSE(app, argc, argv);
  try {
    const std::vector<std::string> lines = lines_of(mlxterp::read_file(text_file));
    std::printf("bench_tokenizer: %s (%zu lines), %d timed passes, 1 thread\n", text_file.c_str(), lines.size(), repeats);
    std::printf("%-14s %13s %12s %7s | %13s %12s %7s | %s\n", "tokenizer", "mlxterp tok/s", "HF tok/s", "ratio",
                "per CPU-s", "HF per CPU-s", "ratio", "ids");
    for (const auto& path : tokenizers) {
      auto tok = mlxterp::load_tokenizer(path);
      mlxterp::EncodeOptions opt;
      opt.add_special = false;
      size_t n_tokens = 0;
      uint64_t fp = 1469598103934665603ull;
      for (const auto& l : lines) {  // warm-up pass, also the count and fingerprint
        auto ids = tok->encode(l, opt);
        n_tokens += ids.size();
        fp = fingerprint(ids, fp);
      }
      std::vector<double> secs, cpu;
      for (int r = 0; r < repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::clock_t c0 = std::clock();
        size_t n = 0;
        for (const auto& l : lines) n += tok->encode(l, opt).size();
        cpu.push_back(double(std::clock() - c0) / CLOCKS_PER_SEC);
        secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        MLXTERP_CHECK(n == n_tokens, "bench_tokenizer: token count changed between passes");
      }
      std::sort(secs.begin(), secs.end());
      std::sort(cpu.begin(), cpu.end());
      const double ours = double(n_tokens) / secs[secs.size() / 2];
      const double ours_cpu = double(n_tokens) / cpu[cpu.size() / 2];

      double theirs = 0, theirs_cpu = 0;
      std::string agree = "-";
      if (peer != "none") {
        const std::string script = std::string(MLXTERP_BENCH_DIR) + "/reference/tokenizer_peer." + (peer == "node" ? "js" : "py");
        const char* py = std::getenv("MLXTERP_PYTHON");
        const std::string interp = peer == "node" ? "node" : (py ? py : "python3");
        const std::string cmd = "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false " + interp + " " + mlxterp::bench::shell_quote(script) + " " +
                                mlxterp::bench::shell_quote(path) + " " + mlxterp::bench::shell_quote(text_file) + " " + std::to_string(repeats);
        FILE* p = ::popen(cmd.c_str(), "r");
        std::string out;
        char buf[4096];
        size_t got;
        while (p && (got = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, got);
        const int rc = p ? ::pclose(p) : -1;
        auto j = json::parse(out, nullptr, false);
        if (rc == 0 && j.is_object()) {
          theirs = j.value("tokens_per_s", 0.0);
          theirs_cpu = j.value("tokens_per_cpu_s", 0.0);
          const bool same = j.value("tokens", size_t(0)) == n_tokens &&
                            j.value("fingerprint", std::string()) == std::to_string(fp);
          agree = same ? "identical" : "DIFFER (" + std::to_string(j.value("tokens", size_t(0))) + " vs " +
                                           std::to_string(n_tokens) + " tokens)";
        } else {
          agree = "peer failed (" + cmd + ")";
        }
      }
      std::printf("%-14s %13.0f %12.0f %6.2fx | %13.0f %12.0f %6.2fx | %s (%zu tokens)\n",
                  mlxterp::basename(mlxterp::dirname(path)).c_str(), ours, theirs, theirs > 0 ? ours / theirs : 0.0,
                  ours_cpu, theirs_cpu, theirs_cpu > 0 ? ours_cpu / theirs_cpu : 0.0, agree.c_str(), n_tokens);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
