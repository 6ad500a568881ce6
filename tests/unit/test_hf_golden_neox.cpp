// GPT-NeoX / Pythia against Hugging Face transformers: parallel (gpt_neox) and sequential
// (gpt_neox_seq) residual, partial rotary (25% / 50%), per-head fused query_key_value.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

class HFNeoX : public ::testing::TestWithParam<std::string> {};

TEST_P(HFNeoX, ForwardMatchesTransformers5Config) { hf::check_forward(GetParam(), "config.json"); }
TEST_P(HFNeoX, ForwardMatchesTransformers4Config) { hf::check_forward(GetParam(), "config_v4.json"); }
TEST_P(HFNeoX, PaddedBatchMatchesOnRealTokens) { hf::check_padded(GetParam()); }
TEST_P(HFNeoX, GreedyGenerationMatchesHF) { hf::check_generate(GetParam()); }
TEST_P(HFNeoX, Bf16WithinStatedBound) { hf::check_bf16(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Golden, HFNeoX, ::testing::Values("gpt_neox", "gpt_neox_seq"));

TEST(HFNeoXSites, NativePathsAndParallelResidual) {
  auto par = hf::build(hf::load_golden("gpt_neox"));
  const SiteTable& S = par->sites();
  EXPECT_EQ(S.resolve("gpt_neox.layers.1.attention"), S.resolve("model.layers.1.self_attn"));
  EXPECT_EQ(S.resolve("gpt_neox.layers.1.attention.query_key_value"), S.resolve("model.layers.1.self_attn.qkv_proj"));
  EXPECT_EQ(S.resolve("gpt_neox.layers.0.mlp.dense_4h_to_h"), S.resolve("model.layers.0.mlp.down_proj"));
  EXPECT_EQ(S.resolve("embed_out"), S.resolve("lm_head"));
  EXPECT_EQ(S.resolve("gpt_neox.embed_in"), S.resolve("model.embed_tokens"));
  // Parallel residual: nothing between attention and MLP, so no resid_mid; the sequential form has it.
  EXPECT_LT(S.find("model.layers.0.resid_mid"), 0);
  auto seq = hf::build(hf::load_golden("gpt_neox_seq"));
  EXPECT_GE(seq->sites().find("model.layers.0.resid_mid"), 0);
}

}  // namespace
