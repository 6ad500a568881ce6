// SAE data path and training loop on stories260K (pre-tokenised documents the model itself generated, so
// these tests need no tokenizer): padding/BOS never reach the SAE, the shuffled stream is deterministic and
// resumable, the cache round-trips and resumes, training learns, resume is bitwise exact, NaNs stop
// training without writing, memory stays flat, and the log files are well-formed; bfloat16 Adam moments
// train as well as float32 ones and survive checkpoints (synthetic data).
#include <gmock/gmock.h>

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <fstream>

#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/sae_step.hpp"
#include "mlxterp/sae_train.hpp"

using namespace mlxterp;
using namespace mlxterp::test;
using ::testing::HasSubstr;

namespace {

const char* kModel = "models/stories260K/stories260K.bin";

const InterpretableModel& model() {
  static const InterpretableModel m = [] {
    LoadOptions o;
    o.load_tokenizer = false;
    return InterpretableModel::load(data_path(kModel), o);
  }();
  return m;
}

// 48 documents sampled from the model (BOS + 30..140 tokens), as JSONL {"ids": [...]}.
const std::string& docs_jsonl() {
  static TempDir dir;
  static const std::string path = [] {
    std::string p = dir.file("docs.jsonl");
    std::ofstream f(p);
    for (int i = 0; i < 48; ++i) {
      GenerateOptions g;
      g.max_tokens = 30 + (i * 37) % 110;
      g.temperature = 1.0;
      g.seed = uint64_t(i + 1);
      g.stop_at_eos = false;
      auto r = model().generate_ids({1}, g);
      nlohmann::json ids = r.prompt_ids;
      for (int32_t t : r.new_ids) ids.push_back(t);
      f << nlohmann::json{{"ids", ids}}.dump() << "\n";
    }
    return p;
  }();
  return path;
}

SAEConfig small_config() {
  SAEConfig c;
  c.expansion_factor = 4;
  c.k = 8;
  c.batch_size = 64;
  c.num_epochs = 2;
  c.learning_rate = 3e-3;
  c.warmup_steps = 10;
  c.text_batch_size = 8;
  c.shuffle_buffer_tokens = 1024;
  c.validation_split = 0.1;
  c.checkpoint_every = 25;
  c.log_every = 5;
  c.dead_feature_window = 20;
  return c;
}

SaeTrainOptions quiet_opts(const std::string& out) {
  SaeTrainOptions o;
  o.out_dir = out;
  o.quiet = true;
  return o;
}

TEST(SaeData, CorpusFormats) {
  TempDir t;
  write_file_atomic(t.file("a.txt"), "One story.\nSecond line.\n\n  \nTwo\n\n\nThree\n");
  TextCorpus a = TextCorpus::open(t.file("a.txt"));
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a.text(0), "One story.\nSecond line.");
  EXPECT_EQ(a.text(2), "Three");
  EXPECT_EQ(TextCorpus::open(t.file("a.txt"), /*lines=*/true).size(), 4u);
  write_file_atomic(t.file("b.jsonl"), "{\"text\": \"hello\"}\n\n{\"text\": \"w\\u00f6rld\", \"id\": 3}\n");
  TextCorpus b = TextCorpus::open(t.file("b.jsonl"));
  EXPECT_EQ(b.size(), 2u);
  EXPECT_EQ(b.text(1), "w\xc3\xb6rld");
  EXPECT_FALSE(b.pretokenized());
  write_file_atomic(t.file("c.jsonl"), "{\"text\": \"a\"}\n{\"ids\": [1, 2]}\n");
  EXPECT_THAT(error_of([&] { TextCorpus::open(t.file("c.jsonl")); }), HasSubstr("c.jsonl:2: mixes \"text\" and \"ids\""));
  write_file_atomic(t.file("d.jsonl"), "{\"txt\": \"a\"}\n");
  EXPECT_THAT(error_of([&] { TextCorpus::open(t.file("d.jsonl")); }),
              HasSubstr("d.jsonl:1: expected a \"text\" string or an \"ids\" list"));
  write_file_atomic(t.file("e.jsonl"), "not json\n");
  EXPECT_THAT(error_of([&] { TextCorpus::open(t.file("e.jsonl")); }), HasSubstr("e.jsonl:1: expected a JSON object"));
  write_file_atomic(t.file("f.txt"), "\n\n  \n");
  EXPECT_THAT(error_of([&] { TextCorpus::open(t.file("f.txt")); }), HasSubstr("no documents found"));
}

