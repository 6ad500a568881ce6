// GGUF container: valid files read back, and every kind of malformed header gets an mlxterp::Error of
// the form "<file>: <what>; expected …, got …" — quickly, without huge allocations.
#include "common.hpp"
#include "test_io_util.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

// A small valid file: two metadata entries and two F32 tensors.
GGUFBuilder small_gguf() {
  GGUFBuilder b;
  b.add_str("general.architecture", "test");
  b.add_u32("test.count", 7);
  b.tensor_f32("a", {4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  b.tensor_f32("b", {3}, {-1, -2, -3});
  return b;
}

// Writes `b` and returns the error message of opening it ("" if it opened).
std::string open_error(const TempDir& tmp, const GGUFBuilder& b, const std::string& name = "x.gguf") {
  write_bytes(tmp.file(name), b.build());
  return error_of([&] { GGUFFile::open(tmp.file(name)); });
}

}  // namespace

TEST(IOGGUF, ReadsMetadataAndTensors) {
  TempDir tmp;
  write_bytes(tmp.file("ok.gguf"), small_gguf().build());
  GGUFFile g = GGUFFile::open(tmp.file("ok.gguf"));
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.get_string("general.architecture"), "test");
  EXPECT_EQ(g.get_int("test.count"), 7);
  EXPECT_EQ(g.get_int("missing", 5), 5);
  at::Tensor a = g.tensor("a");
  EXPECT_EQ(a.sizes().vec(), (std::vector<int64_t>{2, 4}));  // GGUF ne {4, 2} is PyTorch [2, 4]
  EXPECT_EQ(a[1][0].item<float>(), 5.f);
  EXPECT_TRUE(g.tensor_info("b") != nullptr);
  EXPECT_TRUE(g.tensor_info("c") == nullptr);
  // Typed access errors name the key and both types.
  std::string msg = error_of([&] { g.get_string("test.count"); });
  EXPECT_HAS(msg, "ok.gguf: metadata 'test.count' has type uint32; expected string");
  msg = error_of([&] { g.get_int("nope"); });
  EXPECT_HAS(msg, "metadata key 'nope' is missing");
  msg = error_of([&] { g.tensor("bb"); });
  EXPECT_HAS(msg, "no tensor 'bb'");
  EXPECT_HAS(msg, "did you mean 'b'");
}

TEST(IOGGUF, Version2IsReadVersion1And4AreNamed) {
  TempDir tmp;
  GGUFBuilder b = small_gguf();
  b.version = 2;
  EXPECT_EQ(open_error(tmp, b), "");
  b.version = 1;
  std::string msg = open_error(tmp, b, "v1.gguf");
  EXPECT_HAS(msg, "v1.gguf: GGUF version 1 is not supported; expected version 2 or 3, got 1");
  EXPECT_HAS(msg, "re-convert");
  b.version = 4;
  EXPECT_HAS(open_error(tmp, b), "unsupported GGUF version; expected 2 or 3, got 4");
  b.version = 0x03000000;  // a big-endian v3 file
  EXPECT_HAS(open_error(tmp, b), "big-endian");
}

TEST(IOGGUF, NotAGGUF) {
  TempDir tmp;
  write_bytes(tmp.file("n.gguf"), "{\"json\": true}");
  std::string msg = error_of([&] { GGUFFile::open(tmp.file("n.gguf")); });
  EXPECT_HAS(msg, "n.gguf: not a GGUF file; expected the magic 'GGUF' in the first 4 bytes, got \"{\\\"js\"");
  write_bytes(tmp.file("e.gguf"), "");
  EXPECT_HAS(error_of([&] { GGUFFile::open(tmp.file("e.gguf")); }), "not a GGUF file");
  EXPECT_HAS(error_of([&] { GGUFFile::open(tmp.file("missing.gguf")); }), "missing.gguf: cannot open");
}

