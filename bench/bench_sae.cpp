// bench_sae — one TopK SAE training step (mlxterp::sae_kernels) against the PyTorch peer on the same device.
//
//   build/bench/bench_sae                          # GPU: the issue-9 cases, then bench/reference/sae_peer.py
//   build/bench/bench_sae --device cpu             # CPU: small cases, the libtorch reference vs PyTorch on CPU
//   build/bench/bench_sae --case llama3-8b --no-peer --json out.json
//
// Per case: ms per step and tokens/s (median of repeats after warm-up, 4 rotating input batches), peak
// device memory during the steps against weights + Adam state, the encoder GEMM alone, a one-step check
// against the reference step (GPU), and the peer's times with the ratios. The last lines are a summary
// table with the targets.
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>

#include "bench_util.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/sae_kernels.hpp"
#include "mlxterp/util.hpp"

using namespace mlxterp;
using namespace mlxterp::bench;
using namespace mlxterp::sae_kernels;
using nlohmann::json;

namespace {

struct Case {
  std::string name;
  int64_t d, f, k, n;
  // The SAE trainer's defaults on top (AuxK with k_aux = d / 2 and 10% dead latents, clipping at 1, the
  // finite-gradient gate): what `mlxterp sae train` runs. No PyTorch peer for these.
  bool trainer = false;
  // Adam moments of W_enc / W_dec in bfloat16 (stochastic rounding; AdamState::zeros_like): 18 instead of 26
  // bytes of optimizer traffic per parameter. The peer stays the float32-moment PyTorch step of the same shape.
  bool moments_bf16 = false;
};

const std::vector<Case> kGpuCases = {
    {"llama3-8b", 4096, 131072, 128, 4096},   // Llama-3-8B residual, 32x expansion
    {"llama3-8b-m16", 4096, 131072, 128, 4096, false, true},  // the same, bf16 Adam moments
    {"llama3.2-1b", 2048, 65536, 64, 4096},   // Llama-3.2-1B residual, 32x expansion
    {"llama3.2-1b-m16", 2048, 65536, 64, 4096, false, true},
    {"llama3-8b-trainer", 4096, 131072, 128, 4096, true},
};
const std::vector<Case> kCpuCases = {
    {"cpu-small", 256, 4096, 32, 512},
    {"cpu-medium", 512, 8192, 32, 512},
};

struct Options {
  at::Device device = at::kCPU;
  int warmup = 3, iters = 10, repeats = 3;
  bool peer = true, check = true;
  std::string python = "python3", peer_script;
  Selection selection = Selection::TopK;
  int cpu_threads = 0;
  int64_t aux_dense_cap = -1;  // StepConfig::aux_dense_cap (trainer case)
};

// Peer results of this invocation by shape: a case that differs from an earlier one only in our settings
// (bf16 moments) is compared with the same peer run.
std::string peer_key(const Case& c) {
  return std::to_string(c.d) + "/" + std::to_string(c.f) + "/" + std::to_string(c.k) + "/" + std::to_string(c.n) +
         (c.trainer ? "/trainer" : "");
}

json run_case(const Case& c, const Options& o, std::map<std::string, json>& peers) {
  const at::Device dev = o.device;
  const bool gpu = dev.is_cuda();
  std::printf("\n== case %s: d_in=%lld d_sae=%lld k=%lld tokens=%lld (%s)\n", c.name.c_str(), (long long)c.d,
              (long long)c.f, (long long)c.k, (long long)c.n,
              o.selection == Selection::TopK ? "TopK" : "BatchTopK");
  json r = {{"case", c.name}, {"d", c.d},       {"f", c.f},
            {"k", c.k},       {"n", c.n},       {"trainer", c.trainer}, {"moments_bf16", c.moments_bf16}};
  if (c.moments_bf16) std::printf("  Adam moments of W_enc / W_dec in bfloat16 (stochastic rounding)\n");
  StepConfig cfg;
  cfg.k = c.k;
  cfg.lr = 2e-4;
  cfg.selection = o.selection;
  cfg.compute_dtype = gpu ? at::kBFloat16 : at::kFloat;
  if (c.trainer) {
    cfg.auxk_coef = 1.0 / 32;
    cfg.k_aux = c.d / 2;
    cfg.dead_tokens = 10'000'000;
    cfg.max_grad_norm = 1.0;
    cfg.finite_grad_gate = true;
    cfg.aux_dense_cap = o.aux_dense_cap;
    std::printf("  trainer defaults: AuxK k_aux=%lld (10%% of latents dead), clip 1.0, finite-gradient gate\n",
                (long long)cfg.k_aux);
  }
  {
    empty_cache(dev);
    reset_peak_memory(dev);
    const int64_t before = allocated_memory_bytes(dev);
    Params p = Params::init(c.d, c.f, dev, 0);
    AdamState s = AdamState::zeros_like(p, c.moments_bf16 ? at::kBFloat16 : at::kFloat);
    at::Tensor since = at::zeros({c.f}, at::TensorOptions().dtype(at::kLong).device(dev));
    if (c.trainer) since.narrow(0, 0, c.f / 10).fill_(cfg.dead_tokens);
    // fp32 weights + m + v (the matrices' moments at 2 bytes with bf16 moments), and the all-fp32 size.
    const double fp32_state_bytes = double(6 * c.f * c.d + 3 * (c.f + c.d)) * 4;
    const double state_bytes = fp32_state_bytes - (c.moments_bf16 ? double(4 * c.f * c.d) * 2 : 0.0);
    std::vector<at::Tensor> xs;
    for (int i = 0; i < 4; ++i)
      xs.push_back((at::randn({c.n, c.d}, at::TensorOptions().device(dev)) * 1.5 + 0.2)
                       .to(gpu ? at::kBFloat16 : at::kFloat));
    const int64_t inputs_bytes = gpu ? allocated_memory_bytes(dev) - before - int64_t(state_bytes) : 0;
    Stepper stepper;
    int64_t t = 0;

    if (o.check && gpu) {
      // One step of each backend from the same state: the fast path computes the reference's step.
      Params p2 = p.clone();
      AdamState s2 = s.clone();
      at::Tensor since2 = since.clone();
      cfg.step = 1;
      StepStats a = stepper.step(p, s, since, xs[0], cfg);
      StepStats b = reference_step(p2, s2, since2, xs[0], cfg);
      const double loss_rel = std::abs(a.loss.item<double>() / b.loss.item<double>() - 1);
      const double agree = a.latents.eq(b.latents).to(at::kDouble).mean().item<double>();
      const double wdec_diff = (p.W_dec - p2.W_dec).abs().max().item<double>();
      std::printf("  check vs reference step: backend %s, loss %.6g vs %.6g (rel %.1e), selections agree %.4f%%, "
                  "max |W_dec diff| %.2e\n",
                  stepper.last_backend() == Backend::Cuda ? "cuda" : "reference", a.loss.item<double>(),
                  b.loss.item<double>(), loss_rel, 100 * agree, wdec_diff);
      r["check"] = {{"loss_rel", loss_rel}, {"selection_agreement", agree}, {"w_dec_max_abs_diff", wdec_diff}};
      t = 1;
    }
    if (gpu) empty_cache(dev);
    reset_peak_memory(dev);
    const double ms = time_ms(dev, o.warmup, o.iters, o.repeats, [&](int i) {
      cfg.step = ++t;
      // The seeded dead latents fire like any other at this random init; re-marked dead before each step,
      // every step pays for AuxK over 10% of the latents, as a run with that many dead latents would.
      if (c.trainer) since.narrow(0, 0, c.f / 10).fill_(cfg.dead_tokens);
      stepper.step(p, s, since, xs[size_t(i) % xs.size()], cfg);
    });
    const double peak = double(peak_memory_bytes(dev));
    const char* backend = stepper.last_backend() == Backend::Cuda ? "cuda kernels" : "libtorch reference";
    // The encoder GEMM alone ([n, d] x [d, F]), as the step runs it.
    at::Tensor xin = xs[0].to(cfg.compute_dtype), w = gpu ? stepper.W_enc_bf16() : p.W_enc;
    if (!w.defined()) w = p.W_enc.to(cfg.compute_dtype);
    const double gemm_ms = time_ms(dev, 2, std::max(3, o.iters / 2), o.repeats, [&](int) { (void)at::mm(xin, w.t()); });
    const double tflops = 2.0 * c.n * c.d * c.f / (gemm_ms * 1e-3) / 1e12;
    std::printf("  mlxterp step (%s)   %9.3f ms  %9.1fK tok/s\n", backend, ms, c.n / ms);
    std::printf("  encoder GEMM alone           %9.3f ms  (%.0f TFLOP/s)  step/GEMM = %.2fx\n", gemm_ms, tflops,
                ms / gemm_ms);
    if (gpu)
      std::printf("  peak memory during steps     %s = %.3fx weights+Adam (%s) [+ inputs %s]\n", gib(peak).c_str(),
                  (peak - inputs_bytes) / state_bytes, gib(state_bytes).c_str(), gib(double(inputs_bytes)).c_str());
    r["backend"] = backend;
    r["ms"] = ms;
    r["tokens_per_s"] = c.n / ms * 1e3;
    r["gemm_ms"] = gemm_ms;
    r["gemm_tflops"] = tflops;
    r["peak_bytes"] = peak;
    r["inputs_bytes"] = inputs_bytes;
    r["state_bytes"] = state_bytes;
    r["peak_over_state"] = gpu ? (peak - inputs_bytes) / state_bytes : NAN;
    r["peak_over_fp32_state"] = gpu ? (peak - inputs_bytes) / fp32_state_bytes : NAN;
    if (gpu && c.moments_bf16)
      std::printf("  peak memory / the all-float32 weights+Adam (%s) = %.3fx\n", gib(fp32_state_bytes).c_str(),
                  (peak - inputs_bytes) / fp32_state_bytes);
  }
  empty_cache(dev);  // the peer is another process on the same GPU

  if (o.peer) {
    std::string cmd = o.python + " " + shell_quote(o.peer_script) + " --device " + (gpu ? "cuda" : "cpu") +
                      " --d " + std::to_string(c.d) + " --f " + std::to_string(c.f) + " --k " +
                      std::to_string(c.k) + " --n " + std::to_string(c.n) + " --warmup " +
                      std::to_string(o.warmup) + " --iters " + std::to_string(std::max(3, o.iters / 2)) +
                      " --repeats " + std::to_string(o.repeats);
    if (c.trainer) cmd += " --variants dense_bf16_trainer --dead-tokens " + std::to_string(cfg.dead_tokens);
    else if (!gpu) cmd += " --variants fp32,dense_bf16";
    if (o.cpu_threads > 0) cmd += " --threads " + std::to_string(o.cpu_threads);
    json peer;
    if (auto it = peers.find(peer_key(c)); it != peers.end()) {
      peer = it->second;
      std::printf("  PyTorch peer: the run of the same shape earlier in this invocation\n");
    } else {
      peer = run_peer(cmd);
      peers[peer_key(c)] = peer;
    }
    r["peer"] = peer;
    if (c.trainer) {
      const double tr = peer_num(peer, "dense_bf16_trainer", "ms"), ms = r["ms"];
      std::printf("  vs PyTorch with the same AuxK and clipping: dense bf16 %.3f ms -> %.2fx\n", tr, tr / ms);
      r["speedup_vs_dense_bf16_trainer"] = tr / ms;
      std::fflush(stdout);
      return r;
    }
    const double bf16 = peer_num(peer, "dense_bf16", "ms"), fp32 = peer_num(peer, "fp32", "ms");
    const double embag = peer_num(peer, "embedding_bag_bf16", "ms");
    const double ms = r["ms"];
    std::printf("  vs PyTorch: dense bf16 %.3f ms -> %.2fx; fp32 %.3f ms -> %.2fx; embedding_bag bf16 %.3f ms -> %.2fx\n",
                bf16, bf16 / ms, fp32, fp32 / ms, embag, embag / ms);
    r["speedup_vs_dense_bf16"] = bf16 / ms;
    r["speedup_vs_fp32"] = fp32 / ms;
  }
  std::fflush(stdout);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_sae: the fused SAE training step against a sparsify-style PyTorch step"};
  std::string device = "auto", json_out, selection = "topk";
  std::vector<std::string> cases;
  Options o;
  int64_t tokens = 0;
  bool no_peer = false, no_check = false;
  o.peer_script = std::string(MLXTERP_BENCH_DIR) + "/reference/sae_peer.py";
  if (const char* py = std::getenv("MLXTERP_PYTHON")) o.python = py;
  app.add_option("--device", device, "cuda, cpu or auto (cuda when the kernels and a GPU are there)");
  app.add_option("--case", cases, "case name(s); default: all cases of the device");
  app.add_option("--tokens", tokens, "tokens per step (overrides the cases')");
  app.add_option("--warmup", o.warmup);
  app.add_option("--iters", o.iters, "steps per timed group");
  app.add_option("--repeats", o.repeats, "timed groups (the median is reported)");
  app.add_option("--selection", selection, "topk or batchtopk");
  app.add_option("--python", o.python, "interpreter for the PyTorch peer (env MLXTERP_PYTHON)");
  app.add_option("--peer-script", o.peer_script);
  app.add_option("--threads", o.cpu_threads, "CPU threads for both sides (0: libtorch default)");
  app.add_flag("--no-peer", no_peer, "skip the PyTorch peer");
  app.add_option("--aux-dense-cap", o.aux_dense_cap,
                 "trainer case: dead latents done as dense GEMMs (-1: from the dead count, 0: per pair only)")
      ->check(CLI::Range(int64_t(-1), int64_t(1) << 40));
  app.add_flag("--no-check", no_check, "skip the one-step comparison with the reference");
  app.add_option("--json", json_out, "write all numbers here");
  CLI11_PARSE(app, argc, argv);
  o.peer = !no_peer;
  o.check = !no_check;
  o.selection = selection == "batchtopk" ? Selection::BatchTopK : Selection::TopK;
  if (o.cpu_threads > 0) at::set_num_threads(o.cpu_threads);
  try {
    if (device == "auto") device = cuda_kernels_available() ? "cuda" : "cpu";
    o.device = parse_device(device);
    const DeviceInfo info = device_info(o.device);
    std::printf("bench_sae on %s (%d SMs, %s); CUDA kernels %s\n", info.name.c_str(), info.multiprocessors,
                gib(double(info.total_memory)).c_str(), cuda_kernels_available() ? "available" : "not built");
    const auto& all = o.device.is_cuda() ? kGpuCases : kCpuCases;
    std::vector<Case> run;
    for (const Case& c : all)
      if (cases.empty() || std::find(cases.begin(), cases.end(), c.name) != cases.end()) run.push_back(c);
    MLXTERP_CHECK(!run.empty(), "bench_sae: no case matches; the ", o.device.is_cuda() ? "GPU" : "CPU",
                   " cases are ", o.device.is_cuda() ? "llama3-8b, llama3-8b-m16, llama3.2-1b, llama3.2-1b-m16, llama3-8b-trainer"
                                                        : "cpu-small, cpu-medium");
    json results = {{"device", info.name}, {"cases", json::array()}};
    std::map<std::string, json> peers;
    for (Case c : run) {
      if (tokens > 0) c.n = tokens;
      json r;
      try {
        r = run_case(c, o, peers);
      } catch (const std::exception& e) {
        std::printf("  case %s FAILED: %s\n", c.name.c_str(), e.what());
        r = {{"case", c.name}, {"error", e.what()}};
      }
      results["cases"].push_back(r);
    }
    // Summary (the reply of a remote run shows the end of the output).
    std::printf("\n== bench_sae summary (%s) ==\n", info.name.c_str());
    std::printf("%-12s %10s %10s %9s %9s %10s %8s %10s %8s %8s\n", "case", "step ms", "tok/s", "GEMM ms", "step/GEMM",
                "torch bf16", "speedup", "torch fp32", "speedup", "mem/state");
    for (const json& r : results["cases"]) {
      if (r.contains("error")) {
        std::printf("%-12s FAILED: %s\n", r["case"].get<std::string>().c_str(), r["error"].get<std::string>().c_str());
        continue;
      }
      // The trainer case's peer is the dense bf16 step with the same AuxK and clipping.
      const double bf = peer_num(r.value("peer", json()), r.value("trainer", false) ? "dense_bf16_trainer" : "dense_bf16", "ms");
      const double fp = peer_num(r.value("peer", json()), "fp32", "ms");
      std::printf("%-12s %10.3f %9.1fK %9.3f %9.2f %10.3f %7.2fx %10.3f %7.2fx %8.3f\n",
                  r["case"].get<std::string>().c_str(), r["ms"].get<double>(), r["tokens_per_s"].get<double>() / 1e3,
                  r["gemm_ms"].get<double>(), r["ms"].get<double>() / r["gemm_ms"].get<double>(), bf,
                  bf / r["ms"].get<double>(), fp, fp / r["ms"].get<double>(), r.value("peak_over_state", NAN));
      if (r.value("trainer", false))
        std::printf("  (trainer defaults: AuxK + clipping + gate; torch bf16 = the same AuxK and clipping in PyTorch)\n");
      else if (o.device.is_cuda()) {
        char note[96] = "";
        if (r.value("moments_bf16", false))
          std::snprintf(note, sizeof note, " (bf16 moments; peak / all-float32 state %.3fx)",
                        r.value("peak_over_fp32_state", double(NAN)));
        std::printf("  targets: speedup vs dense bf16 >= 4: %s; step <= 2.5x GEMM: %s; memory <= 1.2x state: %s%s\n",
                    verdict(bf / r["ms"].get<double>() >= 4).c_str(),
                    verdict(r["ms"].get<double>() <= 2.5 * r["gemm_ms"].get<double>()).c_str(),
                    verdict(r.value("peak_over_state", 9.0) <= 1.2).c_str(), note);
      }
    }
    if (!json_out.empty()) write_file_atomic(json_out, results.dump(2));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
