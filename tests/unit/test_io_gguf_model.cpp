// GGUF model reader (read_gguf_model): Llama-3.1 RoPE frequency factors (`rope_freqs.weight`) reproduce
// HF's llama3 scaling, partial rotary (`{arch}.rope.dimension_count`) un-permutes only the rotated rows,
// and files that disagree with themselves get clear errors.
#include <cmath>
#include <functional>

#include "common.hpp"
#include "models/blocks.hpp"
#include "mlxterp/model.hpp"
#include "test_io_util.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

const char* kGGUF = "models/stories260K/stories260K.gguf";
const char* kHF = "models/stories260K/hf";

std::string f32_bytes(const at::Tensor& t0) {
  at::Tensor t = t0.to(at::kFloat).contiguous();
  return std::string(reinterpret_cast<const char*>(t.data_ptr<float>()), size_t(t.numel()) * 4);
}

std::vector<uint64_t> ne_of(at::IntArrayRef shape) {
  return std::vector<uint64_t>(shape.rbegin(), shape.rend());
}

// Rewrites stories260K.gguf: `meta` may replace (return a value) or drop (return nullopt) each key and
// `extra_meta` adds keys; `tensors` may replace tensors by name (undefined = drop); `extra` adds tensors.
struct Rewrite {
  std::function<std::optional<GGUFValue>(const std::string&, const GGUFValue&)> meta;
  std::map<std::string, GGUFValue> extra_meta;
  std::map<std::string, at::Tensor> replace;
  std::set<std::string> drop;
  std::map<std::string, at::Tensor> extra;
};

void rewrite_stories(const std::string& dst, const Rewrite& rw) {
  GGUFFile g = GGUFFile::open(data_path(kGGUF));
  GGUFBuilder b;
  for (const auto& [k, v] : g.metadata()) {
    std::optional<GGUFValue> nv = rw.meta ? rw.meta(k, v) : std::optional<GGUFValue>(v);
    if (nv) b.add(k, *nv);
  }
  for (const auto& [k, v] : rw.extra_meta) b.add(k, v);
  for (const auto& info : g.tensor_infos()) {
    if (rw.drop.count(info.name)) continue;
    at::Tensor t = rw.replace.count(info.name) ? rw.replace.at(info.name) : g.tensor(info.name);
    b.tensor(info.name, ne_of(t.sizes()), 0, f32_bytes(t));
  }
  for (const auto& [name, t] : rw.extra) b.tensor(name, ne_of(t.sizes()), 0, f32_bytes(t));
  write_bytes(dst, b.build());
}

GGUFValue u32(uint64_t v) { return GGUFValue{v, 4}; }

// llama.cpp's convert_hf_to_gguf.py: per-frequency divisors for Llama-3.1 scaling, from float32 inv_freq.
std::vector<float> llama3_rope_factors(double theta, int64_t dim, double factor, double low, double high, double old_ctx) {
  at::Tensor idx = at::arange(0, dim, 2, at::kLong).to(at::kFloat);
  at::Tensor freqs = 1.0 / at::pow(at::scalar_tensor(theta, at::kFloat), idx / double(dim));
  std::vector<float> out;
  for (int64_t i = 0; i < freqs.numel(); ++i) {
    double f = freqs[i].item<float>();
    double wavelen = 2 * M_PI / f;
    if (wavelen < old_ctx / high) {
      out.push_back(1.f);
    } else if (wavelen > old_ctx / low) {
      out.push_back(float(factor));
    } else {
      double smooth = (old_ctx / wavelen - low) / (high - low);
      out.push_back(float(1 / ((1 - smooth) / factor + smooth)));
    }
  }
  return out;
}

at::Tensor run_logits(ModelFiles f, const at::Tensor& ids) {
  auto model = create_model(f.config, std::move(f.weights));
  Hooks h(model->sites());
  return model->forward(ids, {}, h).squeeze(0);
}

}  // namespace