// Rows harvested in a padded, length-sorted batch equal each document traced alone, minus BOS; long
// documents are split into BOS-prefixed pieces with positions that continue.
TEST(SaeData, HarvestExcludesBosAndPadding) {
  MLXTERP_REQUIRE_DATA(kModel);
  TextCorpus c = TextCorpus::open(docs_jsonl());
  const InterpretableModel& m = model();
  const int site = m.sites().resolve_component(2, "");
  HarvestOptions o;
  o.text_batch_size = 4;
  o.context_size = 512;
  Harvester h(m, c, {site}, o);
  std::vector<SequenceRef> seqs = {{0, 0}, {1, 0}, {2, 0}, {5, 0}, {7, 0}};
  Harvester::Rows r = h.run(seqs);
  int64_t row = 0;
  for (const auto& s : seqs) {
    auto ids = c.ids(size_t(s.doc));
    ASSERT_EQ(ids[0], 1);
    TraceOptions t;
    t.sites = {"model.layers.2"};
    t.need_logits = false;
    at::Tensor alone = m.trace_ids(at::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0), {}, t)
                           .get("model.layers.2")[0];
    const int64_t n = int64_t(ids.size()) - 1;  // BOS excluded
    at::Tensor got = r.acts[0].narrow(0, row, n);
    EXPECT_LT(max_abs_diff(got, alone.narrow(0, 1, n)), 1e-4) << "document " << s.doc;
    for (int64_t j = 0; j < n; ++j) {
      EXPECT_EQ(r.token_ids[size_t(row + j)], ids[size_t(j + 1)]);
      EXPECT_EQ(r.positions[size_t(row + j)], j + 1);
      EXPECT_EQ(r.doc_ids[size_t(row + j)], s.doc);
    }
    row += n;
  }
  EXPECT_EQ(row, r.acts[0].size(0)) << "padding rows leaked into the harvest";
  // Pieces of 16 tokens: 15 body tokens each, BOS repeated, positions continue across pieces.
  o.context_size = 16;
  Harvester h16(m, c, {site}, o);
  const int64_t body = int64_t(c.ids(3).size()) - 1;
  EXPECT_EQ(h16.n_pieces(3), (body + 14) / 15);
  std::vector<int32_t> ids;
  std::vector<char> keep;
  h16.piece(3, 1, ids, keep);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(keep[0], 0);
  EXPECT_EQ(ids[1], c.ids(3)[16]);
  Harvester::Rows r2 = h16.run({{3, 0}, {3, 1}});
  EXPECT_EQ(r2.positions[15], 16);
  EXPECT_EQ(h16.kept_tokens(3), body);
}

TEST(SaeData, StreamIsDeterministicResumableAndCoversEachEpoch) {
  MLXTERP_REQUIRE_DATA(kModel);
  TextCorpus c = TextCorpus::open(docs_jsonl());
  HarvestOptions o;
  o.text_batch_size = 8;
  ModelActivationSource src(model(), c, model().sites().resolve_component(2, ""), o, 0.0, 7, at::kCPU);
  const int64_t T = src.tokens_per_epoch(), B = 50;
  BatchStream s(src, B, 700, 7);
  std::vector<at::Tensor> batches;
  std::vector<StreamPosition> pos;
  for (int i = 0; i < int(2 * T / B) + 2; ++i) {
    pos.push_back(s.position());
    batches.push_back(s.next().clone());
  }
  EXPECT_GT(s.buffer_fills(), 4);
  // Epoch 0 = a permutation of every training row.
  at::Tensor first = at::cat(batches).narrow(0, 0, T);
  int64_t cur = 0;
  std::vector<at::Tensor> all;
  while (!src.epoch_done(0, cur)) all.push_back(src.next_rows(0, cur, 300));
  at::Tensor rows = at::cat(all);
  ASSERT_EQ(rows.size(0), T);
  // Harvested in other groupings here (other padding, other GEMM shapes), so equal up to float rounding, which
  // can reorder rows by any one key: instead, every batch row has a training row within rounding distance and
  // every training row a batch row (exact distances: cdist's matrix-product mode cancels to ~1e-3 here).
  auto nearest = [](const at::Tensor& a, const at::Tensor& b) {
    std::vector<at::Tensor> out;
    for (int64_t r0 = 0; r0 < a.size(0); r0 += 512)
      out.push_back(std::get<0>(at::cdist(a.narrow(0, r0, std::min<int64_t>(512, a.size(0) - r0)), b, 2.0,
                                          /*compute_mode=donot_use_mm_for_euclid_dist*/ 2)
                                    .min(1)));
    return at::cat(out).max().item<double>();
  };
  EXPECT_LT(nearest(first, rows), 1e-4) << "epoch 0 has rows that are not in the data";
  EXPECT_LT(nearest(rows, first), 1e-4) << "epoch 0 misses rows of the data";
  // Restoring any position replays exactly the same batches.
  for (size_t at_i : {size_t(3), size_t(11), batches.size() - 2}) {
    BatchStream r(src, B, 700, 7);
    r.restore(pos[at_i]);
    for (size_t j = at_i; j < batches.size(); ++j) EXPECT_TRUE(at::equal(r.next(), batches[j])) << "batch " << j;
  }
  // A different seed shuffles differently.
  BatchStream other(src, B, 700, 8);
  EXPECT_FALSE(at::equal(other.next(), batches[0]));
}

