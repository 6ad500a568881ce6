// GLM-4 (glm, glm4) and SmolLM3 against Hugging Face transformers: q/k/v bias, fused gate_up, half of each head
// rotated in the interleaved convention, glm4's post-attention / post-MLP norms; SmolLM3's NoPE layers.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFGlm, ForwardMatchesTransformers5Config) { hf::check_forward("glm", "config.json"); }
TEST(HFGlm, ForwardMatchesTransformers4Config) { hf::check_forward("glm", "config_v4.json"); }
TEST(HFGlm, PaddedBatchMatchesOnRealTokens) { hf::check_padded("glm"); }
TEST(HFGlm, GreedyGenerationMatchesHF) { hf::check_generate("glm"); }
TEST(HFGlm, Bf16WithinStatedBound) { hf::check_bf16("glm"); }
TEST(HFGlm4, ForwardMatchesTransformers5Config) { hf::check_forward("glm4", "config.json"); }
TEST(HFGlm4, ForwardMatchesTransformers4Config) { hf::check_forward("glm4", "config_v4.json"); }
TEST(HFGlm4, GreedyGenerationMatchesHF) { hf::check_generate("glm4"); }
TEST(HFGlm4, Bf16WithinStatedBound) { hf::check_bf16("glm4"); }
TEST(HFSmolLM3, ForwardMatchesTransformers5Config) { hf::check_forward("smollm3", "config.json"); }
TEST(HFSmolLM3, ForwardMatchesTransformers4Config) { hf::check_forward("smollm3", "config_v4.json"); }
TEST(HFSmolLM3, PaddedBatchMatchesOnRealTokens) { hf::check_padded("smollm3"); }
TEST(HFSmolLM3, GreedyGenerationMatchesHF) { hf::check_generate("smollm3"); }
TEST(HFSmolLM3, Bf16WithinStatedBound) { hf::check_bf16("smollm3"); }

TEST(HFGlmSites, FusedMlpAndPostNorms) {
  auto m = hf::build(hf::load_golden("glm4"));
  const SiteTable& S = m->sites();
  for (const char* s : {"mlp.gate_up_proj", "mlp.gate_proj", "mlp.up_proj", "post_self_attn_layernorm",
                        "post_mlp_layernorm"})
    EXPECT_GE(S.find(std::string("model.layers.0.") + s), 0) << s;
  EXPECT_LT(hf::build(hf::load_golden("glm"))->sites().find("model.layers.0.post_mlp_layernorm"), 0);
}

// The layer flagged 0 in no_rope_layers has no rotary embedding: rotating it (flag 1) changes the logits, and
// the interval rule (every 4th layer) is what SmolLM3Config derives when the list is absent.
TEST(HFSmolLM3Sites, NoRopeLayersMatter) {
  auto g = hf::load_golden("smollm3");
  nlohmann::json j = g.config.raw;
  j["no_rope_layers"] = {1, 1, 1};
  auto all_rope = hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir));
  EXPECT_GT(max_abs_diff(all_rope->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits")), 1e-3);
  j["no_rope_layers"] = {1, 2, 1};
  EXPECT_NE(error_of([&] { hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir)); })
                .find("must be 0 or 1"),
            std::string::npos);
  j.erase("no_rope_layers");
  j["no_rope_layer_interval"] = 2;  // -> [1, 0, 1], the golden's layers
  auto derived = hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir));
  hf::expect_close(derived->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits"), 1e-4,
                   "smollm3 with no_rope_layer_interval");
}

}  // namespace
