// safetensors: round trips in every dtype, sharded checkpoints (model.safetensors.index.json), reduced-
// precision models, and every malformed header or directory named in the error, with what was expected.
#include "common.hpp"
#include "mlxterp/model.hpp"
#include "test_io_util.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

const char* kHF = "models/stories260K/hf";

// A safetensors file from a literal header and data section.
std::string st_bytes(const std::string& header, const std::string& data) {
  std::string s;
  uint64_t n = header.size();
  s.append(reinterpret_cast<const char*>(&n), 8);
  return s + header + data;
}

std::string open_error(const TempDir& tmp, const std::string& bytes, const std::string& name = "x.safetensors") {
  write_bytes(tmp.file(name), bytes);
  return error_of([&] { SafeTensors::open(tmp.file(name)); });
}

void copy_file(const std::string& from, const std::string& to) { write_bytes(to, read_file(from)); }

}  // namespace

TEST(IOSafetensors, RoundTripsEveryDtype) {
  TempDir tmp;
  TensorMap t = {
      {"f32", at::randn({3, 5})},
      {"f16", at::randn({4, 2}).to(at::kHalf)},
      {"bf16", at::randn({7}).to(at::kBFloat16)},
      {"f64", at::randn({2, 2}, at::kDouble)},
      {"i64", at::arange(6, at::kLong).view({2, 3})},
      {"i32", at::arange(5, at::kInt)},
      {"i8", at::arange(-3, 3, at::kChar)},
      {"u8", at::arange(200, 205, at::kByte)},
      {"bool", at::tensor(std::vector<int64_t>{1, 0, 1}).to(at::kBool)},
      {"scalar", at::scalar_tensor(2.5)},
      {"empty", at::zeros({0, 4})},
  };
  save_safetensors(tmp.file("all.safetensors"), t, {{"format", "pt"}});
  SafeTensors st = SafeTensors::open(tmp.file("all.safetensors"));
  EXPECT_EQ(st.metadata().at("format"), "pt");
  ASSERT_EQ(st.names().size(), t.size());
  for (const auto& [name, want] : t) {
    at::Tensor got = st.get(name);
    EXPECT_EQ(got.scalar_type(), want.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), want.sizes()) << name;
    EXPECT_TRUE(at::equal(got, want)) << name;  // bit-exact: no conversion on the way
  }
  EXPECT_HAS(error_of([&] { st.get("f33"); }), "all.safetensors: no tensor 'f33' (did you mean 'f32'?)");
}

TEST(IOSafetensors, MalformedHeadersAreNamed) {
  TempDir tmp;
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data8(8, '\0');
  EXPECT_EQ(open_error(tmp, st_bytes(ok_header, data8)), "");

  EXPECT_HAS(open_error(tmp, "abc", "short.safetensors"),
             "short.safetensors: file too short for a safetensors header; expected at least 8 bytes, got 3");
  {
    std::string b = st_bytes(ok_header, data8);
    uint64_t huge = uint64_t(1) << 40;
    std::memcpy(b.data(), &huge, 8);
    EXPECT_HAS(open_error(tmp, b), "header length runs past the end of the file; expected at most 62 bytes, got "
                                   "1099511627776");
  }
  EXPECT_HAS(open_error(tmp, st_bytes("{\"a\": [1, 2", "")), "header is not valid JSON; expected a JSON object");
  EXPECT_HAS(open_error(tmp, st_bytes("[1, 2]", "")), "header must be a JSON object; expected an object, got array");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "xx")),
             "tensor 'a' has an unknown dtype; expected one of F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, got "
             "'F8_E4M3'");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8)),
             "tensor 'a' has data_offsets that disagree with its shape; expected [3] x f32 = 12 bytes, got 8 bytes");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data8)),
             "tensor 'a' runs past the end of the file; expected data_offsets within the 8-byte data section, got [0, 16)");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data8)),
             "tensor 'a' has reversed data_offsets");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                      std::string(12, '\0'))),
             "tensors 'a' and 'b' overlap; expected 'b' to start at or after byte 8, got 4");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})", "")),
             "tensor 'a' has an impossibly large shape; expected at most 2^60 elements, got shape [4611686018427387904]");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}})",
                                      data8)),
             "tensor 'a' has an impossibly large shape");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8)),
             "tensor 'a' has a malformed shape; expected non-negative integers, got -2");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F32","shape":[2]}})", data8)),
             "tensor 'a' has a malformed entry; expected an object with dtype, shape and data_offsets");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", data8)),
             "tensor 'a' has malformed data_offsets; expected two non-negative integers");
  EXPECT_HAS(open_error(tmp, st_bytes(R"({"__metadata__":{"k":1}})", "")),
             "__metadata__['k'] must be a string; expected a string, got number");
  // Empty tensors may share an offset with anything.
  EXPECT_EQ(open_error(tmp, st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                     R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                                     data8)),
            "");
}