TEST(SaeCache, WriteReadAndResume) {
  MLXTERP_REQUIRE_DATA(kModel);
  TextCorpus c = TextCorpus::open(docs_jsonl());
  TempDir t;
  CacheWriteOptions w;
  w.harvest.text_batch_size = 4;
  w.store_dtype = at::kFloat;
  w.shard_tokens = 600;
  w.quiet = true;
  const int64_t n = write_activation_cache(model(), c, {"blocks.2.hook_resid_post", "model.layers.1.mlp"}, t.file("full"), w);
  auto meta = nlohmann::json::parse(read_file(t.file("full/meta.json")));
  EXPECT_TRUE(meta["complete"].get<bool>());
  EXPECT_EQ(meta["n_tokens"].get<int64_t>(), n);
  EXPECT_GT(meta["shards"].size(), 3u);
  EXPECT_EQ(meta["sites"][0]["name"], "model.layers.2");
  EXPECT_EQ(meta["n_documents_with_tokens"], 48);
  // Interrupted after two shards, then resumed: identical to the uninterrupted cache.
  w.stop_after_shards = 2;
  write_activation_cache(model(), c, {"blocks.2.hook_resid_post", "model.layers.1.mlp"}, t.file("part"), w);
  EXPECT_FALSE(nlohmann::json::parse(read_file(t.file("part/meta.json")))["complete"].get<bool>());
  w.stop_after_shards = 0;
  EXPECT_EQ(write_activation_cache(model(), c, {"blocks.2.hook_resid_post", "model.layers.1.mlp"}, t.file("part"), w), n);
  for (const auto& sh : meta["shards"]) {
    auto a = SafeTensors::open(t.file("full/" + sh["file"].get<std::string>())).all();
    auto b = SafeTensors::open(t.file("part/" + sh["file"].get<std::string>())).all();
    for (const auto& [k, v] : a) EXPECT_TRUE(at::equal(v, b.at(k))) << sh["file"] << " " << k;
  }
  // Different settings in the same directory are refused.
  w.harvest.context_size = 64;
  EXPECT_THAT(error_of([&] { write_activation_cache(model(), c, {"model.layers.2"}, t.file("full"), w); }),
              HasSubstr("already holds a cache made with a different 'sites'"));
  // Reading: the training rows end where the last 10% of documents begin; the cache's rows equal the stream's.
  CacheActivationSource src(t.file("full"), "model.layers.2", 0.1, 1, at::kCPU, 128);
  HarvestOptions h;
  h.text_batch_size = 4;
  ModelActivationSource live(model(), c, model().sites().resolve_component(2, ""), h, 0.1, 1, at::kCPU);
  EXPECT_EQ(src.tokens_per_epoch(), live.tokens_per_epoch());
  EXPECT_EQ(src.validation_documents(), 4);
  EXPECT_TRUE(src.cheap_refill());  // the auto shuffle buffer may hold a whole cached epoch
  EXPECT_FALSE(live.cheap_refill());
  at::Tensor v1 = src.validation_rows(100000), v2 = live.validation_rows(100000);
  ASSERT_EQ(v1.sizes(), v2.sizes());
  EXPECT_LT(max_abs_diff(v1, v2), 1e-5);
  EXPECT_THAT(error_of([&] { CacheActivationSource(t.file("full"), "model.layers.3", 0.1, 1, at::kCPU); }),
              HasSubstr("the cache holds no site 'model.layers.3'; it has: model.layers.2, model.layers.1.mlp"));
}

