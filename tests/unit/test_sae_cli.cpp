// `mlxterp sae train`, `sae export/import` and `cache` as a user runs them on stories260K with its own tokenizer:
// what the seed guide promises on screen (activation dimension, streaming mode, a progress line with it/s,
// loss, l0 and dead%; plain lines when stderr is not a terminal), the wrong-component message, the log files,
// SIGKILL mid-run then --resume equal to an uninterrupted run with every checkpoint complete, and the
// export -> import round trip through the command line.
#include <gmock/gmock.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "common.hpp"
#include "mlxterp/io.hpp"
#include "mlxterp/sae.hpp"

using namespace mlxterp;
using namespace mlxterp::test;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

const char* kModel = "models/stories260K/stories260K.bin";
const char* kText = "text/tinystories_val_subset.txt";

// The first `n` stories of the TinyStories subset (blank-line separated), in a temp file.
std::string first_stories(const TempDir& t, int n) {
  std::ifstream in(data_path(kText));
  std::string line, out;
  int docs = 0;
  bool in_doc = false;
  while (std::getline(in, line)) {
    const bool blank = line.find_first_not_of(" \t\r") == std::string::npos;
    if (blank) {
      if (in_doc && ++docs == n) break;
      in_doc = false;
    } else {
      in_doc = true;
    }
    out += line + "\n";
  }
  std::string p = t.file("stories.txt");
  write_file_atomic(p, out);
  return p;
}

std::string q(const std::string& s) { return "'" + s + "'"; }

// A small, quick configuration (a few hundred steps over 40 stories).
std::string small_args(const std::string& data) {
  return cat("sae train --model ", q(data_path(kModel)), " --layer 2 --component resid_post --data ", q(data),
             " --threads 1 --set expansion_factor=4 --set k=8 --set batch_size=64 --set num_epochs=3",
             " --set learning_rate=3e-3 --set warmup_steps=10 --set shuffle_buffer_tokens=1024",
             " --set text_batch_size=8 --set validation_split=0.1 --set log_every=5 --set dead_feature_window=20");
}

TEST(SaeCli, WrongComponentNamesTheCloseMatchesAndTheComponentsCommand) {
  MLXTERP_REQUIRE_DATA(kModel);
  MLXTERP_REQUIRE_DATA(kText);
  TempDir t;
  std::string data = first_stories(t, 5);
  auto r = run_cli(cat("sae train --model ", q(data_path(kModel)), " --layer 2 --component mlpp --data ", q(data),
                       " --out ", q(t.file("o"))));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("error: Could not find activations for layer 2, component 'mlpp'"));
  EXPECT_THAT(r.err, HasSubstr("did you mean 'mlp'"));
  EXPECT_THAT(r.err, HasSubstr("run `mlxterp components --model MODEL --layer 2`"));
  EXPECT_FALSE(file_exists(t.file("o/weights.safetensors")));
  // A layer that does not exist says how many there are.
  r = run_cli(cat("sae train --model ", q(data_path(kModel)), " --layer 9 --component mlp --data ", q(data), " --out ",
                  q(t.file("o"))));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("Could not find activations for layer 9, component 'mlp': the model has 5 layers (0 .. 4)"));
  // A bad config value is the guide's message, before any work.
  r = run_cli(cat("sae train --model ", q(data_path(kModel)), " --layer 2 --data ", q(data), " --out ", q(t.file("o")),
                  " --set expansion_factor=0"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("error: expansion_factor must be >= 1, got 0"));
}

TEST(SaeCli, TrainPrintsWhatTheGuideShowsAndWritesTheLogs) {
  MLXTERP_REQUIRE_DATA(kModel);
  MLXTERP_REQUIRE_DATA(kText);
  TempDir t;
  std::string data = first_stories(t, 40);
  auto r = run_cli(small_args(data) + cat(" --out ", q(t.file("o")), " --log-dir ", q(t.file("logs"))));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("🎯 Training SAE on Layer 2 resid_post"));
  EXPECT_THAT(r.out, HasSubstr("📊 Config: 4x expansion, k=8"));
  EXPECT_THAT(r.out, HasSubstr("✓ Activation dimension: 64\n"));
  EXPECT_THAT(r.out, HasSubstr("🏗️  Created TopKSAE(d_in=64, d_sae=256, k=8, expansion=4x)"));
  EXPECT_THAT(r.out, HasSubstr("✓ Split: 36 training documents, 4 validation documents"));
  EXPECT_THAT(r.out, HasSubstr("(streaming mode"));
  EXPECT_THAT(r.out, HasSubstr("Epoch 3/3 - Val loss: "));
  EXPECT_THAT(r.out, HasSubstr("✅ Training complete!"));
  // stderr is a file here, not a terminal: plain lines (no carriage-return redraws) with rate, loss, l0, dead%.
  EXPECT_THAT(r.err, Not(HasSubstr("\r")));
  static const std::regex line(R"(Training: \d+/\d+ \(\d+%\) elapsed [0-9:]+ eta [0-9:]+, [0-9.]+ it/s, loss=[0-9.]+, l0=8\.0, dead=[0-9.]+%)");
  EXPECT_TRUE(std::regex_search(r.err, line)) << r.err;
  // Logs: one JSON object per line, TensorBoard events, the HTML curves.
  std::string jl = read_file(t.file("logs/metrics.jsonl"));
  std::istringstream in(jl);
  int n = 0;
  bool val = false;
  for (std::string l; std::getline(in, l); ++n) {
    auto j = nlohmann::json::parse(l);
    ASSERT_TRUE(j.contains("step"));
    val |= j.value("split", "") == "val";
  }
  EXPECT_GT(n, 10);
  EXPECT_TRUE(val);
  EXPECT_TRUE(file_exists(t.file("logs/training_curves.html")));
  bool events = false;
  for (const auto& e : std::filesystem::directory_iterator(t.file("logs")))
    events |= e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  EXPECT_TRUE(events);
  // The SAE directory records what it was trained on.
  SAE s = SAE::load(t.file("o"));
  EXPECT_EQ(s.metadata["site"], "model.layers.2");
  EXPECT_THAT(s.metadata["model"].get<std::string>(), HasSubstr("stories260K.bin"));
  EXPECT_EQ(s.metadata["final_metrics"]["l0"].get<double>(), 8.0);
  // export -> import through the CLI gives the same function back (normalisation folded on export).
  for (const char* fmt : {"saelens", "sparsify"}) {
    auto e = run_cli(cat("sae export --sae ", q(t.file("o")), " --format ", fmt, " --out ", q(t.file(fmt))));
    ASSERT_EQ(e.code, 0) << e.err;
    auto i = run_cli(cat("sae import --sae ", q(t.file(fmt)), " --out ", q(t.file(cat(fmt, "_back")))));
    ASSERT_EQ(i.code, 0) << i.err;
    SAE b = SAE::load(t.file(cat(fmt, "_back")));
    at::Tensor x = at::randn({50, 64}, at::TensorOptions().dtype(at::kFloat)) * 2;
    EXPECT_LT(max_abs_diff(b.reconstruct(x), s.reconstruct(x)), 1e-4) << fmt;
    EXPECT_TRUE(at::equal(b.encode(x) > 0, s.encode(x) > 0)) << fmt;
  }
}

