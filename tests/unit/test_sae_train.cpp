// SAE data path and training loop on stories260K (pre-tokenised documents the model itself generated, so
// these tests need no tokenizer): padding/BOS never reach the SAE, the shuffled stream is deterministic and
// resumable, the cache round-trips and resumes, training learns, resume is bitwise exact, NaNs stop
// training without writing, memory stays flat, and the log files are well-formed.
#include <gmock/gmock.h>

#include <ATen/CPUGeneratorImpl.h>

#include <fstream>

#include "common.hpp"
#include "mlxterp/error.hpp"
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

}  // namespace