TEST(SaeTrain, TopKLearnsAndWritesEverything) {
  MLXTERP_REQUIRE_DATA(kModel);
  TextCorpus c = TextCorpus::open(docs_jsonl());
  TempDir t;
  SaeTrainOptions o = quiet_opts(t.file("out"));
  o.log_dir = t.file("logs");
  std::vector<double> fvus;
  o.on_sync = [&](int64_t, const std::map<std::string, double>& m) {
    fvus.push_back(m.at("fvu"));
    EXPECT_DOUBLE_EQ(m.at("l0"), 8.0);  // TopK: L0 == k on every token
  };
  SaeTrainResult r = train_sae(model(), 2, "resid_post", c, small_config(), o);
  ASSERT_TRUE(r.finished);
  ASSERT_GT(fvus.size(), 4u);
  EXPECT_LT(fvus.back(), 0.6 * fvus.front()) << "FVU did not fall";
  EXPECT_LT(r.final_metrics.at("fvu"), 0.5);
  EXPECT_DOUBLE_EQ(r.final_metrics.at("l0"), 8.0);
  SAE s = SAE::load(t.file("out"));
  EXPECT_EQ(s.d_in, 64);
  EXPECT_EQ(s.d_sae, 256);
  EXPECT_TRUE(s.normalizes());
  EXPECT_EQ(s.metadata["site"], "model.layers.2");
  EXPECT_EQ(s.metadata["layer"], 2);
  EXPECT_EQ(s.metadata["config"]["k"], 8);
  EXPECT_EQ(s.metadata["tokens_seen"].get<int64_t>(), r.steps * 64);
  EXPECT_TRUE(s.metadata["final_metrics"].contains("fvu"));
  EXPECT_TRUE(file_exists(t.file("out/checkpoint.safetensors")));
  // Logs: JSONL rows, a TensorBoard file whose records all pass their CRCs, an HTML page with charts.
  std::istringstream jl(read_file(t.file("logs/metrics.jsonl")));
  int rows = 0;
  for (std::string line; std::getline(jl, line); ++rows) EXPECT_FALSE(nlohmann::json::parse(line).is_discarded());
  EXPECT_GT(rows, 5);
  std::string html = read_file(t.file("logs/training_curves.html"));
  EXPECT_THAT(html, HasSubstr("<svg"));
  EXPECT_THAT(html, ::testing::Not(HasSubstr("<script")));
  std::string ev;
  for (const auto& e : std::filesystem::directory_iterator(t.file("logs")))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) ev = read_file(e.path().string());
  ASSERT_FALSE(ev.empty());
  size_t p = 0, records = 0;
  bool saw_fvu = false;
  while (p < ev.size()) {
    ASSERT_LE(p + 12, ev.size());
    uint64_t len;
    uint32_t lcrc, dcrc;
    std::memcpy(&len, ev.data() + p, 8);
    std::memcpy(&lcrc, ev.data() + p + 8, 4);
    ASSERT_EQ(lcrc, masked_crc32c(ev.data() + p, 8));
    ASSERT_LE(p + 16 + len, ev.size());
    std::memcpy(&dcrc, ev.data() + p + 12 + len, 4);
    ASSERT_EQ(dcrc, masked_crc32c(ev.data() + p + 12, len));
    saw_fvu |= std::string(ev.data() + p + 12, len).find("train/fvu") != std::string::npos;
    p += 16 + len;
    ++records;
  }
  EXPECT_GT(records, 10u);
  EXPECT_TRUE(saw_fvu);
}

TEST(SaeTrain, Crc32cKnownValue) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the CRC-32C check value
}

