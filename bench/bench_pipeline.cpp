// bench_pipeline — streaming SAE training end to end: forward to the hooked layer (bf16, early exit),
// harvest, device-side shuffle buffer, fused SAE step(s); against the same pipeline in PyTorch + HF
// transformers (bench/reference/pipeline_peer.py) on the same GPU.
//
//   build/bench/bench_pipeline                    # GPU: Llama-3-8B-shaped random bf16 model, layer-16 residual
//   build/bench/bench_pipeline --device cpu       # CPU: a tiny Llama, the same code paths, PyTorch on CPU
//
// Reports tokens/s for: the forward alone (to layer 16 / the whole model), the pipeline stopping at layer
// 16, the pipeline running the whole model (what the original mlxterp's trace does), and two SAEs (k=128,
// k=32) trained from one forward pass. The peer reports the same; the summary prints the ratios.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "bench_util.hpp"
#include "cuda/forward_ops.hpp"
#include "mlxterp/config.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/model.hpp"
#include "mlxterp/sae_kernels.hpp"
#include "mlxterp/shuffle_buffer.hpp"
#include "mlxterp/util.hpp"

using namespace mlxterp;
using namespace mlxterp::bench;
using namespace mlxterp::sae_kernels;
using nlohmann::json;

namespace {

struct PipeCase {
  std::string name;
  int64_t d, layers, heads, kv_heads, d_mlp, vocab;
  int64_t batch, seq, stop_layer;  // stop_layer: hook the residual stream entering this block (HF hidden_states[i])
  int64_t f, k, k2, sae_batch, buffer_tokens;
};

const PipeCase kGpuCase = {"llama3-8b", 4096, 32, 32, 8, 14336, 128256, 32, 256, 16, 131072, 128, 32, 4096, 32768};
const PipeCase kCpuCase = {"tiny", 256, 4, 4, 2, 688, 4096, 4, 64, 2, 2048, 16, 8, 256, 1024};

std::unique_ptr<Model> random_llama(const PipeCase& c, at::Device dev, at::ScalarType dtype) {
  json j = {{"model_type", "llama"},
            {"hidden_size", c.d},
            {"intermediate_size", c.d_mlp},
            {"num_hidden_layers", c.layers},
            {"num_attention_heads", c.heads},
            {"num_key_value_heads", c.kv_heads},
            {"head_dim", c.d / c.heads},
            {"vocab_size", c.vocab},
            {"max_position_embeddings", 8192},
            {"rms_norm_eps", 1e-5},
            {"rope_theta", 500000.0},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", false}};
  ModelConfig cfg = parse_hf_config(j, "bench_pipeline");
  auto o = at::TensorOptions().dtype(dtype).device(dev);
  auto mat = [&](int64_t r, int64_t cols) { return at::randn({r, cols}, o).mul_(0.02); };  // HF's init
  const int64_t dh = c.d / c.heads;
  TensorMap w;
  w["model.embed_tokens.weight"] = mat(c.vocab, c.d);
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    w[p + "input_layernorm.weight"] = at::ones({c.d}, o);
    w[p + "post_attention_layernorm.weight"] = at::ones({c.d}, o);
    w[p + "self_attn.q_proj.weight"] = mat(c.heads * dh, c.d);
    w[p + "self_attn.k_proj.weight"] = mat(c.kv_heads * dh, c.d);
    w[p + "self_attn.v_proj.weight"] = mat(c.kv_heads * dh, c.d);
    w[p + "self_attn.o_proj.weight"] = mat(c.d, c.heads * dh);
    w[p + "mlp.gate_proj.weight"] = mat(c.d_mlp, c.d);
    w[p + "mlp.up_proj.weight"] = mat(c.d_mlp, c.d);
    w[p + "mlp.down_proj.weight"] = mat(c.d, c.d_mlp);
  }
  w["model.norm.weight"] = at::ones({c.d}, o);
  w["lm_head.weight"] = mat(c.vocab, c.d);
  return create_model(cfg, std::move(w));
}

struct Sae {
  Params p;
  AdamState s;
  at::Tensor since;
  Stepper stepper;
  StepConfig cfg;
  int64_t t = 0;
  void step(const at::Tensor& x) {
    cfg.step = ++t;
    stepper.step(p, s, since, x, cfg);
  }
};

std::unique_ptr<Sae> make_sae(const PipeCase& c, int64_t k, at::Device dev, uint64_t seed) {
  auto sae = std::make_unique<Sae>();
  sae->p = Params::init(c.d, c.f, dev, seed);
  sae->s = AdamState::zeros_like(sae->p);
  sae->since = at::zeros({c.f}, at::TensorOptions().dtype(at::kLong).device(dev));
  sae->cfg.k = k;
  sae->cfg.lr = 2e-4;
  sae->cfg.compute_dtype = dev.is_cuda() ? at::kBFloat16 : at::kFloat;
  return sae;
}

struct Runner {
  Model& model;
  const PipeCase& c;
  at::Device dev;
  std::vector<at::Tensor> ids;  // rotating token batches [batch, seq]
  int site = -1;
  int warmup = 1, iters = 3, repeats = 2;

