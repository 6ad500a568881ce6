// gpt-oss against Hugging Face transformers 5.17: attention sinks, alternating sliding / full layers, q/k/v/o
// biases, YaRN without truncation, and the top-k experts with the clamped SwiGLU over interleaved gate / up.
#include "hf_golden.hpp"
#include "mlxterp/error.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFGptOss, ForwardMatchesTransformers5Config) { hf::check_forward("gpt_oss", "config.json"); }
TEST(HFGptOss, ForwardMatchesTransformers4Config) { hf::check_forward("gpt_oss", "config_v4.json"); }
TEST(HFGptOss, RoutingMatchesHF) {
  hf::check_routing("gpt_oss", "config.json");
  hf::check_routing("gpt_oss", "config_v4.json");
}
TEST(HFGptOss, PaddedBatchMatchesOnRealTokens) { hf::check_padded("gpt_oss"); }
TEST(HFGptOss, GreedyGenerationMatchesHF) { hf::check_generate("gpt_oss"); }
TEST(HFGptOss, Bf16WithinStatedBound) { hf::check_bf16("gpt_oss"); }

// The sinks take probability mass: each head's weights over the real keys sum to less than 1, and a model
// without them (sinks at -inf: the plain softmax) gives other logits.
TEST(HFGptOssSites, SinksTakeProbabilityMass) {
  auto g = hf::load_golden("gpt_oss");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  Hooks h(S);
  const int w = S.resolve("model.layers.1.self_attn.attention_weights");
  h.capture(w);
  at::Tensor ids = g.ref.at("input_ids").to(test_device());
  m->forward(ids, {}, h);
  at::Tensor row_sums = h.captured(w).sum(-1).cpu();  // [b, H, t]
  EXPECT_LT(row_sums.max().item<double>(), 1.0 - 1e-5);  // without sinks: 1 to float rounding
  EXPECT_GT(row_sums.min().item<double>(), 0.0);
  hf::expect_close(h.captured(w), g.ref.at("attn_weights.1"), 1e-5, "gpt_oss attention weights");

  TensorMap weights = load_safetensors_model(g.dir);
  for (int i = 0; i < 2; ++i) {  // (the loaded tensors map the file read-only: replace, do not fill)
    at::Tensor& s = weights["model.layers." + std::to_string(i) + ".self_attn.sinks"];
    s = at::full_like(s, -std::numeric_limits<float>::infinity());
  }
  auto no_sinks = hf::build(g.config, std::move(weights));
  EXPECT_GT(max_abs_diff(no_sinks->forward(ids), g.ref.at("logits")), 1e-3);
}

// YaRN's correction range is not rounded when truncate is false (gpt-oss); rounding it moves the logits.
TEST(HFGptOssSites, YarnTruncateFlagMatters) {
  auto g = hf::load_golden("gpt_oss");
  nlohmann::json j = g.config.raw;
  j["rope_parameters"]["truncate"] = true;
  auto rounded = hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir));
  EXPECT_GT(max_abs_diff(rounded->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits")), 1e-4);
}

// HF's module name mlp.router is the router-logits site; the expert sites recombine into the block output.
TEST(HFGptOssSites, RouterAliasAndExpertSites) {
  auto g = hf::load_golden("gpt_oss");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("model.layers.0.mlp.router"), S.resolve("model.layers.0.mlp.gate"));
  Hooks h(S);
  h.capture_all(/*include_on_request=*/true);
  m->forward(g.ref.at("input_ids").to(test_device()), {}, h);
  const std::string p = "model.layers.0.mlp";
  at::Tensor rw = h.captured(S.resolve(p + ".routing_weights"));  // [b, t, E]
  at::Tensor sum = at::zeros_like(h.captured(S.resolve(p)));
  for (int e = 0; e < 4; ++e)
    sum = sum + rw.select(-1, e).unsqueeze(-1) * h.captured(S.resolve(p + ".experts." + std::to_string(e)));
  hf::expect_close(sum, h.captured(S.resolve(p)), 1e-5, "gpt_oss experts recombined");
  EXPECT_TRUE(at::equal((rw != 0).sum(-1).cpu(), at::full({2, 12}, 2, at::kLong)));
  hf::expect_close(rw.sum(-1), at::ones({2, 12}), 1e-6, "gpt_oss routing weights sum to 1");
}

