// GPTBigCode against Hugging Face transformers: multi-query attention from a fused c_attn
// [q | k | v] with one key/value head, Linear weights, learned positions; and the multi-head layout.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFGptBigCode, ForwardMatchesTransformers5Config) { hf::check_forward("gpt_bigcode", "config.json"); }
TEST(HFGptBigCode, ForwardMatchesTransformers4Config) { hf::check_forward("gpt_bigcode", "config_v4.json"); }
TEST(HFGptBigCode, PaddedBatchMatchesOnRealTokens) { hf::check_padded("gpt_bigcode"); }
TEST(HFGptBigCode, GreedyGenerationMatchesHF) { hf::check_generate("gpt_bigcode"); }
TEST(HFGptBigCode, Bf16WithinStatedBound) { hf::check_bf16("gpt_bigcode"); }
TEST(HFGptBigCodeMha, ForwardMatchesTransformers5Config) { hf::check_forward("gpt_bigcode_mha", "config.json"); }
TEST(HFGptBigCodeMha, GreedyGenerationMatchesHF) { hf::check_generate("gpt_bigcode_mha"); }

TEST(HFGptBigCodeSites, MultiQuerySitesAndNativePaths) {
  auto g = hf::load_golden("gpt_bigcode");
  EXPECT_EQ(g.config.n_kv_heads, 1);
  EXPECT_EQ(hf::load_golden("gpt_bigcode_mha").config.n_kv_heads, g.config.n_heads);
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("transformer.h.0.attn.c_attn"), S.resolve("model.layers.0.self_attn.qkv_proj"));
  EXPECT_EQ(S.resolve("transformer.h.0.attn.c_proj"), S.resolve("model.layers.0.self_attn.o_proj"));
  EXPECT_EQ(S.resolve("transformer.h.1"), S.resolve("model.layers.1"));
  // q is the first d_model columns of c_attn, k and v one head each after it.
  Hooks h(S);
  const int qkv = S.resolve("model.layers.0.self_attn.qkv_proj"), q = S.resolve("model.layers.0.self_attn.q_proj"),
            k = S.resolve("model.layers.0.self_attn.k_proj"), v = S.resolve("model.layers.0.self_attn.v_proj");
  for (int id : {qkv, q, k, v}) h.capture(id);
  m->forward(g.ref.at("input_ids"), {}, h);
  const int64_t d = g.config.d_model, dh = g.config.d_head;
  EXPECT_EQ(h.captured(k).size(-1), dh);
  EXPECT_TRUE(at::equal(h.captured(q), h.captured(qkv).narrow(-1, 0, d)));
  EXPECT_TRUE(at::equal(h.captured(k), h.captured(qkv).narrow(-1, d, dh)));
  EXPECT_TRUE(at::equal(h.captured(v), h.captured(qkv).narrow(-1, d + dh, dh)));
}

}  // namespace