  // Tokens/s of `forwards` through the pipeline; SAEs empty = the forward pass alone.
  double tokens_per_s(bool stop_early, const std::vector<Sae*>& saes) {
    std::unique_ptr<ShuffleBuffer> buffer;
    if (!saes.empty())
      buffer = std::make_unique<ShuffleBuffer>(c.buffer_tokens, c.d,
                                               at::TensorOptions().dtype(model.dtype()).device(dev));
    at::Tensor pending;
    auto one = [&](int i) {
      Hooks h(model.sites());
      h.capture(site);
      if (stop_early) h.stop_after(site);
      at::Tensor logits = model.forward(ids[size_t(i) % ids.size()], {}, h);
      at::Tensor acts = h.captured(site).reshape({-1, c.d});  // [batch * seq, d]
      if (!buffer) return;
      at::Tensor out = buffer->push(acts);
      pending = pending.defined() && pending.size(0) > 0 ? at::cat({pending, out}, 0) : out;
      while (pending.size(0) >= c.sae_batch) {
        at::Tensor x = pending.narrow(0, 0, c.sae_batch);
        for (Sae* s : saes) s->step(x);
        pending = pending.narrow(0, c.sae_batch, pending.size(0) - c.sae_batch);
      }
    };
    int i = 0;
    if (buffer)
      while (buffer->size() < buffer->capacity()) one(i++);  // fill: the steady state has a full buffer
    const double ms = time_ms(dev, warmup, iters, repeats, [&](int) { one(i++); });
    return double(c.batch * c.seq) / ms * 1e3;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_pipeline: streaming SAE training (forward -> harvest -> shuffle -> SAE) vs PyTorch + HF"};
  std::string device = "auto", json_out, python = "python3";
  std::string peer_script = std::string(MLXTERP_BENCH_DIR) + "/reference/pipeline_peer.py";
  if (const char* py = std::getenv("MLXTERP_PYTHON")) python = py;
  bool no_peer = false, no_multi = false;
  int iters = 3, repeats = 2;
  app.add_option("--device", device, "cuda, cpu or auto");
  app.add_option("--iters", iters, "forward passes per timed group");
  app.add_option("--repeats", repeats, "timed groups (median reported)");
  app.add_option("--python", python, "interpreter for the peer (env MLXTERP_PYTHON)");
  app.add_option("--peer-script", peer_script);
  app.add_flag("--no-peer", no_peer, "skip the PyTorch + HF transformers peer");
  app.add_flag("--no-multi", no_multi, "skip the two-SAEs-from-one-forward run");
  app.add_option("--json", json_out, "write all numbers here");
  CLI11_PARSE(app, argc, argv);
  try {
    if (device == "auto") device = cuda_kernels_available() ? "cuda" : "cpu";
    const at::Device dev = parse_device(device);
    const bool gpu = dev.is_cuda();
    const PipeCase& c = gpu ? kGpuCase : kCpuCase;
    const DeviceInfo info = device_info(dev);
    std::printf("bench_pipeline on %s; CUDA kernels %s\n", info.name.c_str(),
                cuda_kernels_available() ? "available" : "not built");
    std::printf("model %s: d=%lld, %lld layers, %lld heads (%lld kv), d_mlp=%lld, vocab=%lld; batch %lldx%lld; "
                "hook: residual entering layer %lld; SAE d_sae=%lld k=%lld, %lld tokens/step, buffer %lld tokens\n",
                c.name.c_str(), (long long)c.d, (long long)c.layers, (long long)c.heads, (long long)c.kv_heads,
                (long long)c.d_mlp, (long long)c.vocab, (long long)c.batch, (long long)c.seq, (long long)c.stop_layer,
                (long long)c.f, (long long)c.k, (long long)c.sae_batch, (long long)c.buffer_tokens);
    json results = {{"device", info.name}, {"case", c.name}};
    {
      at::manual_seed(0);
      const auto t0 = std::chrono::steady_clock::now();
      std::unique_ptr<Model> model = random_llama(c, dev, gpu ? at::kBFloat16 : at::kFloat);
      synchronize(dev);
      std::printf("random weights: %.2f B parameters in %.1f s\n", double(model->n_params()) / 1e9,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      Runner run{*model, c, dev};
      run.iters = iters;
      run.repeats = repeats;
      for (int i = 0; i < 4; ++i)
        run.ids.push_back(at::randint(0, c.vocab, {c.batch, c.seq}, at::TensorOptions().dtype(at::kLong).device(dev)));
      run.site = model->sites().resolve("model.layers." + std::to_string(c.stop_layer - 1));  // = HF hidden_states[stop]
      auto report = [&](const char* key, const char* what, double tps) {
        std::printf("  %-52s %10.1fK tok/s\n", what, tps / 1e3);
        std::fflush(stdout);
        results[key] = tps;
      };
      report("forward_stop", "forward to the hooked layer (early exit)", run.tokens_per_s(true, {}));
      if (forward_ops::built() && forward_ops::enabled()) {
        // The same forward with the libtorch ops the fused kernels replace (RMSNorm, SiLU * up, RoPE).
        forward_ops::set_enabled(false);
        report("forward_stop_unfused", "forward to the hooked layer, unfused elementwise ops", run.tokens_per_s(true, {}));
        forward_ops::set_enabled(true);
      }
      report("forward_full", "forward through the whole model", run.tokens_per_s(false, {}));
      std::unique_ptr<Sae> sae = make_sae(c, c.k, dev, 1);
      reset_peak_memory(dev);
      report("pipeline_stop", "pipeline: early exit + shuffle + SAE step", run.tokens_per_s(true, {sae.get()}));
      results["pipeline_stop_peak_bytes"] = double(peak_memory_bytes(dev));
      report("pipeline_full", "pipeline: whole model each pass + shuffle + SAE step",
             run.tokens_per_s(false, {sae.get()}));
      std::printf("  (SAE steps ran on the %s)\n", sae->stepper.last_backend() == Backend::Cuda ? "CUDA kernels"
                                                                                              : "libtorch reference");
      if (!no_multi) {
        std::unique_ptr<Sae> sae2 = make_sae(c, c.k2, dev, 2);
        report("pipeline_stop_two_saes", "pipeline: early exit + 2 SAEs (k, k2) from one forward",
               run.tokens_per_s(true, {sae.get(), sae2.get()}));
      }
    }
    empty_cache(dev);

    json peer;
    if (!no_peer) {
      std::string cmd = python + " " + shell_quote(peer_script) + " --device " + (gpu ? "cuda" : "cpu") +
                        " --d " + std::to_string(c.d) + " --layers " + std::to_string(c.layers) + " --heads " +
                        std::to_string(c.heads) + " --kv-heads " + std::to_string(c.kv_heads) + " --d-mlp " +
                        std::to_string(c.d_mlp) + " --vocab " + std::to_string(c.vocab) + " --batch " +
                        std::to_string(c.batch) + " --seq " + std::to_string(c.seq) + " --stop-layer " +
                        std::to_string(c.stop_layer) + " --f " + std::to_string(c.f) + " --k " +
                        std::to_string(c.k) + " --sae-batch " + std::to_string(c.sae_batch) + " --buffer-tokens " +
                        std::to_string(c.buffer_tokens) + " --iters " + std::to_string(iters) + " --repeats " +
                        std::to_string(repeats);
      peer = run_peer(cmd);
      results["peer"] = peer;
    }
    // Summary.
    auto ours = [&](const char* k) { return results.contains(k) ? results[k].get<double>() : NAN; };
    auto theirs = [&](const char* k) { return peer_num(peer, k, "tokens_per_s"); };
    std::printf("\n== bench_pipeline summary (%s) ==\n", info.name.c_str());
    std::printf("%-40s %14s %14s %8s\n", "tokens/s", "mlxterp", "pytorch+HF", "ratio");
    for (const char* k : {"forward_stop", "forward_full", "pipeline_stop", "pipeline_full"})
      std::printf("%-40s %13.1fK %13.1fK %7.2fx\n", k, ours(k) / 1e3, theirs(k) / 1e3, ours(k) / theirs(k));
    if (results.contains("forward_stop_unfused"))
      std::printf("%-40s %13.1fK %13.1fK %7.2fx\n", "forward_stop (unfused ops)", ours("forward_stop_unfused") / 1e3,
                  theirs("forward_stop") / 1e3, ours("forward_stop_unfused") / theirs("forward_stop"));
    std::printf("%-40s %13.1fK\n", "pipeline_stop_two_saes", ours("pipeline_stop_two_saes") / 1e3);
    const double r16 = ours("pipeline_stop") / theirs("pipeline_stop");
    const double rfull = ours("pipeline_stop") / theirs("pipeline_full");
    std::printf("mlxterp early-exit pipeline vs PyTorch pipeline stopping at layer %lld: %.2fx (target >= 1.7: %s)\n",
                (long long)c.stop_layer, r16, verdict(r16 >= 1.7).c_str());
    std::printf("mlxterp early-exit pipeline vs PyTorch pipeline running the whole model: %.2fx (target >= 2.5: %s)\n",
                rfull, verdict(rfull >= 2.5).c_str());
    results["ratio_vs_peer_stop"] = r16;
    results["ratio_vs_peer_full"] = rfull;
    if (!json_out.empty()) write_file_atomic(json_out, results.dump(2));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