// Stop (with a checkpoint) half-way, resume: the final weights equal an uninterrupted run's, bit for bit.
TEST(SaeTrain, ResumeIsBitwiseExact) {
  MLXTERP_REQUIRE_DATA(kModel);
  TextCorpus c = TextCorpus::open(docs_jsonl());
  TempDir t;
  for (const char* arch : {"topk", "batchtopk"}) {
    SAEConfig cfg = small_config();
    cfg.sae_type = arch;
    cfg.resample_dead_every = 30;  // exercises the seeded resampling too
    SaeTrainResult full = train_sae(model(), 2, "", c, cfg, quiet_opts(t.file(cat(arch, "_full"))));
    SaeTrainOptions o = quiet_opts(t.file(cat(arch, "_part")));
    o.stop_after_steps = 37;  // not a multiple of checkpoint_every or the buffer size
    SaeTrainResult part = train_sae(model(), 2, "", c, cfg, o);
    EXPECT_FALSE(part.finished);
    EXPECT_FALSE(file_exists(t.file(cat(arch, "_part/weights.safetensors"))));
    o.stop_after_steps = -1;
    o.resume_dir = o.out_dir;
    SaeTrainResult resumed = train_sae(model(), 2, "", c, cfg, o);
    ASSERT_TRUE(resumed.finished);
    EXPECT_EQ(resumed.steps, full.steps);
    auto a = full.sae.params.named(), b = resumed.sae.params.named();
    for (const auto& [k, v] : a) EXPECT_TRUE(at::equal(v, b.at(k))) << arch << ": " << k << " differs after resume";
    // Resuming with a different config is refused, naming the field.
    cfg.k = 9;
    EXPECT_THAT(error_of([&] { train_sae(model(), 2, "", c, cfg, o); }),
                HasSubstr("--resume: the checkpoint was trained with k = 8; now 9"));
  }
}

TEST(SaeTrain, BatchTopKThresholdGivesL0NearKPerSequence) {
  MLXTERP_REQUIRE_DATA(kModel);
  TextCorpus c = TextCorpus::open(docs_jsonl());
  TempDir t;
  SAEConfig cfg = small_config();
  cfg.sae_type = "batchtopk";
  cfg.num_epochs = 3;
  SaeTrainResult r = train_sae(model(), 2, "", c, cfg, quiet_opts(t.file("b")));
  SAE s = SAE::load(t.file("b"));
  ASSERT_TRUE(s.params.threshold.defined());
  EXPECT_GT(s.params.threshold[0].item<double>(), 0.0);
  // The held-out documents, one sequence at a time.
  double l0 = 0, n = 0;
  TraceOptions o;
  o.sites = {"model.layers.2"};
  o.need_logits = false;
  for (size_t d = 43; d < 48; ++d) {
    auto ids = c.ids(d);
    at::Tensor x = model().trace_ids(at::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0), {}, o)
                       .get("model.layers.2")[0].narrow(0, 1, int64_t(ids.size()) - 1);
    at::Tensor z = s.encode(x);
    l0 += (z > 0).sum().item<double>();
    n += double(x.size(0));
    // Per token: the same latents whether a token is encoded alone or with its sequence.
    EXPECT_LT(max_abs_diff(s.encode(x.narrow(0, 3, 1)), z.narrow(0, 3, 1)), 1e-5);
  }
  EXPECT_NEAR(l0 / n, 8.0, 0.8) << "mean L0 per token with the saved threshold";
}

// A source that yields NaN rows after a while: training stops with the guide's message and writes nothing.
class PoisonedSource : public ActivationSource {
 public:
  explicit PoisonedSource(int64_t poison_after) : poison_after_(poison_after) {}
  int64_t d_in() const override { return 16; }
  int64_t tokens_per_epoch() const override { return 64 * 1000; }
  at::Tensor next_rows(int64_t epoch, int64_t& cursor, int64_t want) override {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(uint64_t(cursor + 1000 * epoch));
    at::Tensor x = at::randn({want, 16}, g, at::TensorOptions());
    if (served_ >= poison_after_) x[0][0] = NAN;
    served_ += want;
    cursor += 1;
    return x;
  }
  bool epoch_done(int64_t, int64_t cursor) const override { return cursor * 256 >= tokens_per_epoch(); }
  at::Tensor validation_rows(int64_t) override { return at::randn({100, 16}); }
  at::Device device() const override { return at::kCPU; }
  std::string mode() const override { return "test mode"; }
  int64_t train_documents() const override { return 1; }
  int64_t validation_documents() const override { return 1; }
  nlohmann::ordered_json fingerprint() const override { return {{"d_in", 16}}; }

 private:
  int64_t poison_after_, served_ = 0;
};

