// GPT-J against Hugging Face transformers: one LayerNorm feeding attention and MLP (parallel residual),
// interleaved rotary (rotate_every_two) on the first rotary_dim dims of each head, bias-free attention
// projections, biased MLP and lm_head.
#include "hf_golden.hpp"
#include "models/blocks.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFGptj, ForwardMatchesTransformers5Config) { hf::check_forward("gptj", "config.json"); }
TEST(HFGptj, ForwardMatchesTransformers4Config) { hf::check_forward("gptj", "config_v4.json"); }
TEST(HFGptj, PaddedBatchMatchesOnRealTokens) { hf::check_padded("gptj"); }
TEST(HFGptj, GreedyGenerationMatchesHF) { hf::check_generate("gptj"); }
TEST(HFGptj, Bf16WithinStatedBound) { hf::check_bf16("gptj"); }

TEST(HFGptjSites, NativePathsAndParallelResidual) {
  auto g = hf::load_golden("gptj");
  EXPECT_EQ(g.config.d_mlp, 4 * g.config.d_model);  // n_inner: null
  EXPECT_FALSE(g.config.tie_word_embeddings);
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("transformer.h.1.attn"), S.resolve("model.layers.1.self_attn"));
  EXPECT_EQ(S.resolve("transformer.h.1"), S.resolve("model.layers.1"));
  EXPECT_EQ(S.resolve("transformer.h.0.ln_1"), S.resolve("model.layers.0.input_layernorm"));
  EXPECT_EQ(S.resolve("transformer.h.0.attn.q_proj"), S.resolve("model.layers.0.self_attn.q_proj"));
  EXPECT_EQ(S.resolve("transformer.h.0.attn.out_proj"), S.resolve("model.layers.0.self_attn.o_proj"));
  EXPECT_EQ(S.resolve("transformer.h.0.mlp.fc_in"), S.resolve("model.layers.0.mlp.up_proj"));
  EXPECT_EQ(S.resolve("transformer.h.0.mlp.fc_out"), S.resolve("model.layers.0.mlp.down_proj"));
  EXPECT_EQ(S.resolve("transformer.wte"), S.resolve("model.embed_tokens"));
  EXPECT_EQ(S.resolve("transformer.ln_f"), S.resolve("model.norm"));
  EXPECT_EQ(S.resolve("blocks.0.mlp.hook_pre"), S.resolve("transformer.h.0.mlp.fc_in"));
  // Parallel residual from one LayerNorm: no resid_mid and no second norm.
  EXPECT_LT(S.find("model.layers.0.resid_mid"), 0);
  EXPECT_LT(S.find("model.layers.0.post_attention_layernorm"), 0);
}

// rotate_every_two on (x0, x1), (x2, x3), ... against the rotation written out pair by pair; the dims
// past rot_dim pass through.
TEST(HFGptjSites, InterleavedRopeRotatesAdjacentPairs) {
  RopeParams p;
  p.partial_rotary_factor = 0.5;
  blocks::Rope r = blocks::make_rope(p, 8, 64);
  r.interleaved = true;
  ASSERT_EQ(r.rot_dim, 4);
  at::manual_seed(3);
  at::Tensor x = at::randn({1, 2, 5, 8});  // [b, heads, t, d_head]
  at::Tensor pos = at::arange(5, at::kLong).unsqueeze(0) + 3;
  auto [cos, sin] = blocks::rope_cos_sin(r, pos);
  at::Tensor y = blocks::apply_rope_interleaved(x, cos, sin);
  at::Tensor want = x.clone();
  for (int64_t t = 0; t < 5; ++t)
    for (int64_t j = 0; j < 2; ++j) {
      const double a = double(t + 3) * r.inv_freq[j].item<double>();
      at::Tensor x0 = x.select(2, t).select(-1, 2 * j), x1 = x.select(2, t).select(-1, 2 * j + 1);
      want.select(2, t).select(-1, 2 * j).copy_(x0 * std::cos(a) - x1 * std::sin(a));
      want.select(2, t).select(-1, 2 * j + 1).copy_(x1 * std::cos(a) + x0 * std::sin(a));
    }
  EXPECT_LT(max_abs_diff(y, want), 1e-5);
}

// rotary_dim: null rotates the whole head; odd or larger than the head is an error naming the field.
TEST(HFGptjSites, RotaryDimConfig) {
  auto g = hf::load_golden("gptj");
  EXPECT_EQ(blocks::make_rope(g.config.rope_for_layer(0), g.config.d_head, g.config.n_ctx).rot_dim, 4);
  nlohmann::json j = g.config.raw;
  j["rotary_dim"] = nullptr;
  ModelConfig full = parse_hf_config(j, "config.json");
  EXPECT_EQ(blocks::make_rope(full.rope_for_layer(0), full.d_head, full.n_ctx).rot_dim, full.d_head);
  auto m = hf::build(full, load_safetensors_model(g.dir));
  at::Tensor logits = m->forward(g.ref.at("input_ids").to(test_device()));
  EXPECT_FALSE(logits.isnan().any().item<bool>());
  EXPECT_GT(max_abs_diff(logits, g.ref.at("logits")), 1e-4);  // more of each head rotated
  for (int bad : {3, 10}) {
    j["rotary_dim"] = bad;
    EXPECT_NE(error_of([&] { parse_hf_config(j, "config.json"); }).find("rotary_dim must be an even number"),
              std::string::npos);
  }
  j.erase("rotary_dim");  // GPTJConfig's default, 64, is larger than this head (8)
  EXPECT_NE(error_of([&] { parse_hf_config(j, "config.json"); }).find("got 64"), std::string::npos);
}

}  // namespace
