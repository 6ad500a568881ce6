// GPT-Neo against Hugging Face transformers: learned positions, unscaled attention scores, a global and a
// local (window 4 of 12 tokens) layer, separate bias-free q/k/v, tied lm_head.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFGptNeo, ForwardMatchesTransformers5Config) { hf::check_forward("gpt_neo", "config.json"); }
TEST(HFGptNeo, ForwardMatchesTransformers4Config) { hf::check_forward("gpt_neo", "config_v4.json"); }
TEST(HFGptNeo, PaddedBatchMatchesOnRealTokens) { hf::check_padded("gpt_neo"); }
TEST(HFGptNeo, GreedyGenerationMatchesHF) { hf::check_generate("gpt_neo"); }
TEST(HFGptNeo, Bf16WithinStatedBound) { hf::check_bf16("gpt_neo"); }

TEST(HFGptNeoSites, NativePathsAndLocalLayers) {
  auto g = hf::load_golden("gpt_neo");
  EXPECT_EQ(g.config.layer_types, (std::vector<std::string>{"full_attention", "sliding_attention"}));
  EXPECT_EQ(g.config.sliding_window.value_or(-1), 4);
  EXPECT_EQ(g.config.d_mlp, 4 * g.config.d_model);  // intermediate_size: null
  EXPECT_TRUE(g.config.tie_word_embeddings);
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("transformer.h.1.attn"), S.resolve("model.layers.1.self_attn"));
  EXPECT_EQ(S.resolve("transformer.h.1.attn.attention"), S.resolve("model.layers.1.self_attn"));
  EXPECT_EQ(S.resolve("transformer.h.0.attn.attention.q_proj"), S.resolve("model.layers.0.self_attn.q_proj"));
  EXPECT_EQ(S.resolve("transformer.h.0.attn.attention.out_proj"), S.resolve("model.layers.0.self_attn.o_proj"));
  EXPECT_EQ(S.resolve("transformer.h.0.mlp.c_fc"), S.resolve("model.layers.0.mlp.up_proj"));
  EXPECT_EQ(S.resolve("transformer.wpe"), S.resolve("hook_pos_embed"));
  EXPECT_EQ(S.resolve("transformer.ln_f"), S.resolve("model.norm"));
  // The local layer's attention reaches back window_size - 1 tokens and no further; the global one all the way.
  Hooks h(S);
  const int w0 = S.resolve("model.layers.0.self_attn.attention_weights");
  const int w1 = S.resolve("model.layers.1.self_attn.attention_weights");
  h.capture(w0);
  h.capture(w1);
  m->forward(g.ref.at("input_ids"), {}, h);
  at::Tensor a0 = h.captured(w0), a1 = h.captured(w1);  // [b, H, t, t]
  EXPECT_GT(a0.select(2, 11).select(-1, 0).min().item<double>(), 0.0);
  EXPECT_EQ(a1.select(2, 11).narrow(-1, 0, 8).abs().max().item<double>(), 0.0);
  EXPECT_GT(a1.select(2, 11).select(-1, 8).min().item<double>(), 0.0);
}

// attention_types (the run-length form) gives the same layers as attention_layers; other kinds are refused.
TEST(HFGptNeoSites, AttentionTypesConfig) {
  auto g = hf::load_golden("gpt_neo");
  nlohmann::json j = g.config.raw;
  j.erase("attention_layers");
  EXPECT_EQ(parse_hf_config(j, "config.json").layer_types, g.config.layer_types);
  j["attention_types"] = {{{"local"}, 2}};
  j["num_layers"] = 2;
  EXPECT_EQ(parse_hf_config(j, "config.json").layer_types,
            (std::vector<std::string>{"sliding_attention", "sliding_attention"}));
  j["attention_types"] = {{{"global", "sparse"}, 1}};
  EXPECT_NE(error_of([&] { parse_hf_config(j, "config.json"); }).find("'sparse' is not supported"), std::string::npos);
}

}  // namespace
