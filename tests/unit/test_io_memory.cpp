// Peak memory of loading + tracing, per container (stories260K, and a ~29 MB random-weight Llama in all
// three containers, where the weights dominate). Each measurement runs in a fresh process
// (this test binary re-executed with only IOMemoryWorker.Run selected), which reports
// mlxterp::current_rss_bytes() once libtorch is up and mlxterp::peak_rss_bytes() after load_model + a
// trace capturing every site of a 64-token sequence. The figures are printed; the test bounds the growth.
#include <ATen/Parallel.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/io.hpp"
#include "mlxterp/trace.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

struct Report {
  // bytes: RSS once libtorch is up; peak RSS after load_model; peak after the trace too; what the trace
  // captured (activations + logits), which it must hold.
  size_t before = 0, load_peak = 0, peak = 0, captured = 0;
  int code = -1;
};

Report run_worker(const std::string& model) {
  TempDir tmp;
  const std::string out = tmp.file("report.txt");
  // Everything the child needs is prepared before fork (only async-signal-safe calls after it).
  std::vector<std::string> env_strings = {"MLXTERP_MEMORY_WORKER=" + model, "MLXTERP_MEMORY_REPORT=" + out};
  // Not gtest's sharding either: a child that inherits GTEST_SHARD_INDEX / GTEST_TOTAL_SHARDS runs only its
  // shard's part of the filter, often nothing, and writes no report.
  for (char** e = environ; *e; ++e)
    if (!starts_with(*e, "MLXTERP_MEMORY_") && !starts_with(*e, "GTEST_SHARD_") && !starts_with(*e, "GTEST_TOTAL_SHARDS"))
      env_strings.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  char exe[] = "/proc/self/exe";
  char filter[] = "--gtest_filter=IOMemoryWorker.Run";
  char* argv[] = {exe, filter, nullptr};
  pid_t pid = fork();
  if (pid == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execve(exe, argv, envp.data());
    _exit(127);
  }
  Report r;
  int status = 0;
  if (pid > 0 && waitpid(pid, &status, 0) == pid) r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (file_exists(out)) {
    auto parts = split(trim(read_file(out)), ' ');
    if (parts.size() == 4) {
      r.before = size_t(std::stoull(parts[0]));
      r.load_peak = size_t(std::stoull(parts[1]));
      r.peak = size_t(std::stoull(parts[2]));
      r.captured = size_t(std::stoull(parts[3]));
    }
  }
  return r;
}

}  // namespace

// The worker half: does nothing unless started by the test below.
TEST(IOMemoryWorker, Run) {
  const char* model = std::getenv("MLXTERP_MEMORY_WORKER");
  const char* report = std::getenv("MLXTERP_MEMORY_REPORT");
  if (!model || !report) GTEST_SKIP() << "runs only as IOMemory's child process";
  at::set_num_threads(1);
  at::Tensor warm = at::matmul(at::ones({8, 8}), at::ones({8, 8}));  // libtorch's own start-up allocations
  ASSERT_EQ(warm[0][0].item<float>(), 8.f);
  const size_t before = current_rss_bytes();
  LoadOptions o;
  o.load_tokenizer = false;
  InterpretableModel m = InterpretableModel::load(model, o);
  const size_t load_peak = peak_rss_bytes();
  TraceResult tr = m.trace_ids(at::arange(1, 65, at::kLong).unsqueeze(0));
  ASSERT_GT(tr.activations.size(), 50u);
  size_t captured = size_t(tr.logits.numel() * tr.logits.element_size());
  for (const auto& [name, t] : tr.activations) captured += size_t(t.numel() * t.element_size());
  write_file_atomic(report, mlxterp::cat(before, " ", load_peak, " ", peak_rss_bytes(), " ", captured));
}

// A random-weight Llama of ~29 MB written in all three containers: big enough that the weights, not
// libtorch's fixed overheads, dominate the figures.
struct Synthetic {
  int64_t d = 256, L = 8, H = 8, KV = 4, F = 688, V = 4096, seq = 64;
  std::string hf_dir, gguf, bin;
  size_t weight_bytes = 0;
};

