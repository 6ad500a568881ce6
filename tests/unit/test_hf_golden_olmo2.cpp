// OLMo 2 against Hugging Face transformers: post-norms, full-width q/k RMSNorm.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFOlmo2, ForwardMatchesTransformers5Config) { hf::check_forward("olmo2", "config.json"); }
TEST(HFOlmo2, ForwardMatchesTransformers4Config) { hf::check_forward("olmo2", "config_v4.json"); }
TEST(HFOlmo2, PaddedBatchMatchesOnRealTokens) { hf::check_padded("olmo2"); }
TEST(HFOlmo2, GreedyGenerationMatchesHF) { hf::check_generate("olmo2"); }
TEST(HFOlmo2, Bf16WithinStatedBound) { hf::check_bf16("olmo2"); }

TEST(HFOlmo2, PostNormSites) {
  auto m = hf::build(hf::load_golden("olmo2"));
  const SiteTable& S = m->sites();
  EXPECT_LT(S.find("model.layers.0.input_layernorm"), 0);  // OLMo 2 has no pre-norm
  EXPECT_EQ(S.resolve("blocks.0.ln2_post.hook_normalized"), S.resolve("model.layers.0.post_feedforward_layernorm"));
  Hooks h(S);
  int qn = S.resolve("model.layers.0.self_attn.q_norm"), kn = S.resolve("model.layers.0.self_attn.k_norm");
  h.capture(qn);
  h.capture(kn);
  m->forward(at::arange(3, 9, at::kLong).view({1, 6}), {}, h);
  EXPECT_EQ(h.captured(qn).sizes(), (std::vector<int64_t>{1, 6, 32}));  // full width: n_heads * d_head
  EXPECT_EQ(h.captured(kn).sizes(), (std::vector<int64_t>{1, 6, 16}));
}

}  // namespace
