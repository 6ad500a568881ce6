// train-lm: gradients of our Llama forward against finite differences, AdamW against torch::optim::AdamW,
// the schedule, the data pipeline, a tiny run that learns and reloads with identical logits, exact resume.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim.h>

#include <cmath>

#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/train_lm.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

ModelConfig tiny_config(bool tie) {
  lm::LlamaSize s;
  s.d_model = 16;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.d_mlp = 24;
  s.n_ctx = 8;
  s.d_vocab = 23;
  s.tie_embeddings = tie;
  return lm::make_llama_config(s);
}

double lm_loss(Model& m, const at::Tensor& batch) {
  const int64_t t = batch.size(1) - 1;
  at::Tensor logits = m.forward(batch.narrow(1, 0, t));
  at::Tensor logp = at::log_softmax(logits.reshape({-1, logits.size(-1)}), -1);
  return at::nll_loss(logp, batch.narrow(1, 1, t).reshape({-1})).item<double>();
}

// A learnable token stream: documents of the walk id -> (5 id + 3) mod V, each starting at a seeded id.
lm::TokenStream walk_stream(int64_t n_docs, int64_t doc_len, int64_t vocab, uint64_t seed) {
  lm::TokenStream s;
  uint64_t x = seed;
  for (int64_t d = 0; d < n_docs; ++d) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    int64_t id = int64_t((x >> 33) % uint64_t(vocab));
    for (int64_t k = 0; k < doc_len; ++k) {
      s.ids.push_back(int32_t(id));
      id = (5 * id + 3) % vocab;
    }
    ++s.n_docs;
  }
  return s;
}

lm::TrainLmOptions tiny_run(const std::string& out, int64_t steps) {
  lm::TrainLmOptions o;
  o.size.d_model = 32;
  o.size.n_layers = 2;
  o.size.n_heads = 4;
  o.size.n_kv_heads = 2;
  o.size.d_mlp = 64;
  o.size.n_ctx = 16;
  o.size.d_vocab = 31;
  o.steps = steps;
  o.batch_size = 8;
  o.lr = 1e-2;
  o.min_lr = 1e-3;
  o.warmup_steps = 5;
  o.eval_every = 0;
  o.checkpoint_every = 0;
  o.out_dir = out;
  o.quiet = true;
  return o;
}

}  // namespace

// Autograd through our model (every weight tensor) agrees with central differences of the loss along a
// random direction. The model runs in float64, but the norms and softmax compute in float32 as HF does,
// and the step is finite: the quotient is good to ~0.5% here (measured), so the tolerance is 1% + 2e-3,
// against directional derivatives of 0.05 .. 10. A missing or detached path (0), a wrong sign or a
// wrong scale fails.
TEST(TrainLm, GradientMatchesFiniteDifferences) {
  for (bool tie : {true, false}) {
    ModelConfig c = tiny_config(tie);
    TensorMap w = lm::init_llama_weights(c, 7, /*init_std=*/0.3);
    for (auto& [name, t] : w) t = t.to(at::kDouble).set_requires_grad(true);
    auto model = create_model(c, w);
    at::Tensor batch = lm::sample_batch(walk_stream(20, 12, c.d_vocab, 3), 3, c.n_ctx, 11, 0);
    const int64_t t = c.n_ctx;
    at::Tensor logits = model->forward(batch.narrow(1, 0, t));
    at::Tensor loss = at::nll_loss(at::log_softmax(logits.reshape({-1, c.d_vocab}), -1), batch.narrow(1, 1, t).reshape({-1}));
    loss.backward();
    int checked = 0;
    for (auto& [name, p] : w) {
      ASSERT_TRUE(p.grad().defined()) << name << " got no gradient";
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(std::hash<std::string>{}(name)));
      at::Tensor d = at::normal(0.0, 1.0, p.sizes(), gen, at::TensorOptions().dtype(at::kDouble));
      const double analytic = (p.grad() * d).sum().item<double>();
      const double h = 1e-3;
      double lp, lm;
      {
        at::NoGradGuard ng;
        p.add_(d, h);
        lp = lm_loss(*model, batch);
        p.add_(d, -2 * h);
        lm = lm_loss(*model, batch);
        p.add_(d, h);
      }
      const double numeric = (lp - lm) / (2 * h);
      EXPECT_NEAR(analytic, numeric, 2e-3 + 1e-2 * std::abs(numeric)) << name << (tie ? " (tied)" : " (untied)");
      EXPECT_GT(std::abs(numeric), 2e-2) << name << ": the check is only meaningful where the loss moves";
      ++checked;
    }
    EXPECT_EQ(checked, int(model->expected_weights().size()));
  }
}