TEST(IOGGUFModel, Llama3RopeFreqsMatchHFLlama3Scaling) {
  MLXTERP_REQUIRE_DATA(kGGUF);
  MLXTERP_REQUIRE_DATA(std::string(kHF) + "/model.safetensors");
  // stories260K: head_dim 8 -> 4 frequencies with wavelengths 6.3, 63, 628, 6283 tokens. With an original
  // context of 512 and low/high factors 1/16: one unscaled, one in the smoothed band, two divided by 8.
  const double factor = 8, low = 1, high = 16, old_ctx = 512;
  std::vector<float> ff = llama3_rope_factors(1e4, 8, factor, low, high, old_ctx);
  ASSERT_EQ(ff.size(), 4u);
  EXPECT_EQ(ff[0], 1.f);
  EXPECT_GT(ff[1], 1.f);
  EXPECT_LT(ff[1], 8.f);
  EXPECT_EQ(ff[3], 8.f);
  TempDir tmp;
  Rewrite rw;
  rw.extra["rope_freqs.weight"] = at::tensor(ff);
  rewrite_stories(tmp.file("l3.gguf"), rw);
  ModelFiles gguf = read_gguf_model(tmp.file("l3.gguf"));
  const RopeParams& rp = gguf.config.rope_for_layer(0);
  ASSERT_EQ(rp.freq_factors.size(), 4u);
  EXPECT_EQ(rp.freq_factors[1], double(ff[1]));
  EXPECT_EQ(gguf.weights.count("rope_freqs.weight"), 0u) << "frequency factors are config, not a weight";

  // HF's llama3 rope on the same weights.
  ModelFiles hf = read_hf_model(data_path(kHF));
  RopeParams l3 = hf.config.rope.at("default");
  l3.type = "llama3";
  l3.factor = factor;
  l3.low_freq_factor = low;
  l3.high_freq_factor = high;
  l3.original_max_position_embeddings = int64_t(old_ctx);
  hf.config.rope["default"] = l3;
  at::Tensor inv_gguf = blocks::make_rope(rp, 8, 2048).inv_freq;
  at::Tensor inv_hf = blocks::make_rope(l3, 8, 2048).inv_freq;
  at::Tensor inv_plain = blocks::make_rope(RopeParams{}, 8, 2048).inv_freq;
  EXPECT_LT(((inv_gguf - inv_hf).abs() / inv_hf).max().item<double>(), 1e-6) << inv_gguf << inv_hf;
  EXPECT_GT(((inv_plain - inv_hf).abs() / inv_hf).max().item<double>(), 0.5) << "the scaling must change something";

  // Whole model, positions up to 200 (the scaled frequencies matter there).
  at::Tensor ids = at::randint(0, 512, {1, 200}, at::TensorOptions().dtype(at::kLong));
  ModelFiles plain = read_gguf_model(data_path(kGGUF));
  at::Tensor a = run_logits(std::move(gguf), ids), b = run_logits(std::move(hf), ids), c = run_logits(std::move(plain), ids);
  EXPECT_LT(max_abs_diff(a, b), 1e-4) << "GGUF rope_freqs vs HF llama3 scaling";
  EXPECT_GT(max_abs_diff(a, c), 1e-2) << "rope_freqs had no effect";
}

TEST(IOGGUFModel, RopeFreqsOfTheWrongSizeIsAnError) {
  MLXTERP_REQUIRE_DATA(kGGUF);
  TempDir tmp;
  Rewrite rw;
  rw.extra["rope_freqs.weight"] = at::ones({3});
  rewrite_stories(tmp.file("bad.gguf"), rw);
  std::string msg = error_of([&] { read_gguf_model(tmp.file("bad.gguf")); });
  EXPECT_HAS(msg, "bad.gguf: rope_freqs.weight has the wrong size; expected one factor per rotated frequency (4), got "
                  "shape [3]");
  rw.extra["rope_freqs.weight"] = at::tensor(std::vector<float>{1, 1, 0, 1});
  rewrite_stories(tmp.file("zero.gguf"), rw);
  EXPECT_HAS(error_of([&] { read_gguf_model(tmp.file("zero.gguf")); }), "positive factors");
}