TEST(SaeTrain, NonFiniteGradientStopsWithGuidance) {
  TempDir t;
  PoisonedSource src(256 * 4);
  SAEConfig cfg;
  cfg.expansion_factor = 2;
  cfg.k = 4;
  cfg.batch_size = 64;
  cfg.shuffle_buffer_tokens = 256;
  cfg.num_epochs = 1;
  cfg.warmup_steps = 5;
  std::string msg = error_of([&] { train_sae(src, cfg, {}, quiet_opts(t.file("o"))); });
  EXPECT_THAT(msg, HasSubstr("Gradient computation failed"));
  EXPECT_THAT(msg, HasSubstr("gradient_clip=0.5 (now 1.000)"));
  EXPECT_THAT(msg, HasSubstr("learning_rate=5e-5"));
  EXPECT_THAT(msg, HasSubstr("normalize_input=false"));
  EXPECT_FALSE(file_exists(t.file("o/weights.safetensors")));
}

// Resident memory is flat after warm-up: < 5% growth between 25% and 100% of the steps.
TEST(SaeTrain, MemoryStaysFlat) {
  TempDir t;
  PoisonedSource src(int64_t(1) << 60);  // never poisoned
  SAEConfig cfg;
  cfg.expansion_factor = 16;
  cfg.k = 8;
  cfg.batch_size = 64;
  cfg.shuffle_buffer_tokens = 512;
  cfg.num_epochs = 1;
  cfg.warmup_steps = 10;
  cfg.log_every = 10;
  cfg.checkpoint_every = 200;
  SaeTrainOptions o = quiet_opts(t.file("o"));
  o.log_dir = t.file("logs");
  std::vector<double> rss;
  o.on_sync = [&](int64_t, const std::map<std::string, double>&) { rss.push_back(double(current_rss_bytes())); };
  train_sae(src, cfg, {}, o);
  ASSERT_GE(rss.size(), 40u);
  const double at25 = rss[rss.size() / 4];
  const double peak_after = *std::max_element(rss.begin() + rss.size() / 4, rss.end());
  EXPECT_LT(peak_after, at25 * 1.05) << "RSS grew from " << at25 / 1048576 << " MB to " << peak_after / 1048576 << " MB";
}

// ---- bfloat16 Adam moments (optimizer_state_dtype) on synthetic data (needs no data files) ----

// Rows that an SAE can learn: each a positive combination of 4 of 64 fixed random unit directions plus a
// little noise; deterministic in (epoch, cursor), the cursor counting rows.
class SparseSource : public ActivationSource {
 public:
  SparseSource(int64_t d_in, int64_t rows_per_epoch) : d_(d_in), rows_(rows_per_epoch) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(77);
    atoms_ = at::randn({64, d_}, g, at::TensorOptions());
    atoms_ = atoms_ / atoms_.norm(2, 1, true);
  }
  int64_t d_in() const override { return d_; }
  int64_t tokens_per_epoch() const override { return rows_; }
  at::Tensor next_rows(int64_t epoch, int64_t& cursor, int64_t want) override {
    const int64_t n = std::min(want, rows_ - cursor);
    at::Tensor x = make(n, uint64_t(epoch) * 1000003 + uint64_t(cursor) + 1);
    cursor += n;
    return x;
  }
  bool epoch_done(int64_t, int64_t cursor) const override { return cursor >= rows_; }
  at::Tensor validation_rows(int64_t max_rows) override { return make(std::min<int64_t>(max_rows, 2048), 999); }
  at::Device device() const override { return at::kCPU; }
  std::string mode() const override { return "test mode"; }
  int64_t train_documents() const override { return 1; }
  int64_t validation_documents() const override { return 1; }
  nlohmann::ordered_json fingerprint() const override { return {{"d_in", d_}, {"rows", rows_}}; }

 private:
  at::Tensor make(int64_t n, uint64_t seed) const {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
    at::Tensor idx = at::randint(64, {n * 4}, g, at::TensorOptions().dtype(at::kLong));
    at::Tensor coef = at::rand({n, 4, 1}, g, at::TensorOptions()) * 2 + 0.5;
    at::Tensor x = (atoms_.index_select(0, idx).view({n, 4, d_}) * coef).sum(1);
    return x + 0.01 * at::randn({n, d_}, g, at::TensorOptions());
  }
  int64_t d_, rows_;
  at::Tensor atoms_;
};

