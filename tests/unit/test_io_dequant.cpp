// GGML dequantizers against an independent numpy reference (tests/reference/make_dequant_goldens.py),
// bit for bit; then end to end: quantized tensors inside a GGUF file, read through GGUFFile::tensor and
// read_gguf_model (stories260K re-quantized to Q8_0 / Q4_0 with a quantizer written here).
#include <cmath>

#include "common.hpp"
#include "mlxterp/model.hpp"
#include "test_io_util.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

struct Golden {
  std::string name;
  GGMLType type;
  size_t block_bytes, block_elems, n_blocks;
  std::string blocks;
  std::vector<float> values;
};

std::vector<Golden> load_goldens() {
  auto manifest = nlohmann::json::parse(read_file(golden_path("gguf_dequant/manifest.json")));
  std::vector<Golden> out;
  for (auto it = manifest.begin(); it != manifest.end(); ++it) {
    Golden g;
    g.name = it.key();
    g.type = GGMLType(it.value()["id"].get<uint32_t>());
    g.block_bytes = it.value()["block_bytes"].get<size_t>();
    g.block_elems = it.value()["block_elems"].get<size_t>();
    g.n_blocks = it.value()["n_blocks"].get<size_t>();
    g.blocks = read_file(golden_path("gguf_dequant/" + g.name + ".blocks"));
    std::string f = read_file(golden_path("gguf_dequant/" + g.name + ".f32"));
    g.values.resize(f.size() / 4);
    std::memcpy(g.values.data(), f.data(), f.size());
    out.push_back(std::move(g));
  }
  return out;
}

// Bitwise equality (so -0.0 vs 0.0 would count as a difference); reports the first mismatch.
void expect_bits_equal(const float* got, const float* want, size_t n, const std::string& what) {
  size_t bad = 0, first = n;
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(got + i, want + i, 4) != 0) {
      if (first == n) first = i;
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << n << " values differ; first at " << first << ": got "
                     << (first < n ? got[first] : 0.f) << ", want " << (first < n ? want[first] : 0.f);
}

TEST(IODequant, MatchesNumpyReferenceBitForBit) {
  auto goldens = load_goldens();
  ASSERT_EQ(goldens.size(), 10u) << "expected goldens for Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K";
  for (const auto& g : goldens) {
    SCOPED_TRACE(g.name);
    EXPECT_STREQ(ggml_type_name(g.type), g.name.c_str());
    EXPECT_EQ(ggml_block_bytes(g.type), g.block_bytes);
    EXPECT_EQ(ggml_block_elems(g.type), g.block_elems);
    ASSERT_EQ(g.blocks.size(), g.n_blocks * g.block_bytes);
    ASSERT_EQ(g.values.size(), g.n_blocks * g.block_elems);
    std::vector<float> out(g.values.size(), std::nanf(""));
    ggml_dequantize(g.type, reinterpret_cast<const uint8_t*>(g.blocks.data()), out.data(), out.size());
    expect_bits_equal(out.data(), g.values.data(), out.size(), g.name);
    // Not all zeros (a dequantizer that wrote nothing would fail above anyway; this guards the golden).
    double sum = 0;
    for (float v : g.values) sum += std::abs(v);
    EXPECT_GT(sum, 0.0);
  }
}

