// HF config.json parsing, both transformers generations: 4.x rope_theta + rope_scaling, 5.x
// rope_parameters (single and per layer type), Qwen2's sliding-window switches, and bad values.
#include <filesystem>

#include "common.hpp"
#include "mlxterp/config.hpp"
#include "test_io_util.hpp"

using namespace mlxterp;
using nlohmann::json;

namespace {

json llama_base() {
  return json{{"model_type", "llama"},          {"hidden_size", 64},         {"num_hidden_layers", 4},
              {"num_attention_heads", 8},       {"num_key_value_heads", 4},  {"intermediate_size", 172},
              {"vocab_size", 512},              {"max_position_embeddings", 2048}, {"rms_norm_eps", 1e-6}};
}

ModelConfig parse(const json& j) { return parse_hf_config(j, "config.json"); }

std::string parse_error(const json& j) {
  return mlxterp::test::error_of([&] { parse(j); });
}

}  // namespace

TEST(IOHFConfig, Llama4xRopeScaling) {
  json j = llama_base();
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 32.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.d_head, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.norm_eps, 1e-6);
  EXPECT_FALSE(c.tie_word_embeddings);  // LlamaConfig's default
  const RopeParams& r = c.rope_for_layer(3);
  EXPECT_EQ(r.type, "llama3");
  EXPECT_EQ(r.theta, 500000.0);
  EXPECT_EQ(r.factor, 32.0);
  EXPECT_EQ(r.high_freq_factor, 4.0);
  EXPECT_EQ(r.original_max_position_embeddings, 8192);
  // Older configs say "type" instead of "rope_type".
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(parse(j).rope_for_layer(0).type, "linear");
  EXPECT_EQ(parse(j).rope_for_layer(0).factor, 2.0);
  j["rope_scaling"] = nullptr;  // explicit null = no scaling
  EXPECT_EQ(parse(j).rope_for_layer(0).type, "default");
  EXPECT_EQ(parse(j).rope_for_layer(0).theta, 500000.0);
}

TEST(IOHFConfig, Llama5xRopeParameters) {
  json j = llama_base();
  j["rope_parameters"] = {{"rope_type", "llama3"},
                          {"rope_theta", 500000.0},
                          {"factor", 8.0},
                          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  j["dtype"] = "bfloat16";  // 5.x name for torch_dtype
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope_for_layer(0).type, "llama3");
  EXPECT_EQ(c.rope_for_layer(0).theta, 500000.0);
  EXPECT_EQ(c.rope_for_layer(0).factor, 8.0);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  // The same model in the 4.x form parses to the same parameters, and to_hf_json (5.x) round-trips.
  json old = llama_base();
  old["rope_theta"] = 500000.0;
  old["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  for (const ModelConfig& other : {parse(old), parse(c.to_hf_json())}) {
    const RopeParams &a = c.rope_for_layer(0), &b = other.rope_for_layer(0);
    EXPECT_EQ(a.type, b.type);
    EXPECT_EQ(a.theta, b.theta);
    EXPECT_EQ(a.factor, b.factor);
    EXPECT_EQ(a.low_freq_factor, b.low_freq_factor);
    EXPECT_EQ(a.original_max_position_embeddings, b.original_max_position_embeddings);
    EXPECT_EQ(other.d_head, c.d_head);
    EXPECT_EQ(other.n_kv_heads, c.n_kv_heads);
  }
}