SAEConfig synthetic_config(const char* optimizer_state_dtype) {
  SAEConfig c;
  c.sae_type = "topk";
  c.expansion_factor = 4;  // d_in 32 -> d_sae 128
  c.k = 4;
  c.batch_size = 64;
  c.num_epochs = 1;
  c.learning_rate = 3e-3;
  c.warmup_steps = 20;
  c.shuffle_buffer_tokens = 2048;
  c.validation_max_tokens = 2048;
  c.checkpoint_every = 0;
  c.log_every = 50;
  c.optimizer_state_dtype = optimizer_state_dtype;
  return c;
}

// bfloat16 moments train as well as float32 ones: the held-out FVU after 500 steps, averaged over three seeds,
// is within 5% (relative). (A single run is not a fair comparison: TopK training is chaotic enough that float32
// runs of different seeds already differ by a few percent, and so do a float32 and a bf16 run of one seed.)
// The moments are stored as bfloat16 in the checkpoint, the field in the SAE's config.json.
TEST(SaeTrain, Bf16OptimizerStateTrainsAsWellAsFloat32) {
  TempDir t;
  std::map<std::string, double> fvu;
  for (const int64_t seed : {1, 2, 3}) {
    for (const char* dt : {"float32", "bfloat16"}) {
      SparseSource src(32, 64 * 500);
      SAEConfig cfg = synthetic_config(dt);
      cfg.seed = seed;
      const std::string out = t.file(cat(dt, seed));
      SaeTrainResult r = train_sae(src, cfg, {}, quiet_opts(out));
      ASSERT_TRUE(r.finished);
      fvu[dt] += r.final_metrics.at("fvu") / 3;
      if (seed > 1) continue;
      auto ck = SafeTensors::open(join_path(out, "checkpoint.safetensors")).all();
      const at::ScalarType want = std::string(dt) == "bfloat16" ? at::kBFloat16 : at::kFloat;
      for (const char* n : {"adam_m.W_enc", "adam_v.W_enc", "adam_m.W_dec", "adam_v.W_dec"})
        EXPECT_EQ(ck.at(n).scalar_type(), want) << dt << " " << n;
      for (const char* n : {"adam_m.b_enc", "adam_v.b_dec", "params.W_enc", "params.W_dec"})
        EXPECT_EQ(ck.at(n).scalar_type(), at::kFloat) << dt << " " << n;
      auto saved = nlohmann::json::parse(read_file(join_path(out, "config.json")))["config"];
      EXPECT_EQ(saved["optimizer_state_dtype"], dt);
      EXPECT_EQ(SAEConfig::from_json(saved, "config.json").optimizer_state_dtype, dt);
    }
  }
  EXPECT_LT(fvu["float32"], 0.3) << "the SAE should learn this data (else the comparison means little)";
  EXPECT_NEAR(fvu["bfloat16"], fvu["float32"], 0.05 * fvu["float32"])
      << "mean held-out FVU: float32 moments " << fvu["float32"] << ", bfloat16 " << fvu["bfloat16"];
}