TEST(IOGGUF, TruncatedAnywhereIsAnError) {
  TempDir tmp;
  const std::string full = small_gguf().build();
  write_bytes(tmp.file("full.gguf"), full);
  GGUFFile g = GGUFFile::open(tmp.file("full.gguf"));
  // Only padding follows the last tensor's bytes: every cut before them must fail.
  size_t data_end = 0;
  for (const auto& t : g.tensor_infos()) data_end = std::max<size_t>(data_end, g.data_offset() + t.offset + t.n_bytes);
  ASSERT_GT(data_end, 200u);
  for (size_t n = 0; n < data_end; ++n) {
    write_bytes(tmp.file("t.gguf"), full.substr(0, n));
    std::string msg = error_of([&] { GGUFFile::open(tmp.file("t.gguf")); });
    ASSERT_NE(msg, "") << "a file cut to " << n << " of " << full.size() << " bytes opened";
    EXPECT_HAS(msg, tmp.file("t.gguf"));
    EXPECT_TRUE(msg.find("truncated") != std::string::npos || msg.find("past the end") != std::string::npos ||
                msg.find("not a GGUF") != std::string::npos || msg.find("more than") != std::string::npos ||
                msg.find("expected at most") != std::string::npos)
        << "cut at " << n << ": " << msg;
  }
}

TEST(IOGGUF, AbsurdCountsFailFastWithoutAllocating) {
  TempDir tmp;
  Timer timer;
  {
    GGUFBuilder b = small_gguf();
    b.n_kv_override = uint64_t(1) << 60;
    EXPECT_HAS(open_error(tmp, b), "header claims 1152921504606846976 metadata entries; expected at most");
  }
  {
    GGUFBuilder b = small_gguf();
    b.n_tensors_override = ~uint64_t(0);
    EXPECT_HAS(open_error(tmp, b), "tensors; expected at most");
  }
  {
    GGUFBuilder b;  // a key whose length field is 2^62
    std::string payload;
    GGUFBuilder::put<uint64_t>(payload, uint64_t(1) << 62);
    b.kv = payload;
    b.n_kv = 1;
    EXPECT_HAS(open_error(tmp, b), "truncated while reading metadata key");
  }
  {
    GGUFBuilder b;  // an array of 2^40 uint8 in a tiny file
    std::string payload;
    GGUFBuilder::put<uint32_t>(payload, 0);
    GGUFBuilder::put<uint64_t>(payload, uint64_t(1) << 40);
    b.add_raw("big", 9, payload);
    EXPECT_HAS(open_error(tmp, b), "metadata 'big' claims 1099511627776 uint8 elements; expected at most");
  }
  {
    GGUFBuilder b;  // an array of 1000 strings in a file that could hold only a few
    std::string payload;
    GGUFBuilder::put<uint32_t>(payload, 8);
    GGUFBuilder::put<uint64_t>(payload, 1000);
    payload += std::string(100, '\0');
    b.add_raw("strs", 9, payload);
    EXPECT_HAS(open_error(tmp, b), "claims 1000 string elements");
  }
  {
    GGUFBuilder b;  // arrays nested five deep
    std::string payload;
    for (int i = 0; i < 6; ++i) {
      GGUFBuilder::put<uint32_t>(payload, 9);
      GGUFBuilder::put<uint64_t>(payload, 1);
    }
    payload += std::string(64, '\0');
    b.add_raw("deep", 9, payload.substr(0));
    EXPECT_HAS(open_error(tmp, b), "nested too deeply");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[0].ne = {uint64_t(1) << 45, 2};
    EXPECT_HAS(open_error(tmp, b), "tensor 'a' has an invalid dimension; expected 1 .. 2^40");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[0].ne = {uint64_t(1) << 30, uint64_t(1) << 30};  // 2^60 elements claimed, 32 bytes present
    EXPECT_HAS(open_error(tmp, b), "has an invalid dimension");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[0].ne = {uint64_t(1) << 20, uint64_t(1) << 10};  // 4 GB claimed
    EXPECT_HAS(open_error(tmp, b), "runs past the end of the file");
  }
  EXPECT_LT(timer.seconds(), 5.0) << "absurd headers must be rejected before any large allocation or loop";
}

