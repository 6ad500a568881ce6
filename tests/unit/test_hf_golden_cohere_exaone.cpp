// Command-R+ (cohere with use_qk_norm), Command-R7B / Command-A (cohere2) and EXAONE 4 (exaone4) against Hugging
// Face transformers: per-head q/k LayerNorm; sliding layers with rotary and full layers without; OLMo2-style
// post norms with per-head q/k RMSNorm.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFCohereQkNorm, ForwardMatchesTransformers5Config) { hf::check_forward("cohere_qknorm", "config.json"); }
TEST(HFCohereQkNorm, ForwardMatchesTransformers4Config) { hf::check_forward("cohere_qknorm", "config_v4.json"); }
TEST(HFCohereQkNorm, PaddedBatchMatchesOnRealTokens) { hf::check_padded("cohere_qknorm"); }
TEST(HFCohereQkNorm, GreedyGenerationMatchesHF) { hf::check_generate("cohere_qknorm"); }
TEST(HFCohereQkNorm, Bf16WithinStatedBound) { hf::check_bf16("cohere_qknorm"); }
TEST(HFCohere2, ForwardMatchesTransformers5Config) { hf::check_forward("cohere2", "config.json"); }
TEST(HFCohere2, ForwardMatchesTransformers4Config) { hf::check_forward("cohere2", "config_v4.json"); }
TEST(HFCohere2, PaddedBatchMatchesOnRealTokens) { hf::check_padded("cohere2"); }
TEST(HFCohere2, GreedyGenerationMatchesHF) { hf::check_generate("cohere2"); }
TEST(HFCohere2, Bf16WithinStatedBound) { hf::check_bf16("cohere2"); }
TEST(HFExaone4, ForwardMatchesTransformers5Config) { hf::check_forward("exaone4", "config.json"); }
TEST(HFExaone4, ForwardMatchesTransformers4Config) { hf::check_forward("exaone4", "config_v4.json"); }
TEST(HFExaone4, PaddedBatchMatchesOnRealTokens) { hf::check_padded("exaone4"); }
TEST(HFExaone4, GreedyGenerationMatchesHF) { hf::check_generate("exaone4"); }
// HF's own bf16 run of this golden is 0.116 off its fp32 logits (2.8% of their range 4.14; the q/k norms and four
// post norms amplify bf16 rounding), so the default 2% bound cannot hold for any bf16 run; ours is 0.084 off.
TEST(HFExaone4, Bf16WithinStatedBound) { hf::check_bf16("exaone4", 0.03); }

// The golden's logits under an edited config (and optionally edited weights): the max abs difference.
double logits_error(const hf::Golden& g, const nlohmann::json& j, TensorMap w = {}) {
  if (w.empty()) w = load_safetensors_model(g.dir);
  auto m = hf::build(parse_hf_config(j, "config.json"), std::move(w));
  return max_abs_diff(m->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits"));
}

// Command-R+'s q/k norms: per head ([b, t, H|K, dh] sites, weight [heads, dh]); without them the logits move.
TEST(HFCohereQkNormSites, PerHeadNormsMatter) {
  auto g = hf::load_golden("cohere_qknorm");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  Hooks h(S);
  h.capture(S.resolve("model.layers.1.self_attn.q_norm"));
  h.capture(S.resolve("model.layers.1.self_attn.k_norm"));
  m->forward(g.ref.at("input_ids").to(test_device()), {}, h);
  EXPECT_EQ(h.captured(S.resolve("model.layers.1.self_attn.q_norm")).sizes(), (std::vector<int64_t>{2, 12, 4, 8}));
  EXPECT_EQ(h.captured(S.resolve("model.layers.1.self_attn.k_norm")).sizes(), (std::vector<int64_t>{2, 12, 2, 8}));
  nlohmann::json j = g.config.raw;
  j["use_qk_norm"] = false;
  TensorMap w = load_safetensors_model(g.dir);
  for (auto it = w.begin(); it != w.end();) it = it->first.find("_norm.") != std::string::npos ? w.erase(it) : std::next(it);
  EXPECT_GT(logits_error(g, j, std::move(w)), 1e-3);
  // use_qk_norm on a checkpoint without the norm weights is a named missing weight.
  auto plain = hf::load_golden("cohere");
  nlohmann::json jp = plain.config.raw;
  jp["use_qk_norm"] = true;
  const std::string err = error_of([&] { hf::build(parse_hf_config(jp, "config.json"), load_safetensors_model(plain.dir)); });
  EXPECT_NE(err.find("self_attn.k_norm.weight"), std::string::npos) << err;
}

// Cohere2 and EXAONE 4: the full layer has no rotary (rotating it, as a sliding layer with a window wider than the
// batch, moves the logits), the window matters, and without layer_types the pattern derives the golden's layers.
TEST(HFCohere2Exaone4Sites, FullLayersSkipRotaryAndWindowsMatter) {
  for (std::string name : {"cohere2", "exaone4"}) {
    auto g = hf::load_golden(name);
    nlohmann::json j = g.config.raw;
    j["layer_types"] = std::vector<std::string>(4, "sliding_attention");
    j["sliding_window"] = 64;
    EXPECT_GT(logits_error(g, j), 1e-3) << name << ": rotary in every layer";
    j = g.config.raw;
    j["sliding_window"] = 64;
    EXPECT_GT(logits_error(g, j), 1e-3) << name << ": window wider than the batch";
    j = g.config.raw;
    j.erase("layer_types");
    j["sliding_window_pattern"] = 4;
    EXPECT_LT(logits_error(g, j), 1e-4) << name << ": layer_types from sliding_window_pattern";
    auto m = hf::build(g);
    EXPECT_EQ(m->config().layer_types[3], "full_attention");
  }
  // EXAONE 4 without a sliding window: every layer full and rotated (so not the golden).
  auto g = hf::load_golden("exaone4");
  nlohmann::json j = g.config.raw;
  j["sliding_window"] = nullptr;
  j["layer_types"] = std::vector<std::string>(4, "full_attention");
  EXPECT_GT(logits_error(g, j), 1e-3);
}

TEST(HFCohere2Exaone4Sites, NormsAndSites) {
  auto c2 = hf::build(hf::load_golden("cohere2"));
  EXPECT_LT(c2->sites().find("model.layers.0.resid_mid"), 0);  // parallel block
  EXPECT_EQ(c2->config().d_head, 8);
  auto ex = hf::build(hf::load_golden("exaone4"));
  const SiteTable& S = ex->sites();
  for (const char* s : {"self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm", "post_feedforward_layernorm"})
    EXPECT_GE(S.find(std::string("model.layers.0.") + s), 0) << s;
  EXPECT_LT(S.find("model.layers.0.input_layernorm"), 0);
}

TEST(HFCohere2Exaone4Sites, UnsupportedConfigsAreNamed) {
  auto g = hf::load_golden("exaone4");
  nlohmann::json j = g.config.raw;
  j.erase("layer_types");
  j["sliding_window_pattern"] = "LLLG";
  EXPECT_NE(error_of([&] { parse_hf_config(j, "config.json"); }).find("sliding_window_pattern as a string"),
            std::string::npos);
  auto c2 = hf::load_golden("cohere2");
  j = c2.config.raw;
  j["layer_types"][0] = "chunked_attention";
  EXPECT_NE(error_of([&] { parse_hf_config(j, "config.json"); }).find("unsupported layer type 'chunked_attention'"),
            std::string::npos);
}

}  // namespace