// Our AdamW is PyTorch's: same parameters after several steps with changing learning rates, with weight
// decay on matrices and none on vectors.
TEST(TrainLm, AdamWMatchesTorchOptim) {
  at::manual_seed(0);
  at::Tensor a0 = at::randn({5, 4}), b0 = at::randn({4});
  at::Tensor a = a0.clone().set_requires_grad(true), b = b0.clone().set_requires_grad(true);
  at::Tensor ra = a0.clone().set_requires_grad(true), rb = b0.clone().set_requires_grad(true);
  lm::AdamWOptions ao;
  ao.weight_decay = 0.1;
  lm::AdamW ours({{"a", a}, {"b", b}}, ao);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{ra}, std::make_unique<torch::optim::AdamWOptions>(
                                                       torch::optim::AdamWOptions(1.0).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<at::Tensor>{rb}, std::make_unique<torch::optim::AdamWOptions>(
                                                       torch::optim::AdamWOptions(1.0).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW ref(groups, torch::optim::AdamWOptions(1.0));
  for (int step = 0; step < 6; ++step) {
    const double lr = 0.05 / (1 + step);
    at::Tensor ga = at::randn({5, 4}), gb = at::randn({4}) * (step + 1);
    ours.zero_grad();
    a.mutable_grad() = ga.clone();
    b.mutable_grad() = gb.clone();
    ours.step(lr);
    ra.mutable_grad() = ga.clone();
    rb.mutable_grad() = gb.clone();
    for (auto& g : ref.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    ref.step();
  }
  EXPECT_LT(max_abs_diff(a, ra), 1e-6);
  EXPECT_LT(max_abs_diff(b, rb), 1e-6);
  EXPECT_GT(max_abs_diff(a, a0), 1e-2);  // it did move
  EXPECT_EQ(ours.steps_taken(), 6);
}

TEST(TrainLm, ClipGradNormScalesToMaxNorm) {
  at::Tensor a = at::zeros({2}).set_requires_grad(true), b = at::zeros({1}).set_requires_grad(true);
  a.mutable_grad() = at::tensor({3.0f, 0.0f});
  b.mutable_grad() = at::tensor({4.0f});
  std::vector<std::pair<std::string, at::Tensor>> ps = {{"a", a}, {"b", b}};
  EXPECT_NEAR(lm::clip_grad_norm(ps, 1.0), 5.0, 1e-9);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-5);
  EXPECT_NEAR(lm::clip_grad_norm(ps, 10.0), 1.0, 1e-5);  // under the limit: unchanged
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-5);
}

TEST(TrainLm, CosineScheduleWithWarmup) {
  EXPECT_DOUBLE_EQ(lm::cosine_lr(0, 100, 10, 1.0, 0.1), 0.1);  // (0 + 1) / 10
  EXPECT_DOUBLE_EQ(lm::cosine_lr(9, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(lm::cosine_lr(10, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_NEAR(lm::cosine_lr(55, 100, 10, 1.0, 0.1), 0.55, 1e-12);  // half-way through the decay
  EXPECT_NEAR(lm::cosine_lr(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
  for (int s = 11; s < 100; ++s) EXPECT_LT(lm::cosine_lr(s, 100, 10, 1.0, 0.1), lm::cosine_lr(s - 1, 100, 10, 1.0, 0.1));
  EXPECT_DOUBLE_EQ(lm::cosine_lr(0, 100, 0, 1.0, 0.1), 1.0);  // no warm-up
}

TEST(TrainLm, BatchesAreSeededContiguousWindows) {
  lm::TokenStream s;
  for (int i = 0; i < 1000; ++i) s.ids.push_back(i);
  at::Tensor b1 = lm::sample_batch(s, 16, 9, 42, 3);
  EXPECT_EQ(b1.sizes(), (std::vector<int64_t>{16, 10}));
  EXPECT_TRUE(at::equal(b1, lm::sample_batch(s, 16, 9, 42, 3)));
  EXPECT_FALSE(at::equal(b1, lm::sample_batch(s, 16, 9, 42, 4)));
  EXPECT_FALSE(at::equal(b1, lm::sample_batch(s, 16, 9, 43, 3)));
  // Each row is a slice of the stream (here: consecutive integers), inside it.
  EXPECT_TRUE(at::equal(b1.diff(1, 1), at::ones({16, 9}, at::kLong)));
  EXPECT_GE(b1.min().item<int64_t>(), 0);
  EXPECT_LE(b1.max().item<int64_t>(), 999);
  // Offsets cover the stream, the last window included.
  at::Tensor many = lm::sample_batch(s, 20000, 9, 1, 0);
  EXPECT_EQ(many.select(1, 0).min().item<int64_t>(), 0);
  EXPECT_EQ(many.select(1, 9).max().item<int64_t>(), 999);
  lm::TokenStream shortst;
  shortst.ids = {1, 2, 3};
  EXPECT_THROW(lm::sample_batch(shortst, 1, 3, 0, 0), Error);
}

TEST(TrainLm, EvalWindowsPredictEveryTokenOnce) {
  lm::TokenStream s;
  for (int i = 0; i < 23; ++i) s.ids.push_back(i);
  std::vector<int64_t> targets;
  for (const auto& w : lm::eval_windows(s, 5)) {
    EXPECT_LE(w.size(0), 6);
    for (int64_t k = 1; k < w.size(0); ++k) targets.push_back(w[k].item<int64_t>());
  }
  std::vector<int64_t> want;
  for (int i = 1; i < 23; ++i) want.push_back(i);
  EXPECT_EQ(targets, want);
  int64_t capped = 0;
  for (const auto& w : lm::eval_windows(s, 5, 7)) capped += w.size(0) - 1;
  EXPECT_EQ(capped, 7);
}

TEST(TrainLm, UnigramBaselineByHand) {
  lm::TokenStream train, eval;
  train.ids = {0, 0, 0, 1};  // counts + 1: {4, 2, 1} over total 4 + 3 = 7
  eval.ids = {2, 0, 1};      // targets 0 and 1
  lm::EvalResult r = lm::unigram_baseline(train, eval, 3, 8);
  EXPECT_EQ(r.tokens, 2);
  EXPECT_NEAR(r.loss, -(std::log(4.0 / 7) + std::log(2.0 / 7)) / 2, 1e-12);
}

TEST(TrainLm, ConfigChecksAndParameterCount) {
  lm::LlamaSize s;
  s.d_vocab = 100;
  s.d_model = 30;
  s.n_heads = 4;
  EXPECT_THROW(lm::make_llama_config(s), Error);  // 30 % 4
  s.d_model = 24;
  s.n_heads = 4;
  s.n_kv_heads = 3;
  EXPECT_THROW(lm::make_llama_config(s), Error);  // 4 % 3
  s.n_kv_heads = 2;
  s.n_layers = 3;
  ModelConfig c = lm::make_llama_config(s);
  EXPECT_EQ(c.d_mlp, 64);  // 8/3 * 24 = 64
  EXPECT_EQ(c.d_head, 6);
  // Count from the weights create_model accepts.
  TensorMap w = lm::init_llama_weights(c, 1);
  int64_t n = 0;
  for (const auto& [k, t] : w) n += t.numel();
  EXPECT_EQ(lm::count_parameters(c), n);
  EXPECT_NO_THROW(create_model(c, w));
  EXPECT_EQ(w.count("lm_head.weight"), 0u);  // tied
  EXPECT_TRUE(at::equal(w.at("model.norm.weight"), at::ones({24})));
  // Same seed, same weights; another seed, others.
  EXPECT_TRUE(at::equal(w.at("model.embed_tokens.weight"), lm::init_llama_weights(c, 1).at("model.embed_tokens.weight")));
  EXPECT_FALSE(at::equal(w.at("model.embed_tokens.weight"), lm::init_llama_weights(c, 2).at("model.embed_tokens.weight")));
}

// A few seconds of training on a learnable stream: the loss falls well below chance, the held-out loss
// beats the unigram baseline, and the saved model reloads with exactly the logits of the trained weights
// (f32) or of their bf16 rounding (the default save dtype).
TEST(TrainLm, TinyRunLearnsAndReloadsIdentically) {
  TempDir tmp;
  lm::TokenStream train = walk_stream(400, 20, 31, 1), eval = walk_stream(20, 20, 31, 2);
  lm::TrainLmOptions o = tiny_run(tmp.file("f32"), 80);
  o.save_dtype = at::kFloat;
  o.eval_every = 40;
  lm::TrainLmResult r = lm::train_lm(o, train, &eval);
  ASSERT_TRUE(r.finished);
  ASSERT_GE(r.log.size(), 2u);
  EXPECT_NEAR(r.log.front().train_loss, std::log(31.0), 0.5);   // starts near chance
  EXPECT_LT(r.log.back().train_loss, 0.5 * std::log(31.0));     // and learns the walk
  EXPECT_LT(r.final_eval.loss, r.unigram.loss - 0.5);
  EXPECT_NEAR(r.unigram.loss, std::log(31.0), 0.1);  // the walk visits ids uniformly
  EXPECT_TRUE(file_exists(join_path(o.out_dir, "training_log.csv")));
  auto summary = nlohmann::json::parse(read_file(join_path(o.out_dir, "training_summary.json")));
  EXPECT_EQ(summary["parameters"].get<int64_t>(), r.n_params);
  EXPECT_FALSE(file_exists(join_path(o.out_dir, "checkpoint.safetensors")));

  at::Tensor ids = lm::sample_batch(eval, 2, 16, 5, 0).narrow(1, 0, 16);
  auto trained = create_model(r.config, r.weights);
  at::Tensor want = trained->forward(ids);
  LoadedModel f32 = load_model(o.out_dir, {.load_tokenizer = false});
  EXPECT_EQ(f32.model->config().d_mlp, 64);
  EXPECT_TRUE(at::equal(f32.model->forward(ids), want));

  lm::save_hf_model(tmp.file("bf16"), r.config, r.weights, at::kBFloat16, "");
  TensorMap rounded;
  for (const auto& [k, t] : r.weights) rounded[k] = t.to(at::kBFloat16).to(at::kFloat);
  LoadedModel bf16 = load_model(tmp.file("bf16"), {.load_tokenizer = false});
  EXPECT_TRUE(at::equal(bf16.model->forward(ids), create_model(r.config, rounded)->forward(ids)));
  EXPECT_GT(max_abs_diff(bf16.model->forward(ids), want), 0);  // the rounding is real
  auto cfg = nlohmann::json::parse(read_file(join_path(tmp.file("bf16"), "config.json")));
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
  EXPECT_EQ(cfg["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(cfg["tie_word_embeddings"], true);
}

// Stopping at step 7 and resuming gives bit-for-bit the weights and log of an uninterrupted run.
TEST(TrainLm, ResumeIsExact) {
  TempDir tmp;
  lm::TokenStream train = walk_stream(200, 20, 31, 1);
  lm::TrainLmOptions a = tiny_run(tmp.file("a"), 12);
  a.log_every = 4;
  lm::TrainLmResult ra = lm::train_lm(a, train, nullptr);

  lm::TrainLmOptions b = tiny_run(tmp.file("b"), 12);
  b.log_every = 4;
  b.checkpoint_every = 5;
  b.stop_at_step = 7;
  lm::TrainLmResult partial = lm::train_lm(b, train, nullptr);
  EXPECT_FALSE(partial.finished);
  ASSERT_TRUE(file_exists(join_path(b.out_dir, "checkpoint.safetensors")));
  b.stop_at_step = 0;
  b.resume = true;
  lm::TrainLmResult rb = lm::train_lm(b, train, nullptr);
  ASSERT_TRUE(rb.finished);
  for (const auto& [k, t] : ra.weights) EXPECT_TRUE(at::equal(t, rb.weights.at(k))) << k;
  ASSERT_EQ(ra.log.size(), rb.log.size());
  for (size_t i = 0; i < ra.log.size(); ++i) {
    EXPECT_EQ(ra.log[i].step, rb.log[i].step);
    EXPECT_EQ(ra.log[i].train_loss, rb.log[i].train_loss) << "row " << i;
  }
  // Resuming under other options or data is refused, naming what differs.
  lm::TrainLmOptions c = b;
  c.lr = 2e-2;
  try {
    lm::train_lm(c, train, nullptr);
    FAIL() << "resume with another --lr was accepted";
  } catch (const Error& e) {
    // The checkpoint was removed at the end of the successful run.
    EXPECT_NE(std::string(e.what()).find("cannot resume"), std::string::npos) << e.what();
  }
  c = b;
  c.keep_checkpoint = true;
  c.resume = false;
  c.stop_at_step = 3;
  lm::train_lm(c, train, nullptr);
  c.resume = true;
  c.stop_at_step = 0;
  c.lr = 2e-2;
  try {
    lm::train_lm(c, train, nullptr);
    FAIL() << "resume with another --lr was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'lr' differs"), std::string::npos) << e.what();
  }
  c.lr = b.lr;
  lm::TokenStream other = walk_stream(200, 20, 31, 9);
  try {
    lm::train_lm(c, other, nullptr);
    FAIL() << "resume on other data was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("differs"), std::string::npos) << e.what();
  }
}

// The command line: pre-tokenized data in, a loadable model out; bad input is an error, not a crash.
TEST(TrainLmCli, TrainsFromIdFileAndRejectsBadInput) {
  TempDir tmp;
  std::string ids;
  lm::TokenStream s = walk_stream(60, 20, 31, 4);
  for (size_t i = 0; i < s.ids.size(); ++i) ids += std::to_string(s.ids[i]) + ((i + 1) % 20 ? " " : "\n");
  write_file_atomic(tmp.file("train.ids"), ids);
  const std::string base = "train-lm --data-ids '" + tmp.file("train.ids") + "' --vocab-size 31 "
                           "--n-layers 1 --n-heads 2 --context 8 --batch 2 --warmup 2 --quiet";
  CliResult ok = run_cli(base + " --d-model 16 --steps 6 --out '" + tmp.file("m") + "' --eval-data-ids '" + tmp.file("train.ids") + "'");
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(ok.out.find("parameters: "), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("unigram baseline: "), std::string::npos) << ok.out;
  EXPECT_EQ(load_model(tmp.file("m"), {.load_tokenizer = false}).model->config().n_layers, 1);

  CliResult missing = run_cli("train-lm --data-ids '" + tmp.file("nope.ids") + "' --vocab-size 31 --out '" + tmp.file("x") + "'");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("error: "), std::string::npos);
  EXPECT_NE(missing.err.find("nope.ids"), std::string::npos) << missing.err;
  EXPECT_FALSE(file_exists(tmp.file("x")));

  CliResult heads = run_cli("train-lm --data-ids '" + tmp.file("train.ids") + "' --vocab-size 31 --d-model 18 --n-heads 4 --out '" +
                            tmp.file("y") + "'");
  EXPECT_EQ(heads.code, 1);
  EXPECT_NE(heads.err.find("multiple of n_heads"), std::string::npos) << heads.err;

  write_file_atomic(tmp.file("bad.ids"), "1 2 3\n4 99 5\n");
  CliResult range = run_cli("train-lm --data-ids '" + tmp.file("bad.ids") + "' --vocab-size 31 --out '" + tmp.file("z") + "'");
  EXPECT_EQ(range.code, 1);
  EXPECT_NE(range.err.find(":2: token id 99 is outside the vocabulary"), std::string::npos) << range.err;

  CliResult neither = run_cli("train-lm --out '" + tmp.file("w") + "'");
  EXPECT_EQ(neither.code, 2) << neither.err;
  CliResult resume = run_cli(base + " --d-model 16 --steps 4 --resume --out '" + tmp.file("v") + "'");
  EXPECT_EQ(resume.code, 1);
  EXPECT_NE(resume.err.find("cannot resume"), std::string::npos) << resume.err;
}
