// Phi-3 against Hugging Face transformers: fused qkv_proj and gate_up_proj.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFPhi3, ForwardMatchesTransformers5Config) { hf::check_forward("phi3", "config.json"); }
TEST(HFPhi3, ForwardMatchesTransformers4Config) { hf::check_forward("phi3", "config_v4.json"); }
TEST(HFPhi3, PaddedBatchMatchesOnRealTokens) { hf::check_padded("phi3"); }
TEST(HFPhi3, GreedyGenerationMatchesHF) { hf::check_generate("phi3"); }
TEST(HFPhi3, Bf16WithinStatedBound) { hf::check_bf16("phi3"); }

TEST(HFPhi3, FusedProjectionsSplitIntoLlamaSites) {
  auto g = hf::load_golden("phi3");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  Hooks h(S);
  int gu = S.resolve("model.layers.1.mlp.gate_up_proj"), gate = S.resolve("model.layers.1.mlp.gate_proj"),
      up = S.resolve("model.layers.1.mlp.up_proj"), k = S.resolve("model.layers.1.self_attn.k_proj"),
      qkv = S.resolve("model.layers.1.self_attn.qkv_proj");
  for (int s : {gu, gate, up, k, qkv}) h.capture(s);
  m->forward(g.ref.at("input_ids"), {}, h);
  EXPECT_TRUE(at::equal(h.captured(gate), h.captured(gu).narrow(-1, 0, 64)));   // [gate | up]
  EXPECT_TRUE(at::equal(h.captured(up), h.captured(gu).narrow(-1, 64, 64)));
  EXPECT_TRUE(at::equal(h.captured(k), h.captured(qkv).narrow(-1, 32, 16)));    // [q 32 | k 16 | v 16]
}

}  // namespace