TEST(IOGGUF, BadValuesAndTypes) {
  TempDir tmp;
  {
    GGUFBuilder b;
    b.add_raw("k", 77, "xxxxxxxx");
    EXPECT_HAS(open_error(tmp, b), "metadata 'k' has an unknown value type; expected 0 .. 12, got 77");
  }
  {
    GGUFBuilder b;
    b.add_raw("flag", 7, std::string(1, '\x02'));
    EXPECT_HAS(open_error(tmp, b), "metadata 'flag' is a bad bool; expected 0 or 1, got 2");
  }
  {
    GGUFBuilder b;
    b.add_u32("dup", 1);
    b.add_u32("dup", 2);
    EXPECT_HAS(open_error(tmp, b), "metadata key 'dup' appears twice");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[1].type = 20;  // IQ4_NL: a real type we cannot read
    std::string msg = open_error(tmp, b);
    EXPECT_HAS(msg, "x.gguf: tensor 'b': unsupported tensor type 20 (IQ4_NL); expected F32, F16, BF16, Q8_0");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[1].type = 250;
    EXPECT_HAS(open_error(tmp, b), "unsupported tensor type 250;");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[0].ne = {2, 2, 1, 1, 2};
    EXPECT_HAS(open_error(tmp, b), "tensor 'a' has a bad rank; expected 1 .. 4 dimensions, got 5");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[0].ne = {4, 0};
    EXPECT_HAS(open_error(tmp, b), "tensor 'a' has an invalid dimension");
  }
  {
    GGUFBuilder b;
    b.tensor("q", {48}, uint32_t(GGMLType::Q8_0), std::string(34 * 2, '\0'));
    EXPECT_HAS(open_error(tmp, b), "tensor 'q' of type Q8_0 has rows that do not fill whole blocks; expected a multiple "
                                   "of 32 elements, got 48");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[1].name = "a";
    EXPECT_HAS(open_error(tmp, b), "tensor 'a' appears twice");
  }
}

TEST(IOGGUF, OffsetsAreCheckedAgainstTheDataSection) {
  TempDir tmp;
  {
    GGUFBuilder b = small_gguf();
    b.tensors[1].offset = 8;  // misaligned
    EXPECT_HAS(open_error(tmp, b), "tensor 'b' is misaligned; expected an offset that is a multiple of "
                                   "general.alignment = 32, got 8");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[0].data = std::string(64, '\0');
    b.tensors[0].ne = {8, 2};  // 64 bytes at offset 0 ...
    b.tensors[1].offset = 32;  // ... and b inside them
    EXPECT_HAS(open_error(tmp, b), "tensors 'a' and 'b' overlap; expected 'b' to start at or after byte 64 of the data section, got 32");
  }
  {
    GGUFBuilder b = small_gguf();
    b.tensors[1].offset = 1 << 20;
    std::string built = b.build();
    write_bytes(tmp.file("far.gguf"), built.substr(0, built.size() - 32));  // drop the tensor's bytes
    std::string msg = error_of([&] { GGUFFile::open(tmp.file("far.gguf")); });
    EXPECT_HAS(msg, "far.gguf: tensor 'b' (F32 [3]) runs past the end of the file; expected bytes [1048576, 1048588)");
  }
}

