// llama2.c checkpoints: the version-1 ("ak42") layout reads into the same weights as the legacy one, and
// headers that disagree with the file size (or overflow 64-bit sizes) are named.
#include "common.hpp"
#include "mlxterp/model.hpp"
#include "test_io_util.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

const char* kBin = "models/stories260K/stories260K.bin";

std::string header28(std::vector<int32_t> h) {
  return std::string(reinterpret_cast<const char*>(h.data()), h.size() * 4);
}

}  // namespace

TEST(IOLlama2c, SizeMismatchIsNamed) {
  MLXTERP_REQUIRE_DATA(kBin);
  const std::string full = read_file(data_path(kBin));
  TempDir tmp;
  write_bytes(tmp.file("short.bin"), full.substr(0, full.size() - 4));
  std::string msg = error_of([&] { read_llama2c_model(tmp.file("short.bin")); });
  EXPECT_HAS(msg, "short.bin: file size disagrees with its header (dim=64, hidden_dim=172, n_layers=5, n_heads=8, "
                  "n_kv_heads=4, vocab=512, seq_len=512, shared classifier); expected 1056540 bytes, got 1056536");
  write_bytes(tmp.file("long.bin"), full + "junk");
  EXPECT_HAS(error_of([&] { read_llama2c_model(tmp.file("long.bin")); }), "expected 1056540 bytes, got 1056544");
  write_bytes(tmp.file("tiny.bin"), full.substr(0, 10));
  EXPECT_HAS(error_of([&] { read_llama2c_model(tmp.file("tiny.bin")); }),
             "tiny.bin: too short for a llama2.c checkpoint; expected at least a 28-byte header, got 10 bytes");
}

TEST(IOLlama2c, AbsurdHeadersFailWithoutOverflow) {
  TempDir tmp;
  // Sizes near 2^24: the implied byte count overflows 64 bits; it must not wrap around to something small.
  write_bytes(tmp.file("huge.bin"), header28({16777212, 16777212, 16777212, 2, 2, 16777212, 16777212}));
  EXPECT_HAS(error_of([&] { read_llama2c_model(tmp.file("huge.bin")); }), "expected more than 2^63 bytes, got 28");
  write_bytes(tmp.file("neg.bin"), header28({64, 172, -5, 8, 4, 512, 512}));
  EXPECT_HAS(error_of([&] { read_llama2c_model(tmp.file("neg.bin")); }),
             "neg.bin: header field n_layers is out of range; expected 1 .. 16777215, got -5 (not a llama2.c checkpoint?)");
  write_bytes(tmp.file("heads.bin"), header28({64, 172, 5, 8, 3, 512, 512}));
  EXPECT_HAS(error_of([&] { read_llama2c_model(tmp.file("heads.bin")); }),
             "header sizes are inconsistent; expected dim divisible by n_heads into an even head size and n_heads "
             "divisible by n_kv_heads, got dim=64, n_heads=8, n_kv_heads=3");
  std::string v2 = "24ka";  // 0x616b3432 little-endian
  int32_t version = 2;
  v2.append(reinterpret_cast<const char*>(&version), 4);
  v2 += std::string(300, '\0');
  write_bytes(tmp.file("v2.bin"), v2);
  EXPECT_HAS(error_of([&] { read_llama2c_model(tmp.file("v2.bin")); }),
             "unsupported llama2.c checkpoint version; expected the legacy format or version 1 (float32), got 2 "
             "(version 2 is int8-quantized");
  // A text file is not a checkpoint.
  write_bytes(tmp.file("text.bin"), "this is not a checkpoint, just some words in a file");
  EXPECT_HAS(error_of([&] { read_llama2c_model(tmp.file("text.bin")); }), "(not a llama2.c checkpoint?)");
}

// The "ak42" version-1 export of the same weights (norms first, no RoPE tables) reads identically.
TEST(IOLlama2c, Version1MatchesLegacy) {
  MLXTERP_REQUIRE_DATA(kBin);
  const std::string legacy = read_file(data_path(kBin));
  const int64_t d = 64, F = 172, L = 5, V = 512, kv = 32, seq = 512, hd = 8;
  // Legacy float order: tok_emb, att_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, final norm, freq_cis.
  size_t at = 28;
  auto take = [&](int64_t n) {
    std::string s = legacy.substr(at, size_t(n) * 4);
    at += size_t(n) * 4;
    return s;
  };
  std::string emb = take(V * d), att = take(L * d), wq = take(L * d * d), wk = take(L * kv * d), wv = take(L * kv * d),
              wo = take(L * d * d), ffn = take(L * d), w1 = take(L * F * d), w2 = take(L * d * F), w3 = take(L * F * d),
              norm = take(d);
  at += size_t(seq * hd) * 4;
  ASSERT_EQ(at, legacy.size());
  std::string v1 = "24ka";  // 0x616b3432 little-endian
  std::vector<int32_t> head = {1, int32_t(d), int32_t(F), int32_t(L), 8, 4, int32_t(V), int32_t(seq)};
  v1.append(reinterpret_cast<const char*>(head.data()), head.size() * 4);
  v1 += char(1);  // shared classifier
  v1.resize(256, '\0');
  v1 += att + ffn + norm + emb + wq + wk + wv + wo + w1 + w2 + w3;
  TempDir tmp;
  write_bytes(tmp.file("v1.bin"), v1);
  ModelFiles a = read_llama2c_model(data_path(kBin));
  ModelFiles b = read_llama2c_model(tmp.file("v1.bin"));
  ASSERT_EQ(a.weights.size(), b.weights.size());
  for (const auto& [name, t] : a.weights) EXPECT_TRUE(at::equal(b.weights.at(name), t)) << name;
  EXPECT_EQ(b.tokenizer_path, "");  // none beside it
  EXPECT_EQ(basename(a.tokenizer_path), "tok512.bin");
  v1.resize(v1.size() - 8);
  write_bytes(tmp.file("v1short.bin"), v1);
  EXPECT_HAS(error_of([&] { read_llama2c_model(tmp.file("v1short.bin")); }), "file size disagrees with its header");
}