TEST(IOGGUFModel, PartialRotaryUnpermutesOnlyTheRotatedRows) {
  MLXTERP_REQUIRE_DATA(kGGUF);
  MLXTERP_REQUIRE_DATA(std::string(kHF) + "/model.safetensors");
  const int64_t d_head = 8, n_rot = 4;
  ModelFiles hf = read_hf_model(data_path(kHF));
  // llama.cpp rotates interleaved pairs (2i, 2i+1) of the first n_rot dims of each head; HF's rotate_half
  // pairs (i, i + n_rot/2). A GGUF made for n_rot = 4 holds HF row i at 2i and row i + 2 at 2i + 1.
  auto to_gguf_rows = [&](const at::Tensor& w) {
    at::Tensor out = w.clone();
    for (int64_t h = 0; h < w.size(0) / d_head; ++h)
      for (int64_t i = 0; i < n_rot / 2; ++i) {
        out[h * d_head + 2 * i] = w[h * d_head + i];
        out[h * d_head + 2 * i + 1] = w[h * d_head + i + n_rot / 2];
      }
    return out;
  };
  Rewrite rw;
  rw.meta = [](const std::string& k, const GGUFValue& v) -> std::optional<GGUFValue> {
    return k == "llama.rope.dimension_count" ? std::nullopt : std::optional<GGUFValue>(v);
  };
  rw.extra_meta["llama.rope.dimension_count"] = u32(n_rot);
  for (int l = 0; l < 5; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    rw.replace["blk." + std::to_string(l) + ".attn_q.weight"] = to_gguf_rows(hf.weights.at(p + "q_proj.weight"));
    rw.replace["blk." + std::to_string(l) + ".attn_k.weight"] = to_gguf_rows(hf.weights.at(p + "k_proj.weight"));
  }
  TempDir tmp;
  rewrite_stories(tmp.file("partial.gguf"), rw);
  ModelFiles g = read_gguf_model(tmp.file("partial.gguf"));
  for (const auto& [name, w] : hf.weights) EXPECT_TRUE(at::equal(g.weights.at(name), w)) << name;
  blocks::Rope r = blocks::make_rope(g.config.rope_for_layer(0), g.config.d_head, g.config.n_ctx);
  EXPECT_EQ(r.rot_dim, n_rot);
  EXPECT_EQ(r.inv_freq.numel(), n_rot / 2);
  // The model builds and runs with it.
  at::Tensor logits = run_logits(std::move(g), at::arange(1, 9, at::kLong).unsqueeze(0));
  EXPECT_TRUE(at::isfinite(logits).all().item<bool>());

  // An odd or oversized rotary dimension is rejected.
  rw.extra_meta["llama.rope.dimension_count"] = u32(3);
  rewrite_stories(tmp.file("odd.gguf"), rw);
  EXPECT_HAS(error_of([&] { read_gguf_model(tmp.file("odd.gguf")); }),
             "llama.rope.dimension_count must be an even number of rotated dimensions; expected 2 .. 8 (the head "
             "size), got 3");
  rw.extra_meta["llama.rope.dimension_count"] = u32(16);
  rewrite_stories(tmp.file("big.gguf"), rw);
  EXPECT_HAS(error_of([&] { read_gguf_model(tmp.file("big.gguf")); }), "got 16");
}

