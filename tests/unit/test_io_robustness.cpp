// Robustness: stories260K in all three containers, truncated at many offsets and with header bytes
// changed at random. Loading (and, when it succeeds, a short forward pass) may only ever throw
// mlxterp::Error — never crash, hang, or throw anything else (std::bad_alloc, c10::Error, json errors).
#include <random>

#include "common.hpp"
#include "mlxterp/model.hpp"
#include "mlxterp/tokenizer.hpp"
#include "test_io_util.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

enum class Format { GGUF, Safetensors, Llama2c };

struct Subject {
  Format format;
  std::string original;     // file bytes
  size_t header_end = 0;    // bytes [0, header_end) hold the header
  size_t data_end = 0;      // the last byte any tensor uses (+1); only padding may follow
  std::string config_json;  // safetensors only
};

Subject subject(Format f) {
  Subject s;
  s.format = f;
  if (f == Format::GGUF) {
    s.original = read_file(data_path("models/stories260K/stories260K.gguf"));
    GGUFFile g = GGUFFile::open(data_path("models/stories260K/stories260K.gguf"));
    s.header_end = g.data_offset();
    for (const auto& t : g.tensor_infos()) s.data_end = std::max<size_t>(s.data_end, g.data_offset() + t.offset + t.n_bytes);
  } else if (f == Format::Safetensors) {
    s.original = read_file(data_path("models/stories260K/hf/model.safetensors"));
    uint64_t n;
    std::memcpy(&n, s.original.data(), 8);
    s.header_end = 8 + n;
    s.data_end = s.original.size();
    s.config_json = read_file(data_path("models/stories260K/hf/config.json"));
  } else {
    s.original = read_file(data_path("models/stories260K/stories260K.bin"));
    s.header_end = 28;
    s.data_end = s.original.size();
  }
  return s;
}

// Loads `bytes` as `s.format` the way load_model would (without the tokenizer) and runs 3 tokens.
// Returns true if it loaded. Only mlxterp::Error is caught.
bool try_load(const Subject& s, const std::string& bytes, const TempDir& tmp) {
  try {
    ModelFiles files;
    if (s.format == Format::GGUF) {
      write_bytes(tmp.file("m.gguf"), bytes);
      files = read_gguf_model(tmp.file("m.gguf"));
    } else if (s.format == Format::Safetensors) {
      write_bytes(tmp.file("config.json"), s.config_json);
      write_bytes(tmp.file("model.safetensors"), bytes);
      files = read_hf_model(tmp.path);
    } else {
      write_bytes(tmp.file("m.bin"), bytes);
      files = read_llama2c_model(tmp.file("m.bin"));
    }
    auto model = create_model(files.config, std::move(files.weights));
    Hooks h(model->sites());
    const int64_t v = std::min<int64_t>(model->config().d_vocab, 3);
    model->forward(at::arange(0, v, at::kLong).unsqueeze(0), {}, h);
    return true;
  } catch (const Error&) {
    return false;
  }
}

class IORobustness : public ::testing::TestWithParam<Format> {
 protected:
  void SetUp() override {
    MLXTERP_REQUIRE_DATA("models/stories260K/stories260K.gguf");
    MLXTERP_REQUIRE_DATA("models/stories260K/hf/model.safetensors");
    MLXTERP_REQUIRE_DATA("models/stories260K/stories260K.bin");
  }
};

std::string format_name(Format f) {
  return f == Format::GGUF ? "GGUF" : f == Format::Safetensors ? "Safetensors" : "Llama2c";
}

}  // namespace

TEST_P(IORobustness, TruncatedFilesOnlyThrowErrors) {
  Subject s = subject(GetParam());
  TempDir tmp;
  ASSERT_TRUE(try_load(s, s.original, tmp)) << "the intact file must load";
  std::vector<size_t> cuts;
  for (size_t n = 0; n < std::min<size_t>(s.header_end + 64, s.original.size()); n += 1 + n / 16) cuts.push_back(n);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 40; ++i) cuts.push_back(rng() % s.data_end);
  cuts.push_back(s.data_end - 1);
  for (size_t n : cuts) {
    SCOPED_TRACE("cut at " + std::to_string(n) + " of " + std::to_string(s.original.size()));
    // Every truncation must fail: a loader that accepted a partial file would build a partial model.
    EXPECT_FALSE(try_load(s, s.original.substr(0, n), tmp));
  }
}

TEST_P(IORobustness, CorruptedHeadersOnlyThrowErrors) {
  Subject s = subject(GetParam());
  TempDir tmp;
  std::mt19937_64 rng(11 + int(GetParam()));
  int loaded = 0, rejected = 0;
  const int n_trials = 150;
  for (int i = 0; i < n_trials; ++i) {
    std::string bytes = s.original;
    const int n_flips = 1 + int(rng() % 3);
    std::string where = "bytes changed at";
    for (int k = 0; k < n_flips; ++k) {
      size_t at = rng() % s.header_end;
      uint8_t v;
      switch (rng() % 4) {
        case 0: v = uint8_t(bytes[at]) ^ uint8_t(1u << (rng() % 8)); break;  // one bit
        case 1: v = 0xFF; break;
        case 2: v = 0x00; break;
        default: v = uint8_t(rng()); break;
      }
      bytes[at] = char(v);
      where += ' ';
      where += std::to_string(at);
    }
    SCOPED_TRACE(where);
    (try_load(s, bytes, tmp) ? loaded : rejected)++;
  }
  // Both outcomes occur (flips in names or values can leave a valid file); what matters is that nothing
  // escaped as another exception type or crashed.
  EXPECT_GT(rejected, 0);
  std::cout << "[ " << format_name(GetParam()) << " ] " << n_trials << " corrupted headers: " << rejected
            << " rejected with mlxterp::Error, " << loaded << " still valid\n";
}

INSTANTIATE_TEST_SUITE_P(IO, IORobustness, ::testing::Values(Format::GGUF, Format::Safetensors, Format::Llama2c),
                         [](const auto& info) { return format_name(info.param); });

// The vocabulary in a GGUF's metadata feeds the tokenizer: a corrupted one must fail cleanly too.
TEST(IORobustnessTokenizer, CorruptedGGUFVocabularyOnlyThrowsErrors) {
  MLXTERP_REQUIRE_DATA("models/stories260K/stories260K.gguf");
  Subject s = subject(Format::GGUF);
  TempDir tmp;
  std::mt19937_64 rng(5);
  for (int i = 0; i < 100; ++i) {
    std::string bytes = s.original;
    size_t at = rng() % s.header_end;
    bytes[at] = char(uint8_t(rng()));
    SCOPED_TRACE("byte changed at " + std::to_string(at));
    write_bytes(tmp.file("t.gguf"), bytes);
    try {
      auto tok = load_tokenizer(tmp.file("t.gguf"));
      tok->encode("Once upon a time");
    } catch (const Error&) {
    }
  }
}