TEST(IOHFConfig, PerLayerTypeRopeGemma3) {
  // transformers 5.x Gemma 3: rope per layer type, layer_types listed.
  json j = {{"model_type", "gemma3_text"},
            {"hidden_size", 64},
            {"num_hidden_layers", 6},
            {"num_attention_heads", 4},
            {"num_key_value_heads", 1},
            {"head_dim", 32},
            {"intermediate_size", 128},
            {"vocab_size", 100},
            {"sliding_window", 512},
            {"layer_types", {"sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
                             "sliding_attention", "full_attention"}},
            {"rope_parameters",
             {{"full_attention", {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 1000000.0}}},
              {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}}}}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.arch, "gemma3");
  EXPECT_EQ(c.d_head, 32);
  EXPECT_TRUE(c.is_sliding(0));
  EXPECT_FALSE(c.is_sliding(5));
  EXPECT_EQ(c.rope_for_layer(0).theta, 10000.0);
  EXPECT_EQ(c.rope_for_layer(0).type, "default");
  EXPECT_EQ(c.rope_for_layer(5).theta, 1000000.0);
  EXPECT_EQ(c.rope_for_layer(5).type, "linear");
  EXPECT_EQ(c.rope_for_layer(5).factor, 8.0);

  // The 4.x form: rope_theta + rope_scaling for global layers, rope_local_base_freq for local ones,
  // layer kinds from sliding_window_pattern.
  json old = j;
  old.erase("rope_parameters");
  old.erase("layer_types");
  old["rope_theta"] = 1000000.0;
  old["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  old["rope_local_base_freq"] = 10000.0;
  old["sliding_window_pattern"] = 6;
  ModelConfig o = parse(old);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(o.is_sliding(i), c.is_sliding(i)) << i;
    EXPECT_EQ(o.rope_for_layer(i).theta, c.rope_for_layer(i).theta) << i;
    EXPECT_EQ(o.rope_for_layer(i).type, c.rope_for_layer(i).type) << i;
    EXPECT_EQ(o.rope_for_layer(i).factor, c.rope_for_layer(i).factor) << i;
  }
}

TEST(IOHFConfig, Qwen2SlidingWindowSwitches) {
  json j = llama_base();
  j["model_type"] = "qwen2";
  j["sliding_window"] = 4096;
  j["use_sliding_window"] = false;
  j["max_window_layers"] = 2;
  ModelConfig off = parse(j);
  EXPECT_FALSE(off.sliding_window.has_value());
  EXPECT_TRUE(off.attention_bias) << "Qwen2 has q/k/v biases by default";
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(off.is_sliding(i));
  j["use_sliding_window"] = true;
  ModelConfig on = parse(j);
  ASSERT_TRUE(on.sliding_window.has_value());
  EXPECT_EQ(*on.sliding_window, 4096);
  // Layers from max_window_layers on use the window (as transformers' Qwen2Config).
  EXPECT_FALSE(on.is_sliding(0));
  EXPECT_FALSE(on.is_sliding(1));
  EXPECT_TRUE(on.is_sliding(2));
  EXPECT_TRUE(on.is_sliding(3));
  // Mistral: a window applies to every layer; null means none.
  json m = llama_base();
  m["model_type"] = "mistral";
  m["sliding_window"] = 16;
  EXPECT_TRUE(parse(m).is_sliding(0));
  m["sliding_window"] = nullptr;
  EXPECT_FALSE(parse(m).is_sliding(0));
}

TEST(IOHFConfig, BadValuesAreNamed) {
  auto with = [](const char* key, json v) {
    json j = llama_base();
    j[key] = std::move(v);
    return j;
  };
  EXPECT_HAS(parse_error(with("hidden_size", -64)), "config.json: hidden_size must be positive; expected > 0, got -64");
  EXPECT_HAS(parse_error(with("vocab_size", 0)), "vocab_size must be positive; expected > 0, got 0");
  EXPECT_HAS(parse_error(with("num_key_value_heads", 3)),
             "config.json: num_attention_heads must be a multiple of num_key_value_heads; expected a multiple of 3, "
             "got 8");
  EXPECT_HAS(parse_error(with("hidden_size", "64")), "config.json: 'hidden_size' must be an integer, got \"64\"");
  EXPECT_HAS(parse_error(with("hidden_size", 64.5)), "'hidden_size' must be an integer, got 64.5");
  EXPECT_EQ(parse(with("hidden_size", 64.0)).d_model, 64);
  EXPECT_HAS(parse_error(with("hidden_size", 1e300)), "'hidden_size' must be an integer");
  EXPECT_HAS(parse_error(with("num_hidden_layers", 1 << 20)), "num_hidden_layers is implausibly large");
  EXPECT_HAS(parse_error(with("rms_norm_eps", -1.0)), "the norm epsilon must be finite and >= 0; got -1");
  EXPECT_HAS(parse_error(with("rope_theta", -10.0)), "rope_theta must be positive; expected > 0, got -10");
  EXPECT_HAS(parse_error(with("rope_scaling", json{{"rope_type", "magic"}})),
             "config.json: rope_scaling: unsupported rope_type 'magic'; expected default, linear, dynamic, llama3, yarn or "
             "longrope");
  EXPECT_HAS(parse_error(with("rope_scaling", json{{"rope_type", "llama3"}, {"factor", 8.0}})),
             "llama3 rope scaling needs original_max_position_embeddings > 0");
  EXPECT_HAS(parse_error(with("rope_scaling", json{{"rope_type", "linear"}, {"factor", 0.0}})),
             "rope scaling factor must be positive; expected > 0, got 0");
  EXPECT_HAS(parse_error(with("rope_parameters", json::array({1, 2}))), "'rope_parameters' must be an object");
  EXPECT_HAS(parse_error(with("layer_types", json{"full_attention"})),
             "layer_types has 1 entries; expected one per layer (4)");
  EXPECT_HAS(parse_error(with("layer_types", json{"full_attention", "full_attention", "chunked_attention", "x"})),
             "unsupported layer type 'chunked_attention'");
  EXPECT_HAS(parse_error(with("layer_types", json{"sliding_attention", "full_attention", "full_attention",
                                                  "full_attention"})),
             "sliding_attention layers but no sliding_window");
  EXPECT_HAS(parse_error(with("eos_token_id", json{"two"})), "'eos_token_id' must be an integer");
  json no_type = llama_base();
  no_type.erase("model_type");
  EXPECT_HAS(parse_error(no_type), "no 'model_type'; expected e.g. \"llama\"");
  no_type["architectures"] = json{7};
  EXPECT_HAS(parse_error(no_type), "no 'model_type'");
  no_type["architectures"] = json{"LlamaForCausalLM"};
  EXPECT_EQ(parse(no_type).arch, "llama");
  EXPECT_HAS(parse_error(json::array()), "config must be a JSON object");
  // eos_token_id given as a list (Llama 3.1) takes the first.
  EXPECT_EQ(parse(with("eos_token_id", json{128001, 128008})).eos_token_id, 128001);
}