TEST(IOGGUFModel, InconsistentFilesGetClearErrors) {
  MLXTERP_REQUIRE_DATA(kGGUF);
  TempDir tmp;
  auto err = [&](const Rewrite& rw) {
    rewrite_stories(tmp.file("m.gguf"), rw);
    return error_of([&] { read_gguf_model(tmp.file("m.gguf")); });
  };
  auto replacing = [](const std::string& key, std::optional<GGUFValue> value) {
    Rewrite rw;
    rw.meta = [key, value](const std::string& k, const GGUFValue& v) -> std::optional<GGUFValue> {
      return k == key ? value : std::optional<GGUFValue>(v);
    };
    return rw;
  };
  EXPECT_HAS(err(replacing("llama.embedding_length", std::nullopt)),
             "m.gguf: metadata key 'llama.embedding_length' is missing; expected it in a llama model GGUF");
  EXPECT_HAS(err(replacing("general.architecture", GGUFValue{std::string("gpt9"), 8})),
             "unsupported GGUF architecture; expected one of llama, mistral, qwen2, qwen3, gemma");
  EXPECT_HAS(err(replacing("general.architecture", GGUFValue{std::string("gpt9"), 8})), "got 'gpt9'");
  EXPECT_HAS(err(replacing("llama.block_count", u32(4000000000u))),
             "llama.block_count is out of range; expected 1 .. 48 (the number of tensors), got 4000000000");
  EXPECT_HAS(err(replacing("llama.attention.head_count", u32(0))), "head_count must be > 0");
  EXPECT_HAS(err(replacing("llama.attention.head_count_kv", u32(3))),
             "num_attention_heads must be a multiple of num_key_value_heads; expected a multiple of 3, got 8");
  {
    Rewrite rw = replacing("llama.block_count", u32(4));  // five blocks of tensors, four announced
    EXPECT_HAS(err(rw), "unexpected tensor 'blk.4.");
  }
  {
    Rewrite rw;
    rw.drop.insert("blk.2.attn_k.weight");
    EXPECT_HAS(err(rw), "block 2 is incomplete; expected tensors 'blk.2.attn_q.weight' and 'blk.2.attn_k.weight'");
  }
  {
    Rewrite rw;
    rw.drop.insert("token_embd.weight");
    EXPECT_HAS(err(rw), "missing tensor 'token_embd.weight'");
  }
  {
    Rewrite rw;
    rw.extra["blk.0.attn_mystery.weight"] = at::ones({4});
    EXPECT_HAS(err(rw), "unexpected tensor 'blk.0.attn_mystery.weight'; expected only the tensors of a llama model");
  }
  // A config that disagrees with the weights passes the reader and is caught by create_model by shape.
  {
    rewrite_stories(tmp.file("ffn.gguf"), replacing("llama.feed_forward_length", u32(100)));
    ModelFiles f = read_gguf_model(tmp.file("ffn.gguf"));
    EXPECT_HAS(error_of([&] { create_model(f.config, std::move(f.weights)); }),
               "model: weight 'model.layers.0.mlp.down_proj.weight' has shape [64, 172]; the config implies [64, 100]");
  }
  // A vocabulary-only GGUF (no tensors) points the user at --tokenizer.
  if (file_exists(data_path("vocab-gguf/ggml-vocab-llama-spm.gguf"))) {
    EXPECT_HAS(error_of([&] { read_gguf_model(data_path("vocab-gguf/ggml-vocab-llama-spm.gguf")); }), "--tokenizer");
  }
}

