// MPT against Hugging Face transformers: MPT's ALiBi with 6 heads (the non-power-of-two slope order),
// bias-free LayerNorms and projections, fused Wqkv clamped by clip_qkv, a tied head.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFMpt, ForwardMatchesTransformers5Config) { hf::check_forward("mpt", "config.json"); }
TEST(HFMpt, ForwardMatchesTransformers4Config) { hf::check_forward("mpt", "config_v4.json"); }
TEST(HFMpt, PaddedBatchMatchesOnRealTokens) { hf::check_padded("mpt"); }
TEST(HFMpt, GreedyGenerationMatchesHF) { hf::check_generate("mpt"); }
TEST(HFMpt, Bf16WithinStatedBound) { hf::check_bf16("mpt"); }

TEST(HFMptSites, NativePathsAlibiAndClip) {
  auto g = hf::load_golden("mpt");
  EXPECT_EQ(g.config.d_model, 48);
  EXPECT_EQ(g.config.n_heads, 6);
  EXPECT_EQ(g.config.d_mlp, 4 * 48);
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("transformer.blocks.1.attn"), S.resolve("model.layers.1.self_attn"));
  EXPECT_EQ(S.resolve("transformer.blocks.0.attn.Wqkv"), S.resolve("model.layers.0.self_attn.qkv_proj"));
  EXPECT_EQ(S.resolve("transformer.blocks.0.ffn.down_proj"), S.resolve("model.layers.0.mlp.down_proj"));
  EXPECT_EQ(S.resolve("transformer.norm_f"), S.resolve("model.norm"));
  // With q = 0 the weights of neighbouring keys differ by exp(slope_h). Six heads round up to eight:
  // slopes 2^-(1..8), odd positions first: 2^-2, 2^-4, 2^-6, 2^-8, 2^-1, 2^-3.
  Hooks h(S);
  const int q = S.resolve("model.layers.0.self_attn.q_proj"), w = S.resolve("model.layers.0.self_attn.attention_weights");
  h.intervene(q, [](const at::Tensor& x, const SiteCall&) { return x * 0; });
  h.capture(w);
  m->forward(g.ref.at("input_ids"), {}, h);
  at::Tensor a = h.captured(w).select(0, 0).select(1, 11).to(at::kDouble).cpu();
  const double want[] = {0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
  for (int64_t hd = 0; hd < 6; ++hd)
    EXPECT_NEAR(std::log(a[hd][5].item<double>() / a[hd][4].item<double>()), want[hd], 1e-5) << "head " << hd;
  // clip_qkv = 1 matters for these weights: without it the golden is not reproduced.
  nlohmann::json j = g.config.raw;
  j["attn_config"]["clip_qkv"] = nullptr;
  auto unclipped = hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir));
  EXPECT_GT(max_abs_diff(unclipped->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits")), 1e-3);
}

}  // namespace
