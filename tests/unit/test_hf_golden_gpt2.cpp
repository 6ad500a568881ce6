// GPT-2 against Hugging Face transformers: learned positions, LayerNorm, Conv1D weights, fused c_attn.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFGpt2, ForwardMatchesTransformers5Config) { hf::check_forward("gpt2", "config.json"); }
TEST(HFGpt2, ForwardMatchesTransformers4Config) { hf::check_forward("gpt2", "config_v4.json"); }
TEST(HFGpt2, PaddedBatchMatchesOnRealTokens) { hf::check_padded("gpt2"); }
TEST(HFGpt2, GreedyGenerationMatchesHF) { hf::check_generate("gpt2"); }
TEST(HFGpt2, Bf16WithinStatedBound) { hf::check_bf16("gpt2"); }

TEST(HFGpt2, NativePathsAndSplitQkv) {
  auto g = hf::load_golden("gpt2");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("transformer.h.1.attn"), S.resolve("model.layers.1.self_attn"));
  EXPECT_EQ(S.resolve("transformer.h.1.mlp"), S.resolve("model.layers.1.mlp"));
  EXPECT_EQ(S.resolve("transformer.h.1"), S.resolve("model.layers.1"));
  EXPECT_EQ(S.resolve("transformer.wte"), S.resolve("model.embed_tokens"));
  EXPECT_EQ(S.resolve("transformer.wpe"), S.resolve("hook_pos_embed"));
  EXPECT_EQ(S.resolve("transformer.ln_f"), S.resolve("model.norm"));
  EXPECT_EQ(S.resolve("blocks.0.mlp.hook_pre"), S.resolve("transformer.h.0.mlp.c_fc"));
  EXPECT_EQ(S.resolve("blocks.0.mlp.hook_post"), S.resolve("transformer.h.0.mlp.act"));
  // The split q/k/v sites are the thirds of the fused c_attn output, and editing q changes the output.
  Hooks h(S);
  int qkv = S.resolve("transformer.h.0.attn.c_attn"), q = S.resolve("model.layers.0.self_attn.q_proj"),
      v = S.resolve("model.layers.0.self_attn.v_proj");
  h.capture(qkv);
  h.capture(q);
  h.capture(v);
  at::Tensor ids = g.ref.at("input_ids");
  at::Tensor base = m->forward(ids, {}, h);
  EXPECT_TRUE(at::equal(h.captured(q), h.captured(qkv).narrow(-1, 0, 32)));
  EXPECT_TRUE(at::equal(h.captured(v), h.captured(qkv).narrow(-1, 64, 32)));
  Hooks h2(S);
  h2.intervene(q, [](const at::Tensor& x, const SiteCall&) { return x * 0; });
  at::Tensor edited = m->forward(ids, {}, h2);
  EXPECT_GT(max_abs_diff(edited, base), 1e-3);
}

// openai-community/gpt2's own checkpoint was saved from GPT2Model: no "transformer." prefix.
TEST(HFGpt2, CheckpointWithoutTransformerPrefix) {
  auto g = hf::load_golden("gpt2");
  TensorMap bare;
  for (auto& [k, v] : load_safetensors_model(g.dir)) bare[k.rfind("transformer.", 0) == 0 ? k.substr(12) : k] = v;
  auto m = hf::build(g.config, std::move(bare));
  hf::expect_close(m->forward(g.ref.at("input_ids")), g.ref.at("logits"), 1e-4, "gpt2 without prefix");
}

// embed() is the token embedding without positions: a sweep over the whole vocabulary (128 ids, more than the
// 64 learned positions) works and gives wte's rows (copying scores and causal tracing sweep it).
TEST(HFGpt2, EmbedIsTheTokenEmbeddingForAnyIds) {
  auto g = hf::load_golden("gpt2");
  auto m = hf::build(g);
  ASSERT_GT(g.config.d_vocab, g.config.n_ctx);
  at::Tensor e = m->embed(at::arange(g.config.d_vocab, at::kLong).unsqueeze(0));
  EXPECT_TRUE(at::equal(e[0].cpu(), load_safetensors_model(g.dir).at("transformer.wte.weight")));
}

}  // namespace