TEST(IODequant, RejectsUnsupportedTypesByName) {
  std::string msg = error_of([] { ggml_block_bytes(GGMLType(20)); });
  EXPECT_NE(msg.find("IQ4_NL"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected F32, F16, BF16, Q8_0"), std::string::npos) << msg;
  msg = error_of([] { ggml_block_elems(GGMLType(99)); });
  EXPECT_NE(msg.find("unsupported tensor type 99"), std::string::npos) << msg;
  std::vector<float> out(40);
  std::string bytes(40, '\0');
  msg = error_of([&] { ggml_dequantize(GGMLType::Q8_0, reinterpret_cast<const uint8_t*>(bytes.data()), out.data(), 40); });
  EXPECT_NE(msg.find("multiple of its block size 32"), std::string::npos) << msg;
}

// Every quantized type inside a GGUF: tensor() finds the bytes at their offset, keeps the shape and
// dequantizes exactly as the reference.
TEST(IODequant, QuantizedTensorsInsideGGUF) {
  auto goldens = load_goldens();
  TempDir tmp;
  GGUFBuilder b;
  b.add_str("general.architecture", "test");
  for (const auto& g : goldens) {
    // [n_blocks, block_elems] in PyTorch order = ne {block_elems, n_blocks}
    b.tensor("t." + g.name, {g.block_elems, g.n_blocks}, uint32_t(g.type), g.blocks);
  }
  write_bytes(tmp.file("q.gguf"), b.build());
  GGUFFile f = GGUFFile::open(tmp.file("q.gguf"));
  for (const auto& g : goldens) {
    SCOPED_TRACE(g.name);
    at::Tensor t = f.tensor("t." + g.name);
    ASSERT_EQ(t.scalar_type(), at::kFloat);
    ASSERT_EQ(t.sizes().vec(), (std::vector<int64_t>{int64_t(g.n_blocks), int64_t(g.block_elems)}));
    expect_bits_equal(t.contiguous().data_ptr<float>(), g.values.data(), g.values.size(), g.name);
  }
}

// ---- a quantized stories260K --------------------------------------------------------------------

// ggml's reference Q8_0 / Q4_0 quantizers (formulas from ggml-quants.c), one 32-element block at a time.
// Each returns the block bytes and writes the value the block decodes to into `deq` (computed here,
// independently of the library's dequantizer).
std::string quantize_q8_0(const float* x, float* deq) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::abs(x[j]));
  const float d = amax / 127.f, id = d ? 1.f / d : 0.f;
  const c10::Half dh(d);
  std::string out(34, '\0');
  std::memcpy(out.data(), &dh.x, 2);
  for (int j = 0; j < 32; ++j) {
    const int8_t q = int8_t(std::lround(x[j] * id));  // round half away from zero, as roundf
    out[2 + j] = char(q);
    deq[j] = float(dh) * float(q);
  }
  return out;
}

std::string quantize_q4_0(const float* x, float* deq) {
  float amax = 0, max = 0;
  for (int j = 0; j < 32; ++j)
    if (std::abs(x[j]) > amax) amax = std::abs(x[j]), max = x[j];
  const float d = max / -8.f, id = d ? 1.f / d : 0.f;
  const c10::Half dh(d);
  std::string out(18, '\0');
  std::memcpy(out.data(), &dh.x, 2);
  int q[32];
  for (int j = 0; j < 32; ++j) q[j] = std::min(15, int(int8_t(x[j] * id + 8.5f)));
  for (int j = 0; j < 16; ++j) out[2 + j] = char(q[j] | (q[j + 16] << 4));
  for (int j = 0; j < 32; ++j) deq[j] = float(dh) * float(q[j] - 8);
  return out;
}

// Rewrites stories260K.gguf with every tensor whose rows are a multiple of 32 quantized (as llama.cpp's
// quantizer does: others stay F32). Returns, by GGUF name, what each tensor must dequantize to.
std::map<std::string, at::Tensor> write_quantized(const std::string& src, const std::string& dst, GGMLType type) {
  GGUFFile g = GGUFFile::open(src);
  GGUFBuilder b;
  copy_metadata(g, b);
  std::map<std::string, at::Tensor> expect;
  for (const auto& info : g.tensor_infos()) {
    at::Tensor t = g.tensor(info.name).to(at::kFloat).contiguous();
    std::vector<uint64_t> ne(info.shape.rbegin(), info.shape.rend());
    if (t.dim() == 2 && t.size(1) % 32 == 0) {
      at::Tensor deq = at::empty_like(t);
      std::string bytes;
      const float* x = t.data_ptr<float>();
      float* y = deq.data_ptr<float>();
      for (int64_t i = 0; i < t.numel(); i += 32)
        bytes += type == GGMLType::Q8_0 ? quantize_q8_0(x + i, y + i) : quantize_q4_0(x + i, y + i);
      b.tensor(info.name, ne, uint32_t(type), bytes);
      expect[info.name] = deq;
    } else {
      b.tensor(info.name, ne, 0, std::string(reinterpret_cast<const char*>(t.data_ptr<float>()), t.numel() * 4));
      expect[info.name] = t;
    }
  }
  write_bytes(dst, b.build());
  return expect;
}