TEST(IOGGUF, GeneralAlignmentIsHonouredAndChecked) {
  TempDir tmp;
  {
    GGUFBuilder b = small_gguf();
    b.alignment = 64;
    b.add_u32("general.alignment", 64);
    write_bytes(tmp.file("a64.gguf"), b.build());
    GGUFFile g = GGUFFile::open(tmp.file("a64.gguf"));
    EXPECT_EQ(g.tensor("b")[2].item<float>(), -3.f);  // data section found at the 64-byte boundary
    EXPECT_EQ(g.tensor_infos()[1].offset, 64u);
  }
  {
    GGUFBuilder b = small_gguf();
    b.add_u32("general.alignment", 0);
    EXPECT_HAS(open_error(tmp, b), "general.alignment must be a power of two; expected 1 .. 16777216, got 0");
  }
  {
    GGUFBuilder b = small_gguf();
    b.add_u32("general.alignment", 48);
    EXPECT_HAS(open_error(tmp, b), "got 48");
  }
  {
    GGUFBuilder b = small_gguf();
    b.add_str("general.alignment", "32");
    EXPECT_HAS(open_error(tmp, b), "general.alignment must be an integer; expected uint32, got string");
  }
  // save_gguf lays the data out by the alignment it writes.
  std::map<std::string, GGUFValue> meta = {{"general.alignment", GGUFValue{uint64_t(128), 4}},
                                           {"general.name", GGUFValue{std::string("x"), 8}}};
  TensorMap t = {{"w", at::arange(10, at::kFloat).view({2, 5})}, {"v", at::ones({3}, at::kHalf)}};
  save_gguf(tmp.file("saved.gguf"), meta, t);
  GGUFFile g = GGUFFile::open(tmp.file("saved.gguf"));
  for (const auto& info : g.tensor_infos()) EXPECT_EQ(info.offset % 128, 0u) << info.name;
  EXPECT_TRUE(at::equal(g.tensor("w"), t["w"]));
  EXPECT_TRUE(at::equal(g.tensor("v"), t["v"]));
  meta["general.alignment"] = GGUFValue{uint64_t(100), 4};
  EXPECT_HAS(error_of([&] { save_gguf(tmp.file("bad.gguf"), meta, t); }), "got 100");
  EXPECT_FALSE(file_exists(tmp.file("bad.gguf")));
}

TEST(IOGGUF, SaveRoundTripsEveryValueType) {
  TempDir tmp;
  auto arr = std::make_shared<GGUFValue::Array>();
  arr->push_back(GGUFValue{std::string("x"), 8});
  arr->push_back(GGUFValue{std::string("yz"), 8});
  std::map<std::string, GGUFValue> meta = {
      {"u8", GGUFValue{uint64_t(200), 0}},     {"i8", GGUFValue{int64_t(-5), 1}},
      {"u16", GGUFValue{uint64_t(60000), 2}},  {"i16", GGUFValue{int64_t(-300), 3}},
      {"u32", GGUFValue{uint64_t(1) << 31, 4}}, {"i32", GGUFValue{int64_t(-70000), 5}},
      {"f32", GGUFValue{0.5, 6}},              {"b", GGUFValue{true, 7}},
      {"s", GGUFValue{std::string("hé"), 8}},  {"arr", GGUFValue{arr, 9}},
      {"u64", GGUFValue{uint64_t(1) << 40, 10}}, {"i64", GGUFValue{int64_t(-1) << 40, 11}},
      {"f64", GGUFValue{0.1, 12}},
  };
  save_gguf(tmp.file("all.gguf"), meta, {{"t", at::zeros({2}, at::kBFloat16)}});
  GGUFFile g = GGUFFile::open(tmp.file("all.gguf"));
  EXPECT_EQ(g.get_int("u8"), 200);
  EXPECT_EQ(g.get_int("i8"), -5);
  EXPECT_EQ(g.get_int("u16"), 60000);
  EXPECT_EQ(g.get_int("i16"), -300);
  EXPECT_EQ(g.get_int("u32"), int64_t(1) << 31);
  EXPECT_EQ(g.get_int("i32"), -70000);
  EXPECT_EQ(g.get_float("f32"), 0.5);
  EXPECT_TRUE(g.get_bool("b"));
  EXPECT_EQ(g.get_string("s"), "hé");
  EXPECT_EQ(g.get_string_array("arr"), (std::vector<std::string>{"x", "yz"}));
  EXPECT_EQ(g.get_int("u64"), int64_t(1) << 40);
  EXPECT_EQ(g.get_int("i64"), int64_t(-1) << 40);
  EXPECT_EQ(g.get_float("f64"), 0.1);
  EXPECT_EQ(g.tensor("t").scalar_type(), at::kBFloat16);
  for (const auto& [k, v] : meta) EXPECT_EQ(g.metadata().at(k).type, v.type) << k;
}
