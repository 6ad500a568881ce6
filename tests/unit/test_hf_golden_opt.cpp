// OPT against Hugging Face transformers: learned positions offset by 2, biases, ReLU; the pre-LayerNorm
// layout (opt-125m) and the post-LayerNorm one with project_in / project_out (opt-350m).
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFOpt, ForwardMatchesTransformers5Config) { hf::check_forward("opt", "config.json"); }
TEST(HFOpt, ForwardMatchesTransformers4Config) { hf::check_forward("opt", "config_v4.json"); }
TEST(HFOpt, PaddedBatchMatchesOnRealTokens) { hf::check_padded("opt"); }
TEST(HFOpt, GreedyGenerationMatchesHF) { hf::check_generate("opt"); }
TEST(HFOpt, Bf16WithinStatedBound) { hf::check_bf16("opt"); }
TEST(HFOptPostLn, ForwardMatchesTransformers5Config) { hf::check_forward("opt_postln", "config.json"); }
TEST(HFOptPostLn, PaddedBatchMatchesOnRealTokens) { hf::check_padded("opt_postln"); }
TEST(HFOptPostLn, GreedyGenerationMatchesHF) { hf::check_generate("opt_postln"); }
TEST(HFOptPostLn, Bf16WithinStatedBound) { hf::check_bf16("opt_postln"); }

TEST(HFOptSites, NativePathsPreNorm) {
  auto g = hf::load_golden("opt");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("model.decoder.layers.1.self_attn"), S.resolve("model.layers.1.self_attn"));
  EXPECT_EQ(S.resolve("model.decoder.layers.0.self_attn_layer_norm"), S.resolve("model.layers.0.input_layernorm"));
  EXPECT_EQ(S.resolve("model.decoder.layers.0.final_layer_norm"), S.resolve("model.layers.0.post_attention_layernorm"));
  EXPECT_EQ(S.resolve("model.decoder.layers.0.fc1"), S.resolve("model.layers.0.mlp.up_proj"));
  EXPECT_EQ(S.resolve("model.decoder.layers.0.fc2"), S.resolve("model.layers.0.mlp.down_proj"));
  EXPECT_EQ(S.resolve("model.decoder.final_layer_norm"), S.resolve("model.norm"));
  EXPECT_EQ(S.resolve("model.decoder.embed_positions"), S.resolve("hook_pos_embed"));
  EXPECT_LT(S.find("model.project_in"), 0);
  // The position table has max_position_embeddings + 2 rows; one token past it is an error, not a wrap.
  at::Tensor ids = at::randint(3, 100, {1, g.config.n_ctx + 1}, at::kLong);
  EXPECT_NE(error_of([&] { m->forward(ids); }).find("past the model's learned positions"), std::string::npos);
  EXPECT_NO_THROW(m->forward(ids.narrow(1, 0, g.config.n_ctx)));
}

TEST(HFOptSites, PostNormLayoutAndProjections) {
  auto g = hf::load_golden("opt_postln");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  // The residual stream itself is normalised: the LayerNorms are resid_mid and the block output.
  EXPECT_LT(S.find("model.layers.0.input_layernorm"), 0);
  EXPECT_EQ(S.resolve("model.decoder.layers.0.self_attn_layer_norm"), S.resolve("model.layers.0.resid_mid"));
  EXPECT_EQ(S.resolve("model.decoder.layers.0.final_layer_norm"), S.resolve("model.layers.0"));
  EXPECT_EQ(S.resolve("model.decoder.project_in"), S.resolve("model.project_in"));
  // The unembedding from the residual stream is lm_head after project_out: [d_model, vocab].
  at::Tensor U = m->unembedding_matrix();
  EXPECT_EQ(U.sizes(), (std::vector<int64_t>{g.config.d_model, g.config.d_vocab}));
  at::Tensor h = at::randn({1, 3, g.config.d_model}).to(test_device());
  EXPECT_LT(max_abs_diff(m->unembed(h), at::matmul(h, U)), 1e-5);
  Hooks hk(S);
  const int pin = S.resolve("model.project_in");
  hk.capture(pin);
  m->forward(g.ref.at("input_ids"), {}, hk);
  EXPECT_EQ(hk.captured(pin).size(-1), g.config.d_model);
}

// facebook/opt-125m was saved from OPTModel: keys start with "decoder.".
TEST(HFOptSites, CheckpointWithoutModelPrefix) {
  auto g = hf::load_golden("opt");
  TensorMap bare;
  for (auto& [k, v] : load_safetensors_model(g.dir)) bare[k.rfind("model.", 0) == 0 ? k.substr(6) : k] = v;
  auto m = hf::build(g.config, std::move(bare));
  hf::expect_close(m->forward(g.ref.at("input_ids")), g.ref.at("logits"), 1e-4, "opt without prefix");
}

}  // namespace