class QuantizedStories : public ::testing::TestWithParam<GGMLType> {};

}  // namespace

TEST_P(QuantizedStories, LoadsDequantizedWeightsInHFLayout) {
  MLXTERP_REQUIRE_DATA("models/stories260K/stories260K.gguf");
  MLXTERP_REQUIRE_DATA("models/stories260K/hf/model.safetensors");
  const GGMLType type = GetParam();
  TempDir tmp;
  const std::string path = tmp.file("stories260K-q.gguf");
  auto expect = write_quantized(data_path("models/stories260K/stories260K.gguf"), path, type);
  size_t n_quantized = 0;
  GGUFFile q = GGUFFile::open(path);
  for (const auto& info : q.tensor_infos()) {
    n_quantized += info.type == type;
    EXPECT_TRUE(at::equal(q.tensor(info.name), expect.at(info.name))) << info.name;
  }
  // token_embd, output (a copy of it), attn_q/k/v/output, ffn_gate/up (ffn_down's rows are 172 long: F32)
  EXPECT_EQ(n_quantized, 2u + 5 * 6);

  // Through the model reader: names mapped, Q/K un-permuted. Quantization acts on 32-wide blocks of one
  // row and the permutation only moves rows, so the result must equal the HF weights quantized the same way.
  ModelFiles gguf = read_gguf_model(path);
  ModelFiles hf = read_hf_model(data_path("models/stories260K/hf"));
  ASSERT_EQ(gguf.weights.size(), hf.weights.size());
  for (const auto& [name, w] : hf.weights) {
    ASSERT_TRUE(gguf.weights.count(name)) << name;
    at::Tensor want = w.to(at::kFloat).contiguous();
    if (want.dim() == 2 && want.size(1) % 32 == 0) {
      at::Tensor deq = at::empty_like(want);
      for (int64_t i = 0; i < want.numel(); i += 32) {
        if (type == GGMLType::Q8_0)
          quantize_q8_0(want.data_ptr<float>() + i, deq.data_ptr<float>() + i);
        else
          quantize_q4_0(want.data_ptr<float>() + i, deq.data_ptr<float>() + i);
      }
      want = deq;
    }
    EXPECT_TRUE(at::equal(gguf.weights.at(name), want)) << name << " differs after quantization";
  }

  // And it still runs: logits within the quantization error of the float model.
  MLXTERP_REQUIRE_DATA("reference/stories260K/forward_reference.json");
  auto ref = nlohmann::json::parse(read_file(data_path("reference/stories260K/forward_reference.json")));
  auto model = create_model(gguf.config, std::move(gguf.weights));
  at::Tensor ids = at::tensor(ref["input_tokens"].get<std::vector<int64_t>>(), at::kLong).unsqueeze(0);
  Hooks h(model->sites());
  at::Tensor logits = model->forward(ids, {}, h).squeeze(0);
  at::Tensor want = json_to_tensor(ref["logits"]);
  double err = max_abs_diff(logits, want), scale = want.abs().max().item<double>();
  const double bound = type == GGMLType::Q8_0 ? 0.02 : 0.25;  // relative to the largest logit
  EXPECT_LT(err / scale, bound) << ggml_type_name(type) << ": max logit error " << err << " (largest logit " << scale << ")";
  EXPECT_GT(err, 0.0) << "quantization should perturb the logits at least a little";
}

INSTANTIATE_TEST_SUITE_P(IODequant, QuantizedStories, ::testing::Values(GGMLType::Q8_0, GGMLType::Q4_0),
                         [](const auto& info) { return std::string(ggml_type_name(info.param)); });
