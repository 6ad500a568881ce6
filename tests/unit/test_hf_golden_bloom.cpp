// BLOOM against Hugging Face transformers: ALiBi with 6 heads (the slopes' non-power-of-two branch), the
// embedding LayerNorm, per-head fused query_key_value; and apply_residual_connection_post_layernorm.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFBloom, ForwardMatchesTransformers5Config) { hf::check_forward("bloom", "config.json"); }
TEST(HFBloom, ForwardMatchesTransformers4Config) { hf::check_forward("bloom", "config_v4.json"); }
TEST(HFBloom, PaddedBatchMatchesOnRealTokens) { hf::check_padded("bloom"); }
TEST(HFBloom, GreedyGenerationMatchesHF) { hf::check_generate("bloom"); }
TEST(HFBloom, Bf16WithinStatedBound) { hf::check_bf16("bloom"); }
TEST(HFBloomPostRes, ForwardMatchesTransformers5Config) { hf::check_forward("bloom_postres", "config.json"); }
TEST(HFBloomPostRes, GreedyGenerationMatchesHF) { hf::check_generate("bloom_postres"); }

TEST(HFBloomSites, NativePathsAndAlibi) {
  auto g = hf::load_golden("bloom");
  EXPECT_EQ(g.config.hidden_act, "gelu_pytorch_tanh");
  EXPECT_EQ(g.config.d_mlp, 4 * g.config.d_model);
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("transformer.h.1.self_attention"), S.resolve("model.layers.1.self_attn"));
  EXPECT_EQ(S.resolve("transformer.h.0.self_attention.query_key_value"), S.resolve("model.layers.0.self_attn.qkv_proj"));
  EXPECT_EQ(S.resolve("transformer.h.0.self_attention.dense"), S.resolve("model.layers.0.self_attn.o_proj"));
  EXPECT_EQ(S.resolve("transformer.h.0.mlp.dense_4h_to_h"), S.resolve("model.layers.0.mlp.down_proj"));
  EXPECT_EQ(S.resolve("transformer.word_embeddings_layernorm"), S.resolve("model.embed_layernorm"));
  // ALiBi: with q = 0 the scores are the bias alone, slope_h * key position, so for the last query the weights
  // of neighbouring keys differ by a factor exp(slope_h). Six heads: 0.25^(1..4) from the 4-head sequence, then
  // 0.5^1 and 0.5^3 from the 8-head one (the non-power-of-two branch).
  Hooks h(S);
  const int q = S.resolve("model.layers.0.self_attn.q_proj"), w = S.resolve("model.layers.0.self_attn.attention_weights");
  h.intervene(q, [](const at::Tensor& x, const SiteCall&) { return x * 0; });
  h.capture(w);
  m->forward(g.ref.at("input_ids"), {}, h);
  at::Tensor a = h.captured(w).select(0, 0).select(1, 11).to(at::kDouble);  // [H, keys] of the last query
  const std::vector<double> slopes = {0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
  for (int64_t hd = 0; hd < 6; ++hd)
    EXPECT_NEAR(std::log(a[hd][5].item<double>() / a[hd][4].item<double>()), slopes[hd], 1e-5) << "head " << hd;
}

// bigscience/bloom-* checkpoints have no "transformer." prefix.
TEST(HFBloomSites, CheckpointWithoutTransformerPrefix) {
  auto g = hf::load_golden("bloom");
  TensorMap bare;
  for (auto& [k, v] : load_safetensors_model(g.dir)) bare[k.rfind("transformer.", 0) == 0 ? k.substr(12) : k] = v;
  auto m = hf::build(g.config, std::move(bare));
  hf::expect_close(m->forward(g.ref.at("input_ids")), g.ref.at("logits"), 1e-4, "bloom without prefix");
}

}  // namespace
