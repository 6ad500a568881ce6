// Llama relatives (src/models/llama_kin.cpp) against Hugging Face transformers: Arcee (ReLU² MLP without a gate),
// Seed-OSS (q/k/v bias, o_proj bias by its own flag), Ministral (per-layer sliding window), Helium (interleaved
// rotary, float32 norm weight), ERNIE 4.5 (interleaved rotary, biases everywhere). HunYuan, Nemotron and Apertus
// are in test_hf_golden_llama_kin2.cpp. Each family: the golden checks, one test that its distinctive feature
// matters (dropping it moves the logits off the golden), and one clear error for a config value we refuse.
#include "hf_golden.hpp"
#include "mlxterp/io.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFArcee, ForwardMatchesTransformers5Config) { hf::check_forward("arcee", "config.json"); }
TEST(HFArcee, ForwardMatchesTransformers4Config) { hf::check_forward("arcee", "config_v4.json"); }
TEST(HFArcee, PaddedBatchMatchesOnRealTokens) { hf::check_padded("arcee"); }
TEST(HFArcee, GreedyGenerationMatchesHF) { hf::check_generate("arcee"); }
TEST(HFArcee, Bf16WithinStatedBound) { hf::check_bf16("arcee"); }
TEST(HFSeedOss, ForwardMatchesTransformers5Config) { hf::check_forward("seed_oss", "config.json"); }
TEST(HFSeedOss, ForwardMatchesTransformers4Config) { hf::check_forward("seed_oss", "config_v4.json"); }
TEST(HFSeedOss, PaddedBatchMatchesOnRealTokens) { hf::check_padded("seed_oss"); }
TEST(HFSeedOss, GreedyGenerationMatchesHF) { hf::check_generate("seed_oss"); }
TEST(HFSeedOss, Bf16WithinStatedBound) { hf::check_bf16("seed_oss"); }
TEST(HFMinistral, ForwardMatchesTransformers5Config) { hf::check_forward("ministral", "config.json"); }
TEST(HFMinistral, ForwardMatchesTransformers4Config) { hf::check_forward("ministral", "config_v4.json"); }
TEST(HFMinistral, PaddedBatchMatchesOnRealTokens) { hf::check_padded("ministral"); }
TEST(HFMinistral, GreedyGenerationMatchesHF) { hf::check_generate("ministral"); }
TEST(HFMinistral, Bf16WithinStatedBound) { hf::check_bf16("ministral"); }
TEST(HFHelium, ForwardMatchesTransformers5Config) { hf::check_forward("helium", "config.json"); }
TEST(HFHelium, ForwardMatchesTransformers4Config) { hf::check_forward("helium", "config_v4.json"); }
TEST(HFHelium, PaddedBatchMatchesOnRealTokens) { hf::check_padded("helium"); }
TEST(HFHelium, GreedyGenerationMatchesHF) { hf::check_generate("helium"); }
TEST(HFHelium, Bf16WithinStatedBound) { hf::check_bf16("helium"); }
TEST(HFErnie45, ForwardMatchesTransformers5Config) { hf::check_forward("ernie4_5", "config.json"); }
TEST(HFErnie45, ForwardMatchesTransformers4Config) { hf::check_forward("ernie4_5", "config_v4.json"); }
TEST(HFErnie45, PaddedBatchMatchesOnRealTokens) { hf::check_padded("ernie4_5"); }
TEST(HFErnie45, GreedyGenerationMatchesHF) { hf::check_generate("ernie4_5"); }
TEST(HFErnie45, Bf16WithinStatedBound) { hf::check_bf16("ernie4_5"); }

// Arcee's MLP is up -> relu² -> down: no gate site, mlp.act_fn is mlp.hidden, and SiLU in place of relu² is
// another model. An activation with learned parameters (xielu) cannot be a plain name: refused when built.
TEST(HFArceeFeatures, ReluSquaredMlpWithoutGate) {
  auto g = hf::load_golden("arcee");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_LT(S.find("model.layers.0.mlp.gate_proj"), 0);
  EXPECT_EQ(S.resolve("model.layers.1.mlp.act_fn"), S.resolve("model.layers.1.mlp.hidden"));
  Hooks h(S);
  const int hid = S.resolve("model.layers.0.mlp.hidden");
  h.capture(hid);
  m->forward(g.ref.at("input_ids").to(test_device()), {}, h);
  EXPECT_GE(h.captured(hid).min().item<double>(), 0.0);  // relu² is never negative
  nlohmann::json j = g.config.raw;
  j["hidden_act"] = "silu";
  EXPECT_GT(max_abs_diff(hf::logits_with(g, j), g.ref.at("logits")), 1e-3);
  j["hidden_act"] = "xielu";
  EXPECT_NE(hf::build_error(g, j).find("unsupported activation 'xielu'"), std::string::npos) << hf::build_error(g, j);
}

