// Gemma 1/2/3 (text) against Hugging Face transformers: embedding scale, (1 + w) norms, GeGLU,
// Gemma 2 soft-capping + sandwich norms + alternating sliding windows + query_pre_attn_scalar,
// Gemma 3 q/k norm + per-layer-type RoPE. Both config generations.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

class HFGemma : public ::testing::TestWithParam<std::string> {};

TEST_P(HFGemma, ForwardMatchesTransformers5Config) { hf::check_forward(GetParam(), "config.json"); }
TEST_P(HFGemma, ForwardMatchesTransformers4Config) { hf::check_forward(GetParam(), "config_v4.json"); }
TEST_P(HFGemma, PaddedBatchMatchesOnRealTokens) { hf::check_padded(GetParam()); }
TEST_P(HFGemma, GreedyGenerationMatchesHF) { hf::check_generate(GetParam()); }
TEST_P(HFGemma, Bf16WithinStatedBound) {
  // Gemma 2's logits are soft-capped at 3, so the logit range is the cap itself and bf16 rounding
  // upstream of the tanh shows at 3.8% of it in HF's own bf16 run: 5% there, 2% elsewhere.
  hf::check_bf16(GetParam(), GetParam() == "gemma2" ? 0.05 : 0.02);
}

INSTANTIATE_TEST_SUITE_P(Golden, HFGemma, ::testing::Values("gemma", "gemma2", "gemma3"));

TEST(HFGemma2, SandwichNormSitesAndAliases) {
  auto g = hf::load_golden("gemma2");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  // TransformerLens's ln2 is Gemma 2's MLP-input norm, not HF's post_attention_layernorm.
  EXPECT_EQ(S.resolve("blocks.1.ln2.hook_normalized"), S.resolve("model.layers.1.pre_feedforward_layernorm"));
  EXPECT_EQ(S.resolve("blocks.1.ln1_post.hook_normalized"), S.resolve("model.layers.1.post_attention_layernorm"));
  EXPECT_EQ(S.resolve("blocks.1.ln2_post.hook_normalized"), S.resolve("model.layers.1.post_feedforward_layernorm"));
  // Zeroing the post-attention norm output removes the attention contribution: resid_mid == resid_pre.
  Hooks h(S);
  int pre = S.resolve("model.layers.0.resid_pre"), mid = S.resolve("model.layers.0.resid_mid");
  h.capture(pre);
  h.capture(mid);
  h.intervene(S.resolve("model.layers.0.post_attention_layernorm"), [](const at::Tensor& x, const SiteCall&) {
    return at::zeros_like(x);
  });
  m->forward(g.ref.at("input_ids"), {}, h);
  EXPECT_TRUE(at::allclose(h.captured(pre), h.captured(mid)));
}

}  // namespace
