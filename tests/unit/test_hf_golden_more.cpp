// Falcon (7B and 40B/180B layouts), Granite, Cohere and OLMo (1) against Hugging Face transformers.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFFalcon, ForwardMatchesTransformers5Config) { hf::check_forward("falcon", "config.json"); }
TEST(HFFalcon, ForwardMatchesTransformers4Config) { hf::check_forward("falcon", "config_v4.json"); }
TEST(HFFalcon, PaddedBatchMatchesOnRealTokens) { hf::check_padded("falcon"); }
TEST(HFFalcon, GreedyGenerationMatchesHF) { hf::check_generate("falcon"); }
TEST(HFFalcon, Bf16WithinStatedBound) { hf::check_bf16("falcon"); }
TEST(HFFalconNew, ForwardMatchesTransformers5Config) { hf::check_forward("falcon_new", "config.json"); }
TEST(HFFalconNew, GreedyGenerationMatchesHF) { hf::check_generate("falcon_new"); }
TEST(HFFalconNew, Bf16WithinStatedBound) { hf::check_bf16("falcon_new"); }
TEST(HFGranite, ForwardMatchesTransformers5Config) { hf::check_forward("granite", "config.json"); }
TEST(HFGranite, ForwardMatchesTransformers4Config) { hf::check_forward("granite", "config_v4.json"); }
TEST(HFGranite, PaddedBatchMatchesOnRealTokens) { hf::check_padded("granite"); }
TEST(HFGranite, GreedyGenerationMatchesHF) { hf::check_generate("granite"); }
TEST(HFGranite, Bf16WithinStatedBound) { hf::check_bf16("granite"); }
TEST(HFCohere, ForwardMatchesTransformers5Config) { hf::check_forward("cohere", "config.json"); }
TEST(HFCohere, ForwardMatchesTransformers4Config) { hf::check_forward("cohere", "config_v4.json"); }
TEST(HFCohere, PaddedBatchMatchesOnRealTokens) { hf::check_padded("cohere"); }
TEST(HFCohere, GreedyGenerationMatchesHF) { hf::check_generate("cohere"); }
TEST(HFCohere, Bf16WithinStatedBound) { hf::check_bf16("cohere"); }
TEST(HFOlmo, ForwardMatchesTransformers5Config) { hf::check_forward("olmo", "config.json"); }
TEST(HFOlmo, ForwardMatchesTransformers4Config) { hf::check_forward("olmo", "config_v4.json"); }
TEST(HFOlmo, PaddedBatchMatchesOnRealTokens) { hf::check_padded("olmo"); }
TEST(HFOlmo, GreedyGenerationMatchesHF) { hf::check_generate("olmo"); }
TEST(HFOlmo, Bf16WithinStatedBound) { hf::check_bf16("olmo"); }

TEST(HFFalconSites, LayoutsAndNativePaths) {
  auto g7 = hf::load_golden("falcon"), g40 = hf::load_golden("falcon_new");
  EXPECT_EQ(g7.config.n_kv_heads, 1);   // multi_query
  EXPECT_EQ(g40.config.n_kv_heads, 2);  // num_kv_heads
  EXPECT_EQ(g7.config.d_mlp, 128);      // ffn_hidden_size
  auto m = hf::build(g40);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("transformer.h.0.ln_attn"), S.resolve("model.layers.0.input_layernorm"));
  EXPECT_EQ(S.resolve("transformer.h.0.ln_mlp"), S.resolve("model.layers.0.mlp_layernorm"));
  EXPECT_EQ(S.resolve("transformer.h.0.self_attention.query_key_value"), S.resolve("model.layers.0.self_attn.qkv_proj"));
  EXPECT_LT(S.find("model.layers.0.resid_mid"), 0);
  // 40B layout: per key/value group [q, q | k | v]; group 1's key is columns 3 dh .. 4 dh of the fused output.
  Hooks h(S);
  const int qkv = S.resolve("model.layers.0.self_attn.qkv_proj"), k = S.resolve("model.layers.0.self_attn.k_proj");
  h.capture(qkv);
  h.capture(k);
  m->forward(g40.ref.at("input_ids"), {}, h);
  const int64_t dh = g40.config.d_head;
  EXPECT_TRUE(at::equal(h.captured(k).narrow(-1, dh, dh), h.captured(qkv).narrow(-1, 6 * dh, dh)));
  EXPECT_TRUE(at::equal(h.captured(k).narrow(-1, 0, dh), h.captured(qkv).narrow(-1, 2 * dh, dh)));
  nlohmann::json j = g7.config.raw;
  j["alibi"] = true;
  ModelConfig alibi = parse_hf_config(j, "config.json");
  EXPECT_NE(error_of([&] { hf::build(alibi, load_safetensors_model(g7.dir)); }).find("ALiBi Falcon"), std::string::npos);
}

TEST(HFGraniteSites, ScalarsEnterLensesToo) {
  auto g = hf::load_golden("granite");
  auto m = hf::build(g);
  // unembed / unembedding_matrix include logits_scaling; embed includes embedding_multiplier.
  at::Tensor hd = at::randn({1, 2, g.config.d_model}).to(test_device());
  EXPECT_LT(max_abs_diff(m->unembed(hd), at::matmul(hd, m->unembedding_matrix())), 1e-5);
  at::Tensor ids = at::arange(4, at::kLong).unsqueeze(0);
  EXPECT_LT(max_abs_diff(m->embed(ids)[0], load_safetensors_model(g.dir).at("model.embed_tokens.weight").narrow(0, 0, 4) * 12.0),
            1e-5);
}

// (Command-R+'s use_qk_norm: test_hf_golden_cohere_exaone.cpp.)
TEST(HFCohereSites, ParallelBlockAndLogitScale) {
  auto g = hf::load_golden("cohere");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_LT(S.find("model.layers.0.resid_mid"), 0);
  EXPECT_LT(S.find("model.layers.0.post_attention_layernorm"), 0);
  EXPECT_NEAR(g.config.norm_eps, 1e-5, 1e-12);  // layer_norm_eps, not the unused rms_norm_eps
  at::Tensor hd = at::randn({1, 2, g.config.d_model}).to(test_device());
  EXPECT_LT(max_abs_diff(m->unembed(hd), at::matmul(hd, m->unembedding_matrix())), 1e-5);
}

// clip_qkv clamps q, k and v: without it the golden's logits are not reproduced (its projections exceed 1).
TEST(HFOlmoSites, ClipQkvMatters) {
  auto g = hf::load_golden("olmo");
  nlohmann::json j = g.config.raw;
  j["clip_qkv"] = nullptr;
  auto m = hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir));
  EXPECT_GT(max_abs_diff(m->forward(g.ref.at("input_ids")), g.ref.at("logits")), 1e-3);
}

}  // namespace