// Real transformers output: every golden model's config.json (5.x, as transformers 5.17 saved it) and
// config_v4.json (the same model in the 4.x form) parse to the same ModelConfig.
TEST(IOHFConfig, TransformersFourAndFiveFormsAgreeOnEveryGolden) {
  const std::string root = mlxterp::test::golden_path("hf");
  if (!is_directory(root)) GTEST_SKIP() << "no HF goldens at " << root;
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    const std::string dir = e.path().string();
    if (!file_exists(join_path(dir, "config_v4.json"))) continue;
    SCOPED_TRACE(dir);
    ModelConfig v5 = parse_hf_config(json::parse(read_file(join_path(dir, "config.json"))), "config.json");
    ModelConfig v4 = parse_hf_config(json::parse(read_file(join_path(dir, "config_v4.json"))), "config_v4.json");
    EXPECT_EQ(v4.arch, v5.arch);
    EXPECT_EQ(v4.d_model, v5.d_model);
    EXPECT_EQ(v4.n_layers, v5.n_layers);
    EXPECT_EQ(v4.n_heads, v5.n_heads);
    EXPECT_EQ(v4.n_kv_heads, v5.n_kv_heads);
    EXPECT_EQ(v4.d_head, v5.d_head);
    EXPECT_EQ(v4.d_mlp, v5.d_mlp);
    EXPECT_EQ(v4.d_vocab, v5.d_vocab);
    EXPECT_EQ(v4.norm_eps, v5.norm_eps);
    EXPECT_EQ(v4.tie_word_embeddings, v5.tie_word_embeddings);
    EXPECT_EQ(v4.attention_bias, v5.attention_bias);
    EXPECT_EQ(v4.qk_norm, v5.qk_norm);
    EXPECT_EQ(v4.sliding_window, v5.sliding_window);
    EXPECT_EQ(v4.layer_types, v5.layer_types);
    for (int64_t i = 0; i < v5.n_layers; ++i) {
      const RopeParams &a = v4.rope_for_layer(i), &b = v5.rope_for_layer(i);
      EXPECT_EQ(a.type, b.type) << "layer " << i;
      EXPECT_EQ(a.theta, b.theta) << "layer " << i;
      EXPECT_EQ(a.factor, b.factor) << "layer " << i;
      EXPECT_EQ(a.low_freq_factor, b.low_freq_factor) << "layer " << i;
      EXPECT_EQ(a.high_freq_factor, b.high_freq_factor) << "layer " << i;
      EXPECT_EQ(a.original_max_position_embeddings, b.original_max_position_embeddings) << "layer " << i;
      EXPECT_EQ(a.partial_rotary_factor, b.partial_rotary_factor) << "layer " << i;
    }
    ++n;
  }
  EXPECT_GE(n, 10) << "expected the HF goldens of tests/golden/hf";
}