// Runs the CLI in a child process (argv split on spaces; no quoting needed for temp paths).
pid_t spawn_cli(const std::string& args, const std::string& out, const std::string& err) {
  std::vector<std::string> parts;
  std::istringstream in(args);
  for (std::string a; in >> a;) parts.push_back(a.size() >= 2 && a.front() == '\'' ? a.substr(1, a.size() - 2) : a);
  std::vector<char*> argv;
  std::string exe = cli_path();
  argv.push_back(exe.data());
  for (auto& p : parts) argv.push_back(p.data());
  argv.push_back(nullptr);
  // Everything is prepared before fork(); the child makes only async-signal-safe calls.
  const int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const int fe = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fo < 0 || fe < 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fo, 1);
    dup2(fe, 2);
    execv(exe.c_str(), argv.data());
    _exit(127);
  }
  ::close(fo);
  ::close(fe);
  return pid;
}

// SIGKILL a run right after a checkpoint lands, twice; the checkpoint on disk is complete every time, and
// --resume finishes with weights bitwise equal to an uninterrupted run.
TEST(SaeCli, SigkillThenResumeEqualsUninterruptedRun) {
  MLXTERP_REQUIRE_DATA(kModel);
  MLXTERP_REQUIRE_DATA(kText);
  TempDir t;
  std::string data = first_stories(t, 40);
  const std::string args = small_args(data) + " --set checkpoint_every=7";
  auto full = run_cli(args + cat(" --out ", q(t.file("full"))));
  ASSERT_EQ(full.code, 0) << full.err;
  const std::string ck = t.file("killed/checkpoint.safetensors");
  int kills = 0;
  int64_t last_step = 0;
  for (int round = 0; round < 2; ++round) {
    const std::string extra = round == 0 ? "" : cat(" --resume ", q(t.file("killed")));
    pid_t pid = spawn_cli(args + cat(" --out ", q(t.file("killed"))) + extra, t.file("k.out"), t.file("k.err"));
    ASSERT_GT(pid, 0);
    // Wait for a checkpoint newer than the last one, then kill at once (mid-run, possibly mid-write of the next).
    int status = 0;
    bool exited = false;
    for (int i = 0; i < 60000; ++i) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      if (file_exists(ck)) {
        try {
          SafeTensors st = SafeTensors::open(ck);
          auto m = nlohmann::json::parse(st.metadata().at("mlxterp_checkpoint"));
          if (m["step"].get<int64_t>() > last_step + 7 * round) break;
        } catch (const Error&) {
          // (the reader raced the rename: the old or the new file, never a partial one — retried)
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_FALSE(exited) << "the run finished before it could be killed: " << read_file(t.file("k.err"));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    ++kills;
    EXPECT_FALSE(file_exists(t.file("killed/weights.safetensors")));
    // The checkpoint is complete: every tensor reads back with the state's shapes and a step in metadata.
    SafeTensors st = SafeTensors::open(ck);
    auto m = nlohmann::json::parse(st.metadata().at("mlxterp_checkpoint"));
    EXPECT_GT(m["step"].get<int64_t>(), last_step);
    last_step = m["step"].get<int64_t>();
    EXPECT_EQ(st.get("params.W_enc").sizes(), at::IntArrayRef({256, 64}));
    EXPECT_EQ(st.get("adam_v.W_dec").sizes(), at::IntArrayRef({256, 64}));
  }
  auto res = run_cli(args + cat(" --out ", q(t.file("killed")), " --resume ", q(t.file("killed"))));
  ASSERT_EQ(res.code, 0) << res.err;
  EXPECT_THAT(res.out, HasSubstr("(resuming at step "));
  EXPECT_EQ(kills, 2);
  auto a = SafeTensors::open(t.file("full/weights.safetensors")).all();
  auto b = SafeTensors::open(t.file("killed/weights.safetensors")).all();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : a) EXPECT_TRUE(at::equal(v, b.at(k))) << k << " differs after SIGKILL + --resume";
}

}  // namespace