TEST(IOSafetensors, ShardedCheckpoints) {
  TempDir tmp;
  TensorMap a = {{"x", at::randn({4})}, {"y", at::randn({2, 2})}};
  TensorMap b = {{"z", at::randn({3}).to(at::kBFloat16)}};
  save_safetensors(tmp.file("model-00001-of-00002.safetensors"), a);
  save_safetensors(tmp.file("model-00002-of-00002.safetensors"), b);
  auto write_index = [&](const nlohmann::json& map) {
    write_file_atomic(tmp.file("model.safetensors.index.json"),
                      nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", map}}.dump());
  };
  nlohmann::json good = {{"x", "model-00001-of-00002.safetensors"},
                         {"y", "model-00001-of-00002.safetensors"},
                         {"z", "model-00002-of-00002.safetensors"}};
  write_index(good);
  TensorMap all = load_safetensors_model(tmp.path);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_TRUE(at::equal(all.at("x"), a.at("x")));
  EXPECT_TRUE(at::equal(all.at("z"), b.at("z")));

  // The index names a tensor its shard does not hold.
  nlohmann::json missing = good;
  missing["w"] = "model-00002-of-00002.safetensors";
  write_index(missing);
  std::string msg = error_of([&] { load_safetensors_model(tmp.path); });
  EXPECT_HAS(msg, "model-00002-of-00002.safetensors: missing tensor 'w'; expected it here, as "
                  "model.safetensors.index.json says");
  // A shard holds a tensor the index does not list.
  nlohmann::json extra = good;
  extra.erase("y");
  write_index(extra);
  msg = error_of([&] { load_safetensors_model(tmp.path); });
  EXPECT_HAS(msg, "model-00001-of-00002.safetensors: unexpected tensor 'y'; expected only the tensors "
                  "model.safetensors.index.json assigns to this shard");
  // A listed shard is missing.
  nlohmann::json gone = good;
  gone["z"] = "model-00003-of-00003.safetensors";
  write_index(gone);
  EXPECT_HAS(error_of([&] { load_safetensors_model(tmp.path); }),
             "model.safetensors.index.json: lists a shard that is missing; expected 'model-00003-of-00003.safetensors'");
  // Paths outside the directory are refused.
  nlohmann::json escape = good;
  escape["z"] = "../model-00002-of-00002.safetensors";
  write_index(escape);
  EXPECT_HAS(error_of([&] { load_safetensors_model(tmp.path); }), "got '../model-00002-of-00002.safetensors'");
  // A malformed index.
  write_file_atomic(tmp.file("model.safetensors.index.json"), "{\"weights\": {}}");
  EXPECT_HAS(error_of([&] { load_safetensors_model(tmp.path); }), "no weight_map; expected a 'weight_map' object");
  write_file_atomic(tmp.file("model.safetensors.index.json"), "{oops");
  EXPECT_HAS(error_of([&] { load_safetensors_model(tmp.path); }), "index.json: not valid JSON");
  // No weights at all.
  TempDir empty;
  EXPECT_HAS(error_of([&] { load_safetensors_model(empty.path); }),
             "no model.safetensors or model.safetensors.index.json; expected a Hugging Face model directory");
}

// stories260K split into two shards loads into the same weights as the single file.
TEST(IOSafetensors, ShardedModelMatchesSingleFile) {
  MLXTERP_REQUIRE_DATA(std::string(kHF) + "/model.safetensors");
  ModelFiles single = read_hf_model(data_path(kHF));
  TempDir tmp;
  copy_file(data_path(std::string(kHF) + "/config.json"), tmp.file("config.json"));
  TensorMap s1, s2;
  nlohmann::json map = nlohmann::json::object();
  for (const auto& [name, t] : single.weights) {
    bool first = name.find("layers.3") == std::string::npos && name.find("layers.4") == std::string::npos;
    (first ? s1 : s2)[name] = t;
    map[name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  save_safetensors(tmp.file("model-00001-of-00002.safetensors"), s1);
  save_safetensors(tmp.file("model-00002-of-00002.safetensors"), s2);
  write_file_atomic(tmp.file("model.safetensors.index.json"), nlohmann::json{{"weight_map", map}}.dump());
  ModelFiles sharded = read_hf_model(tmp.path);
  ASSERT_EQ(sharded.weights.size(), single.weights.size());
  for (const auto& [name, t] : single.weights) EXPECT_TRUE(at::equal(sharded.weights.at(name), t)) << name;
  // load_model on the directory builds the model.
  LoadOptions o;
  o.load_tokenizer = false;
  LoadedModel m = load_model(tmp.path, o);
  EXPECT_EQ(m.model->config().n_layers, 5);
}

// bf16 and f16 checkpoints load and, computed in f32, stay within their rounding of the f32 model.
TEST(IOSafetensors, HalfPrecisionCheckpoints) {
  MLXTERP_REQUIRE_DATA(std::string(kHF) + "/model.safetensors");
  ModelFiles f32 = read_hf_model(data_path(kHF));
  at::Tensor ids = at::arange(1, 17, at::kLong).unsqueeze(0);
  auto logits = [&](ModelFiles f) {
    auto m = create_model(f.config, std::move(f.weights));
    m->to(at::kCPU, at::kFloat);
    Hooks h(m->sites());
    return m->forward(ids, {}, h).squeeze(0);
  };
  at::Tensor want = logits(read_hf_model(data_path(kHF)));
  for (at::ScalarType dt : {at::kBFloat16, at::kHalf}) {
    TempDir tmp;
    copy_file(data_path(std::string(kHF) + "/config.json"), tmp.file("config.json"));
    TensorMap w;
    for (const auto& [name, t] : f32.weights) w[name] = t.to(dt);
    save_safetensors(tmp.file("model.safetensors"), w);
    ModelFiles half = read_hf_model(tmp.path);
    for (const auto& [name, t] : half.weights) {
      ASSERT_EQ(t.scalar_type(), dt) << name;
      EXPECT_TRUE(at::equal(t, w.at(name))) << name;
    }
    double err = max_abs_diff(logits(std::move(half)), want);
    // Weight rounding only (relative 2^-8 for bf16, 2^-11 for f16) on logits of magnitude ~10.
    EXPECT_LT(err, dt == at::kBFloat16 ? 0.5 : 0.05) << dtype_str(dt);
    EXPECT_GT(err, 0.0) << dtype_str(dt);
  }
}

// config.json that disagrees with the weights: create_model names the weight and what the config implies.
TEST(IOSafetensors, ConfigThatDisagreesWithWeights) {
  MLXTERP_REQUIRE_DATA(std::string(kHF) + "/model.safetensors");
  auto base = nlohmann::json::parse(read_file(data_path(std::string(kHF) + "/config.json")));
  auto load_with = [&](const nlohmann::json& cfg, const TensorMap* weights = nullptr) {
    TempDir tmp;
    write_file_atomic(tmp.file("config.json"), cfg.dump());
    if (weights)
      save_safetensors(tmp.file("model.safetensors"), *weights);
    else
      copy_file(data_path(std::string(kHF) + "/model.safetensors"), tmp.file("model.safetensors"));
    LoadOptions o;
    o.load_tokenizer = false;
    return error_of([&] { load_model(tmp.path, o); });
  };
  EXPECT_EQ(load_with(base), "");
  nlohmann::json c = base;
  c["intermediate_size"] = 100;
  EXPECT_HAS(load_with(c), "model: weight 'model.layers.0.mlp.down_proj.weight' has shape [64, 172]; the config implies "
                           "[64, 100]");
  c = base;
  c["num_hidden_layers"] = 4;
  EXPECT_HAS(load_with(c), "model: unexpected weight 'model.layers.4.");
  c = base;
  c["num_hidden_layers"] = 6;
  EXPECT_HAS(load_with(c), "model: missing weight 'model.layers.5.");
  c = base;
  c["num_hidden_layers"] = 100000;
  EXPECT_HAS(load_with(c), "implausibly large");
  c = base;
  c["num_hidden_layers"] = 10000;
  EXPECT_HAS(load_with(c), "the config has 10000 layers but the checkpoint only");
  c = base;
  c["vocab_size"] = 1000;
  EXPECT_HAS(load_with(c), "model: weight 'model.embed_tokens.weight' has shape [512, 64]; the config implies [1000, 64]");
  c = base;
  c["tie_word_embeddings"] = false;
  EXPECT_HAS(load_with(c), "model: missing weight 'lm_head.weight'");
  // Extra and missing tensors in the weights themselves.
  ModelFiles f = read_hf_model(data_path(kHF));
  TensorMap extra = f.weights;
  extra["model.layers.0.self_attn.mystery.weight"] = at::ones({2});
  EXPECT_HAS(load_with(base, &extra), "model: unexpected weight 'model.layers.0.self_attn.mystery.weight' (shape [2])");
  TensorMap fewer = f.weights;
  fewer.erase("model.norm.weight");
  EXPECT_HAS(load_with(base, &fewer), "model: missing weight 'model.norm.weight' (shape [64])");
}