// OpenAI's checkpoints keep the experts in MXFP4 (uint8 blocks of e2m1 pairs + e8m0 scales). The golden is a tiny
// random one (tests/reference/make_gpt_oss_mxfp4_golden.py); HF's loader dequantized it: our experts must equal HF's
// bit for bit, and the logits must match.
TEST(HFGptOssMxfp4, ExpertsDequantizeAsHF) {
  auto g = hf::load_golden("gpt_oss_mxfp4");
  TensorMap packed = load_safetensors_model(g.dir);
  ASSERT_TRUE(packed.count("model.layers.0.mlp.experts.gate_up_proj_blocks"));
  EXPECT_EQ(packed.at("model.layers.0.mlp.experts.gate_up_proj_blocks").scalar_type(), at::kByte);
  auto m = create_model(g.config, std::move(packed));
  EXPECT_FALSE(m->has_weight("model.layers.0.mlp.experts.gate_up_proj_blocks"));
  for (const char* p : {"gate_up_proj", "down_proj"}) {
    at::Tensor ours = m->weights().at(std::string("model.layers.0.mlp.experts.") + p).to(at::kFloat);
    EXPECT_TRUE(at::equal(ours, g.ref.at(std::string(p) + ".0"))) << p << ": max diff "
                                                                   << max_abs_diff(ours, g.ref.at(std::string(p) + ".0"));
  }
  m->to(test_device(), at::kFloat);
  hf::expect_close(m->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits"), 1e-4, "gpt_oss mxfp4 logits");
}

TEST(HFGptOssMxfp4, BrokenPackedExpertsAreRefused) {
  auto g = hf::load_golden("gpt_oss_mxfp4");
  TensorMap w = load_safetensors_model(g.dir);
  w.erase("model.layers.1.mlp.experts.down_proj_scales");
  EXPECT_NE(error_of([&] { create_model(g.config, std::move(w)); }).find("down_proj_blocks has no"), std::string::npos);
  w = load_safetensors_model(g.dir);
  w["model.layers.0.mlp.experts.gate_up_proj_scales"] = w.at("model.layers.0.mlp.experts.gate_up_proj_scales").narrow(1, 0, 3);
  EXPECT_NE(error_of([&] { create_model(g.config, std::move(w)); }).find("must be [E, rows, G, 16]"), std::string::npos);
  // Other quantization schemes are refused by name at config time.
  nlohmann::json j = g.config.raw;
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  EXPECT_NE(error_of([&] { parse_hf_config(j, "config.json"); }).find("quant_method \"gptq\") is not supported"),
            std::string::npos);
}

// An absent key means GptOssConfig's default: untied lm_head, q/k/v/o biases, layer types alternating from a
// sliding first layer.
TEST(HFGptOssSites, AbsentKeysTakeTheConfigClassDefaults) {
  auto g = hf::load_golden("gpt_oss");
  nlohmann::json j = g.config.raw;
  for (const char* k : {"tie_word_embeddings", "attention_bias", "layer_types"}) j.erase(k);
  hf::expect_close(hf::logits_with(g, j), g.ref.at("logits"), 1e-4, "gpt_oss without the defaulted keys");
}

TEST(HFGptOssSites, BadConfigsAreRefused) {
  auto g = hf::load_golden("gpt_oss");
  nlohmann::json j = g.config.raw;
  j["num_experts_per_tok"] = 5;
  EXPECT_NE(error_of([&] { hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir)); })
                .find("num_experts_per_tok must be in 1 .. 4"),
            std::string::npos);
  j = g.config.raw;
  j["attention_bias"] = false;
  EXPECT_NE(error_of([&] { hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir)); })
                .find("attention_bias must be true"),
            std::string::npos);
}

}  // namespace
