// StarCoder2 against Hugging Face transformers: LayerNorm with biases, biases on every projection, GQA,
// full rotary, a sliding window (4) shorter than the golden's sequence (12), a gelu_pytorch_tanh MLP
// c_fc -> c_proj, sequential residual.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFStarcoder2, ForwardMatchesTransformers5Config) { hf::check_forward("starcoder2", "config.json"); }
TEST(HFStarcoder2, ForwardMatchesTransformers4Config) { hf::check_forward("starcoder2", "config_v4.json"); }
TEST(HFStarcoder2, PaddedBatchMatchesOnRealTokens) { hf::check_padded("starcoder2"); }
TEST(HFStarcoder2, GreedyGenerationMatchesHF) { hf::check_generate("starcoder2"); }
TEST(HFStarcoder2, Bf16WithinStatedBound) { hf::check_bf16("starcoder2"); }

TEST(HFStarcoder2, ConfigFields) {
  auto g = hf::load_golden("starcoder2");
  EXPECT_DOUBLE_EQ(g.config.norm_eps, 1e-5);  // norm_epsilon, not the unused rms_norm_eps (1e-6)
  EXPECT_TRUE(g.config.attention_bias);
  EXPECT_TRUE(g.config.mlp_bias);
  ASSERT_TRUE(g.config.sliding_window.has_value());
  EXPECT_EQ(*g.config.sliding_window, 4);
  for (int i = 0; i < g.config.n_layers; ++i) EXPECT_TRUE(g.config.is_sliding(i)) << i;
  // sliding_window: null means full attention on every layer.
  nlohmann::json j = g.config.raw;
  j["sliding_window"] = nullptr;
  EXPECT_FALSE(parse_hf_config(j, "config.json").sliding_window.has_value());
}

TEST(HFStarcoder2, NativePathsAliasCanonicalSites) {
  auto m = hf::build(hf::load_golden("starcoder2"));
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("model.layers.0.mlp.c_fc"), S.resolve("model.layers.0.mlp.up_proj"));
  EXPECT_EQ(S.resolve("model.layers.0.mlp.c_proj"), S.resolve("model.layers.0.mlp.down_proj"));
  EXPECT_EQ(S.resolve("model.layers.1.mlp.act"), S.resolve("model.layers.1.mlp.hidden"));
  EXPECT_EQ(S.resolve("layers.1.mlp.c_fc"), S.resolve("model.layers.1.mlp.up_proj"));
  EXPECT_EQ(S.resolve("model.model.layers.1.mlp.c_proj"), S.resolve("model.layers.1.mlp.down_proj"));
  EXPECT_EQ(S.resolve("blocks.0.mlp.hook_pre"), S.resolve("model.layers.0.mlp.up_proj"));
  EXPECT_EQ(S.resolve("blocks.0.mlp.hook_post"), S.resolve("model.layers.0.mlp.hidden"));
  EXPECT_LT(S.find("model.layers.0.mlp.gate_proj"), 0);  // a plain MLP
  // Sequential residual: resid_mid exists.
  EXPECT_GE(S.find("model.layers.0.resid_mid"), 0);
  EXPECT_EQ(S.resolve("blocks.1.hook_resid_mid"), S.resolve("model.layers.1.resid_mid"));
  // The sliding window reaches the attention pattern: nothing beyond 4 positions back.
  Hooks h(S);
  const int pat = S.resolve("model.layers.0.self_attn.attention_weights");
  h.capture(pat);
  m->forward(at::arange(3, 11, at::kLong).view({1, 8}).to(test_device()), {}, h);
  at::Tensor p = h.captured(pat).cpu();  // [1, n_heads, 8, 8]
  at::Tensor q = at::arange(8).view({8, 1}), k = at::arange(8).view({1, 8});
  at::Tensor outside = (k > q).logical_or(q - k >= 4);
  EXPECT_EQ(p.masked_select(outside.expand_as(p)).abs().max().item<double>(), 0.0);
}

}  // namespace