// Seed-OSS biases q/k/v but not o_proj unless attention_out_bias: the flag asks for the weight, and a nonzero
// o_proj bias moves the logits (a zero one does not).
TEST(HFSeedOssFeatures, OutputBiasHasItsOwnFlag) {
  auto g = hf::load_golden("seed_oss");
  nlohmann::json j = g.config.raw;
  j["attention_out_bias"] = true;
  EXPECT_NE(hf::build_error(g, j).find("missing weight 'model.layers.0.self_attn.o_proj.bias'"), std::string::npos)
      << hf::build_error(g, j);
  TensorMap w = load_safetensors_model(g.dir);
  for (int i = 0; i < 2; ++i) w["model.layers." + std::to_string(i) + ".self_attn.o_proj.bias"] = at::zeros({32});
  hf::expect_close(hf::logits_with(g, j, w), g.ref.at("logits"), 1e-4, "seed_oss with a zero o_proj bias");
  for (int i = 0; i < 2; ++i) w["model.layers." + std::to_string(i) + ".self_attn.o_proj.bias"] = at::full({32}, 0.5);
  EXPECT_GT(max_abs_diff(hf::logits_with(g, j, w), g.ref.at("logits")), 1e-3);
  // Dropping the q/k/v biases (attention_bias false) leaves weights nothing uses: refused, not ignored.
  j = g.config.raw;
  j["attention_bias"] = false;
  EXPECT_NE(hf::build_error(g, j).find("unexpected weight"), std::string::npos) << hf::build_error(g, j);
  j["attention_out_bias"] = "yes";
  EXPECT_NE(hf::build_error(g, j).find("'attention_out_bias' must be true or false"), std::string::npos);
}

// Ministral's layer_types choose the window per layer: all-full or all-sliding is another model; a layer type
// we do not know is refused.
TEST(HFMinistralFeatures, LayerTypesPickTheWindow) {
  auto g = hf::load_golden("ministral");
  nlohmann::json j = g.config.raw;
  j["layer_types"] = {"full_attention", "full_attention", "full_attention"};
  EXPECT_GT(max_abs_diff(hf::logits_with(g, j), g.ref.at("logits")), 1e-3);
  j["layer_types"] = {"sliding_attention", "sliding_attention", "sliding_attention"};
  EXPECT_GT(max_abs_diff(hf::logits_with(g, j), g.ref.at("logits")), 1e-3);
  auto m = hf::build(g);
  EXPECT_TRUE(m->config().is_sliding(0));
  EXPECT_FALSE(m->config().is_sliding(1));
  j["layer_types"] = {"sliding_attention", "chunked_attention", "sliding_attention"};
  EXPECT_NE(hf::build_error(g, j).find("unsupported layer type 'chunked_attention'"), std::string::npos);
}

// Helium rotates adjacent pairs: the same weights as Seed-OSS (q/k/v bias, no o_proj bias, rotate_half) give
// other logits. Its o_proj is hidden_size wide, so heads x head_dim must equal hidden_size.
TEST(HFHeliumFeatures, InterleavedRotary) {
  auto g = hf::load_golden("helium");
  nlohmann::json j = g.config.raw;
  j["model_type"] = "seed_oss";
  j["attention_out_bias"] = false;
  EXPECT_GT(max_abs_diff(hf::logits_with(g, j), g.ref.at("logits")), 1e-3);
  j = g.config.raw;
  j["num_attention_heads"] = 2;
  j["num_key_value_heads"] = 2;
  EXPECT_NE(hf::build_error(g, j).find("num_attention_heads x head_dim == hidden_size"), std::string::npos)
      << hf::build_error(g, j);
}

// ERNIE 4.5 rotates adjacent pairs: as Llama (same biases: q/k/v/o and MLP, rotate_half) the logits move.
// use_bias must be a boolean; without it the checkpoint's biases are unexpected (ERNIE's default is no bias).
TEST(HFErnie45Features, InterleavedRotaryAndBiases) {
  auto g = hf::load_golden("ernie4_5");
  nlohmann::json j = g.config.raw;
  j["model_type"] = "llama";
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  EXPECT_GT(max_abs_diff(hf::logits_with(g, j), g.ref.at("logits")), 1e-3);
  j = g.config.raw;
  j.erase("use_bias");
  EXPECT_NE(hf::build_error(g, j).find("unexpected weight"), std::string::npos);
  j["use_bias"] = 1;
  EXPECT_NE(hf::build_error(g, j).find("'use_bias' must be true or false"), std::string::npos) << hf::build_error(g, j);
  // Tied by default (Ernie4_5Config), untied as the golden says.
  j = g.config.raw;
  j.erase("tie_word_embeddings");
  EXPECT_TRUE(parse_hf_config(j, "config.json").tie_word_embeddings);
  j["model_type"] = "seed_oss";
  EXPECT_FALSE(parse_hf_config(j, "config.json").tie_word_embeddings);
}

}  // namespace