// A bf16-state checkpoint keeps its moments' dtype and bits: from_map / to_map round-trip them, and resuming
// finishes bitwise equal to an uninterrupted run. Resuming with the other optimizer_state_dtype converts the
// moments (to float32 exactly, to bfloat16 by rounding to nearest) with a note on stderr.
TEST(SaeTrain, Bf16CheckpointResumeKeepsMomentDtypeAndValues) {
  TempDir t;
  const int64_t rows = 64 * 80;
  SAEConfig cfg = synthetic_config("bfloat16");
  SparseSource src(32, rows);
  SaeTrainResult full = train_sae(src, cfg, {}, quiet_opts(t.file("full")));
  SaeTrainOptions o = quiet_opts(t.file("part"));
  o.stop_after_steps = 37;
  SparseSource src_part(32, rows);
  train_sae(src_part, cfg, {}, o);

  const TensorMap ck = SafeTensors::open(t.file("part/checkpoint.safetensors")).all();
  EXPECT_EQ(ck.at("adam_m.W_enc").scalar_type(), at::kBFloat16);
  EXPECT_EQ(ck.at("adam_v.W_dec").scalar_type(), at::kBFloat16);
  EXPECT_EQ(ck.at("adam_m.b_enc").scalar_type(), at::kFloat);
  EXPECT_TRUE(ck.at("adam_v.W_enc").ne(0).any().item<bool>());
  SaeTrainState st;
  st.arch = SaeArch::TopK;
  st.d_in = 32;
  st.d_sae = 128;
  st.from_map(ck, at::kCPU);
  EXPECT_EQ(st.moment_dtype(), at::kBFloat16);
  const TensorMap back = st.to_map();
  ASSERT_EQ(back.size(), ck.size());
  for (const auto& [k, v] : ck) {
    EXPECT_EQ(back.at(k).scalar_type(), v.scalar_type()) << k;
    EXPECT_TRUE(at::equal(back.at(k), v)) << k << " changed through from_map / to_map";
  }

  // Conversions: bf16 -> f32 is exact; f32 -> bf16 rounds to nearest.
  EXPECT_TRUE(st.set_moment_dtype(at::kFloat));
  EXPECT_FALSE(st.set_moment_dtype(at::kFloat));
  EXPECT_TRUE(at::equal(st.adam_v.W_dec, ck.at("adam_v.W_dec").to(at::kFloat)));
  at::Tensor v32 = st.adam_v.W_enc + 1e-9;  // not bf16-representable
  st.adam_v.W_enc = v32.clone();
  st.set_moment_dtype(at::kBFloat16);
  EXPECT_TRUE(at::equal(st.adam_v.W_enc, v32.to(at::kBFloat16)));
  EXPECT_EQ(st.adam_m.b_enc.scalar_type(), at::kFloat);

  // A checkpoint whose weight-matrix moments disagree is refused, naming the tensor.
  TensorMap mixed = ck;
  mixed["adam_v.W_dec"] = mixed["adam_v.W_dec"].to(at::kFloat);
  SaeTrainState bad = st;
  EXPECT_THAT(error_of([&] { bad.from_map(mixed, at::kCPU); }),
              HasSubstr("checkpoint: tensor 'adam_v.W_dec' is f32; expected bf16 like adam_m.W_enc"));

  // Resume (same config): bitwise equal to the uninterrupted run.
  std::filesystem::copy(t.file("part"), t.file("part_f32"), std::filesystem::copy_options::recursive);
  o.stop_after_steps = -1;
  o.resume_dir = o.out_dir;
  SparseSource src_resume(32, rows);
  SaeTrainResult resumed = train_sae(src_resume, cfg, {}, o);
  ASSERT_TRUE(resumed.finished);
  for (const auto& [k, v] : full.sae.params.named())
    EXPECT_TRUE(at::equal(v, resumed.sae.params.named().at(k))) << k << " differs after a bf16-state resume";

  // Resume the same checkpoint with float32 moments: converted, with a note; the run finishes in float32.
  SaeTrainOptions o32 = quiet_opts(t.file("part_f32"));
  o32.quiet = false;
  o32.resume_dir = o32.out_dir;
  SparseSource src_f32(32, rows);
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  SaeTrainResult r32 = train_sae(src_f32, synthetic_config("float32"), {}, o32);
  ::testing::internal::GetCapturedStdout();
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(r32.finished);
  EXPECT_THAT(err,
              HasSubstr("the Adam moments of W_enc, W_dec are bfloat16; converted to float32 (optimizer_state_dtype)"));
  const TensorMap ck32 = SafeTensors::open(t.file("part_f32/checkpoint.safetensors")).all();
  EXPECT_EQ(ck32.at("adam_m.W_enc").scalar_type(), at::kFloat);
  EXPECT_EQ(ck32.at("adam_v.W_dec").scalar_type(), at::kFloat);
  // ... and back to bfloat16 (a float32 checkpoint, e.g. from before the field, resumed with bfloat16): the run
  // is at its end, so the checkpoint it writes holds the float32 moments rounded to nearest.
  SaeTrainOptions o16 = quiet_opts(t.file("part_f32"));
  o16.resume_dir = o16.out_dir;
  SparseSource src_16(32, rows);
  EXPECT_TRUE(train_sae(src_16, synthetic_config("bfloat16"), {}, o16).finished);
  const TensorMap ck16 = SafeTensors::open(t.file("part_f32/checkpoint.safetensors")).all();
  for (const char* n : {"adam_m.W_enc", "adam_v.W_enc", "adam_m.W_dec", "adam_v.W_dec"})
    EXPECT_TRUE(at::equal(ck16.at(n), ck32.at(n).to(at::kBFloat16))) << n;
  EXPECT_TRUE(at::equal(ck16.at("adam_v.b_enc"), ck32.at("adam_v.b_enc")));
}

}  // namespace