// The llama3_rope HF golden (transformers 5.17, llama3 scaling with an original context of 16) converted
// to GGUF as llama.cpp's convert_hf_to_gguf.py does it — Q/K rows permuted for interleaved RoPE, scaling
// as rope_freqs.weight — reproduces transformers' logits.
TEST(IOGGUFModel, Llama3GoldenAsGGUFMatchesTransformers) {
  const std::string dir = golden_path("hf/llama3_rope");
  if (!file_exists(join_path(dir, "reference.safetensors"))) GTEST_SKIP() << "no HF golden at " << dir;
  auto cfg = nlohmann::json::parse(read_file(join_path(dir, "config.json")));
  const auto& rp = cfg["rope_parameters"];
  const int64_t H = cfg["num_attention_heads"], KV = cfg["num_key_value_heads"], L = cfg["num_hidden_layers"];
  const int64_t d_head = cfg["head_dim"];
  TensorMap hf = SafeTensors::open(join_path(dir, "model.safetensors")).all();
  // convert_hf_to_gguf's permute: rows [head][2][pair] -> [head][pair][2].
  auto permute = [](const at::Tensor& w, int64_t n_head) {
    return w.reshape({n_head, 2, w.size(0) / n_head / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
  };
  GGUFBuilder b;
  auto u32 = [&](const std::string& k, int64_t v) { b.add_u32(k, uint32_t(v)); };
  b.add_str("general.architecture", "llama");
  u32("llama.embedding_length", cfg["hidden_size"]);
  u32("llama.block_count", L);
  u32("llama.attention.head_count", H);
  u32("llama.attention.head_count_kv", KV);
  u32("llama.attention.key_length", d_head);
  u32("llama.attention.value_length", d_head);
  u32("llama.rope.dimension_count", d_head);
  u32("llama.feed_forward_length", cfg["intermediate_size"]);
  u32("llama.context_length", cfg["max_position_embeddings"]);
  b.add_f32("llama.rope.freq_base", rp["rope_theta"].get<float>());
  b.add_f32("llama.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"].get<float>());
  auto put = [&](const std::string& name, const at::Tensor& t) { b.tensor(name, ne_of(t.sizes()), 0, f32_bytes(t)); };
  put("token_embd.weight", hf.at("model.embed_tokens.weight"));
  put("output_norm.weight", hf.at("model.norm.weight"));
  put("rope_freqs.weight", at::tensor(llama3_rope_factors(rp["rope_theta"], d_head, rp["factor"], rp["low_freq_factor"],
                                                          rp["high_freq_factor"],
                                                          rp["original_max_position_embeddings"])));
  for (int64_t i = 0; i < L; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".", g = "blk." + std::to_string(i) + ".";
    put(g + "attn_norm.weight", hf.at(p + "input_layernorm.weight"));
    put(g + "attn_q.weight", permute(hf.at(p + "self_attn.q_proj.weight"), H));
    put(g + "attn_k.weight", permute(hf.at(p + "self_attn.k_proj.weight"), KV));
    put(g + "attn_v.weight", hf.at(p + "self_attn.v_proj.weight"));
    put(g + "attn_output.weight", hf.at(p + "self_attn.o_proj.weight"));
    put(g + "ffn_norm.weight", hf.at(p + "post_attention_layernorm.weight"));
    put(g + "ffn_gate.weight", hf.at(p + "mlp.gate_proj.weight"));
    put(g + "ffn_up.weight", hf.at(p + "mlp.up_proj.weight"));
    put(g + "ffn_down.weight", hf.at(p + "mlp.down_proj.weight"));
  }
  TempDir tmp;
  write_bytes(tmp.file("llama3.gguf"), b.build());
  ModelFiles f = read_gguf_model(tmp.file("llama3.gguf"));
  EXPECT_EQ(f.config.rope_for_layer(0).type, "default");
  EXPECT_EQ(f.config.rope_for_layer(0).freq_factors.size(), size_t(d_head / 2));
  for (const auto& [name, w] : hf) EXPECT_TRUE(at::equal(f.weights.at(name), w)) << name;
  TensorMap ref = SafeTensors::open(join_path(dir, "reference.safetensors")).all();
  at::Tensor ids = ref.at("input_ids").to(at::kLong);
  ModelConfig unscaled = f.config;
  unscaled.rope["default"].freq_factors.clear();
  TensorMap weights_copy = f.weights;
  auto model = create_model(f.config, std::move(f.weights));
  Hooks h(model->sites());
  at::Tensor logits = model->forward(ids, {}, h);
  double err = max_abs_diff(logits, ref.at("logits"));
  EXPECT_LT(err, 1e-4) << "GGUF with rope_freqs vs transformers' llama3 RoPE";
  // Without the factors the same weights give other logits (the test can tell).
  auto plain = create_model(unscaled, std::move(weights_copy));
  Hooks h2(plain->sites());
  EXPECT_GT(max_abs_diff(plain->forward(ids, {}, h2), ref.at("logits")), 1e-3);
}