Synthetic write_synthetic(const TempDir& tmp) {
  Synthetic s;
  const int64_t hd = s.d / s.H, kv = s.KV * hd;
  at::manual_seed(0);
  auto rnd = [](std::vector<int64_t> shape) { return at::randn(shape) * 0.02; };
  TensorMap hf;
  std::map<std::string, at::Tensor> gg;
  std::vector<at::Tensor> emb{rnd({s.V, s.d})}, att, wq, wk, wv, wo, ffn, w1, w2, w3;
  for (int64_t i = 0; i < s.L; ++i) {
    att.push_back(at::ones({s.d}));
    wq.push_back(rnd({s.d, s.d}));
    wk.push_back(rnd({kv, s.d}));
    wv.push_back(rnd({kv, s.d}));
    wo.push_back(rnd({s.d, s.d}));
    ffn.push_back(at::ones({s.d}));
    w1.push_back(rnd({s.F, s.d}));
    w2.push_back(rnd({s.d, s.F}));
    w3.push_back(rnd({s.F, s.d}));
    const std::string p = "model.layers." + std::to_string(i) + ".", b = "blk." + std::to_string(i) + ".";
    hf[p + "input_layernorm.weight"] = gg[b + "attn_norm.weight"] = att.back();
    hf[p + "self_attn.q_proj.weight"] = gg[b + "attn_q.weight"] = wq.back();
    hf[p + "self_attn.k_proj.weight"] = gg[b + "attn_k.weight"] = wk.back();
    hf[p + "self_attn.v_proj.weight"] = gg[b + "attn_v.weight"] = wv.back();
    hf[p + "self_attn.o_proj.weight"] = gg[b + "attn_output.weight"] = wo.back();
    hf[p + "post_attention_layernorm.weight"] = gg[b + "ffn_norm.weight"] = ffn.back();
    hf[p + "mlp.gate_proj.weight"] = gg[b + "ffn_gate.weight"] = w1.back();
    hf[p + "mlp.down_proj.weight"] = gg[b + "ffn_down.weight"] = w2.back();
    hf[p + "mlp.up_proj.weight"] = gg[b + "ffn_up.weight"] = w3.back();
  }
  at::Tensor norm = at::ones({s.d});
  hf["model.embed_tokens.weight"] = gg["token_embd.weight"] = emb[0];
  hf["model.norm.weight"] = gg["output_norm.weight"] = norm;
  for (const auto& [k, t] : hf) s.weight_bytes += size_t(t.numel()) * 4;

  s.hf_dir = tmp.file("hf");
  make_dirs(s.hf_dir);
  save_safetensors(join_path(s.hf_dir, "model.safetensors"), hf);
  nlohmann::json cfg = {{"model_type", "llama"},       {"hidden_size", s.d},       {"num_hidden_layers", s.L},
                        {"num_attention_heads", s.H},  {"num_key_value_heads", s.KV}, {"intermediate_size", s.F},
                        {"vocab_size", s.V},           {"max_position_embeddings", s.seq}, {"tie_word_embeddings", true}};
  write_file_atomic(join_path(s.hf_dir, "config.json"), cfg.dump());

  s.gguf = tmp.file("synthetic.gguf");
  auto u32 = [](int64_t v) { return GGUFValue{uint64_t(v), 4}; };
  std::map<std::string, GGUFValue> meta = {
      {"general.architecture", GGUFValue{std::string("llama"), 8}}, {"llama.embedding_length", u32(s.d)},
      {"llama.block_count", u32(s.L)}, {"llama.attention.head_count", u32(s.H)},
      {"llama.attention.head_count_kv", u32(s.KV)}, {"llama.feed_forward_length", u32(s.F)},
      {"llama.context_length", u32(s.seq)}};
  save_gguf(s.gguf, meta, gg);

  s.bin = tmp.file("synthetic.bin");
  AtomicFile f(s.bin);
  std::vector<int32_t> header = {int32_t(s.d), int32_t(s.F), int32_t(s.L), int32_t(s.H), int32_t(s.KV), int32_t(s.V),
                                 int32_t(s.seq)};
  f.write(header.data(), header.size() * 4);
  auto put = [&](const std::vector<at::Tensor>& ts) {
    for (const auto& t : ts) f.write(t.contiguous().data_ptr<float>(), size_t(t.numel()) * 4);
  };
  for (const auto* group : {&emb, &att, &wq, &wk, &wv, &wo, &ffn, &w1, &w2, &w3}) put(*group);
  put({norm, at::zeros({s.seq * hd})});  // final norm, then the (unused) RoPE tables
  f.commit();
  return s;
}

TEST(IOMemory, PeakRssOfLoadAndTraceStaysNearTheWeights) {
  MLXTERP_REQUIRE_DATA("models/stories260K/stories260K.gguf");
  TempDir tmp;
  Synthetic syn = write_synthetic(tmp);
  struct Case {
    std::string name, path;
    double weights;
    double bound;  // allowed load growth, in multiples of the weights, on top of a fixed 16 MB
  };
  const std::string stories = data_path("models/stories260K/stories260K.gguf");
  const double w = double(syn.weight_bytes);
  for (const Case& c : {Case{"stories260K gguf", stories, double(read_file(stories).size()), 4.0},
                        Case{"synthetic safetensors", syn.hf_dir, w, 1.3},
                        Case{"synthetic gguf (f32)", syn.gguf, w, 1.3},
                        Case{"synthetic llama2c", syn.bin, w, 1.3}}) {
    Report r = run_worker(c.path);
    ASSERT_EQ(r.code, 0) << c.name;
    ASSERT_GT(r.peak, 0u) << c.name << ": no report from the worker, or peak_rss_bytes() (which reads /proc/self/status) "
                          << "gave 0";
    const double load = double(r.load_peak) - double(r.before), total = double(r.peak) - double(r.before);
    std::cout << "[ " << c.name << " ] weights " << human_bytes(c.weights) << "; RSS at start "
              << human_bytes(double(r.before)) << "; peak after load +" << human_bytes(load) << " ("
              << load / c.weights << " x weights); after tracing 64 tokens +" << human_bytes(total) << " (the trace holds "
              << human_bytes(double(r.captured)) << " of activations and logits)\n";
    RecordProperty(c.name + " load growth bytes", std::to_string(size_t(std::max(0.0, load))));
    RecordProperty(c.name + " load+trace growth bytes", std::to_string(size_t(std::max(0.0, total))));
    // Loading holds the weights once (mmapped pages or one copy) plus slack; a loader keeping a second
    // full copy would exceed the bound on the synthetic model. The trace adds what it captured.
    EXPECT_LT(load, c.bound * c.weights + 16.0 * (1 << 20)) << c.name;
    EXPECT_LT(total, c.bound * c.weights + 1.5 * double(r.captured) + 16.0 * (1 << 20)) << c.name;
  }
}
