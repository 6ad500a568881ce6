// OLMo 3 against Hugging Face transformers: OLMo 2's block with sliding-window / full layers and rotary parameters per
// layer type (default rotary on the sliding layers, yarn with attention_factor on the full ones).
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFOlmo3, ForwardMatchesTransformers5Config) { hf::check_forward("olmo3", "config.json"); }
TEST(HFOlmo3, ForwardMatchesTransformers4Config) { hf::check_forward("olmo3", "config_v4.json"); }
TEST(HFOlmo3, PaddedBatchMatchesOnRealTokens) { hf::check_padded("olmo3"); }
TEST(HFOlmo3, GreedyGenerationMatchesHF) { hf::check_generate("olmo3"); }
TEST(HFOlmo3, Bf16WithinStatedBound) { hf::check_bf16("olmo3"); }

double logits_error(const hf::Golden& g, const nlohmann::json& j) {
  auto m = hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir));
  return max_abs_diff(m->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits"));
}

// The full layer's yarn rotary (with its attention_factor) and the sliding window both matter; without layer_types
// every 4th layer is full (Olmo3Config), and a 4.x config's rope_scaling is the full layers' alone.
TEST(HFOlmo3Sites, PerLayerTypeRopeAndWindows) {
  auto g = hf::load_golden("olmo3");
  nlohmann::json j = g.config.raw;
  j["rope_parameters"]["full_attention"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  EXPECT_GT(logits_error(g, j), 1e-3) << "default rotary on the full layer";
  j = g.config.raw;
  j["rope_parameters"]["full_attention"].erase("attention_factor");  // yarn's own 0.1 ln(8) + 1 instead of 1.2
  EXPECT_GT(logits_error(g, j), 1e-3) << "attention_factor";
  j = g.config.raw;
  j["sliding_window"] = 64;
  EXPECT_GT(logits_error(g, j), 1e-3) << "window wider than the batch";
  j = g.config.raw;
  j.erase("layer_types");
  EXPECT_LT(logits_error(g, j), 1e-4) << "layer_types derived";
  auto v4 = hf::load_golden("olmo3", "config_v4.json");
  j = v4.config.raw;
  j.erase("rope_local_base_freq");  // not an Olmo3 field: the sliding layers take rope_theta either way
  EXPECT_LT(logits_error(g, j), 1e-4) << "4.x rope_scaling applies to the full layers only";
  auto m = hf::build(g);
  EXPECT_EQ(m->config().rope_for_layer(3).type, "yarn");
  EXPECT_EQ(m->config().rope_for_layer(0).type, "default");
  EXPECT_GE(m->sites().find("model.layers.3.post_feedforward_layernorm"), 0);
}

TEST(HFOlmo3Sites, UnsupportedConfigsAreNamed) {
  auto g = hf::load_golden("olmo3");
  nlohmann::json j = g.config.raw;
  j["rope_parameters"]["full_attention"]["rope_type"] = "proportional";
  EXPECT_NE(error_of([&] { parse_hf_config(j, "config.json"); }).find("unsupported rope_type 'proportional'"),
            std::string::npos);
  j = g.config.raw;
  j["sliding_window"] = nullptr;
  EXPECT_NE(error_of([&] { parse_hf_config(j, "config.json"); }).find("no sliding_window"), std::string::npos);
}

}  // namespace
