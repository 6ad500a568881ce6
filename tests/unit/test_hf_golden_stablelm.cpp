// StableLM against Hugging Face transformers: LayerNorm with biases, q/k/v biases, partial rotary (25%),
// GQA, SwiGLU MLP, sequential residual (the golden). The parallel residual and per-head q/k LayerNorm
// options have no HF golden here; the tests below check their structure against plain libtorch.
#include "hf_golden.hpp"

#include "mlxterp/error.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFStableLm, ForwardMatchesTransformers5Config) { hf::check_forward("stablelm", "config.json"); }
TEST(HFStableLm, ForwardMatchesTransformers4Config) { hf::check_forward("stablelm", "config_v4.json"); }
TEST(HFStableLm, PaddedBatchMatchesOnRealTokens) { hf::check_padded("stablelm"); }
TEST(HFStableLm, GreedyGenerationMatchesHF) { hf::check_generate("stablelm"); }
TEST(HFStableLm, Bf16WithinStatedBound) { hf::check_bf16("stablelm"); }

TEST(HFStableLm, ConfigFields) {
  auto g = hf::load_golden("stablelm");
  EXPECT_DOUBLE_EQ(g.config.norm_eps, 1e-5);  // layer_norm_eps, not the unused rms_norm_eps (1e-6)
  EXPECT_TRUE(g.config.attention_bias);       // use_qkv_bias
  EXPECT_DOUBLE_EQ(g.config.rope.at("default").partial_rotary_factor, 0.25);
  // StableLmConfig's defaults where config.json is silent: untied, 25% rotary, no qkv bias.
  nlohmann::json j = g.config.raw;
  for (const char* k : {"tie_word_embeddings", "partial_rotary_factor", "rope_parameters", "use_qkv_bias"}) j.erase(k);
  ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope.at("default").partial_rotary_factor, 0.25);
  EXPECT_FALSE(c.attention_bias);
}

TEST(HFStableLm, SitesAndNativePaths) {
  auto m = hf::build(hf::load_golden("stablelm"));
  const SiteTable& S = m->sites();
  EXPECT_GE(S.find("model.layers.0.resid_mid"), 0);  // sequential residual
  EXPECT_EQ(S.resolve("blocks.0.hook_resid_mid"), S.resolve("model.layers.0.resid_mid"));
  EXPECT_EQ(S.resolve("blocks.1.ln2.hook_normalized"), S.resolve("model.layers.1.post_attention_layernorm"));
  EXPECT_EQ(S.resolve("blocks.0.mlp.hook_pre"), S.resolve("model.layers.0.mlp.gate_proj"));
  EXPECT_EQ(S.resolve("model.model.layers.1.mlp.down_proj"), S.resolve("model.layers.1.mlp.down_proj"));
  EXPECT_LT(S.find("model.layers.0.self_attn.q_norm"), 0);  // qk_layernorm = false
  Hooks h(S);  // q_proj in the usual [b, t, n_heads * d_head] layout
  const int q = S.resolve("model.layers.0.self_attn.q_proj");
  h.capture(q);
  m->forward(at::arange(3, 9, at::kLong).view({1, 6}).to(test_device()), {}, h);
  EXPECT_EQ(h.captured(q).sizes(), (std::vector<int64_t>{1, 6, 32}));
}

// The golden's weights with use_parallel_residual = true (post_attention_layernorm dropped, as HF has none).
TEST(HFStableLm, ParallelResidualStructure) {
  auto g = hf::load_golden("stablelm");
  ModelConfig c = g.config;
  c.raw["use_parallel_residual"] = true;
  TensorMap w = load_safetensors_model(g.dir);
  // The sequential checkpoint's post_attention_layernorm is not used by the parallel form: refused by name.
  EXPECT_THROW(hf::build(c, w), Error);
  for (auto it = w.begin(); it != w.end();)
    it = it->first.find("post_attention_layernorm") != std::string::npos ? w.erase(it) : std::next(it);
  auto m = hf::build(c, w);
  const SiteTable& S = m->sites();
  EXPECT_LT(S.find("model.layers.0.resid_mid"), 0);
  EXPECT_LT(S.find("model.layers.0.post_attention_layernorm"), 0);
  Hooks h(S);
  h.capture_all();
  m->forward(g.ref.at("input_ids").to(test_device()), {}, h);
  for (int i = 0; i < c.n_layers; ++i) {
    auto cap = [&](const std::string& comp) { return h.captured(S.resolve_component(i, comp)); };
    // x + attn(ln1(x)) + mlp(ln1(x)): the MLP reads the input_layernorm output.
    at::Tensor gate_w = w.at("model.layers." + std::to_string(i) + ".mlp.gate_proj.weight").to(test_device());
    EXPECT_LT(max_abs_diff(cap("mlp.gate_proj"), at::linear(cap("input_layernorm"), gate_w)), 1e-6);
    EXPECT_LT(max_abs_diff(cap(""), cap("resid_pre") + cap("self_attn") + cap("mlp")), 1e-6);
  }
}

// qk_layernorm = true: a bias-free LayerNorm per head, HF's StableLmLayerNormPerHead, before RoPE.
TEST(HFStableLm, PerHeadQkLayerNorm) {
  auto g = hf::load_golden("stablelm");
  ModelConfig c = g.config;
  c.raw["qk_layernorm"] = true;
  TensorMap w = load_safetensors_model(g.dir);
  try {
    hf::build(c, w);
    ADD_FAILURE() << "missing per-head norm weights accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("self_attn.k_layernorm.norms.0.weight"), std::string::npos) << e.what();
  }
  at::manual_seed(7);
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".self_attn.";
    for (int64_t hd = 0; hd < c.n_heads; ++hd)
      w[p + "q_layernorm.norms." + std::to_string(hd) + ".weight"] = 1 + 0.3 * at::randn({c.d_head});
    for (int64_t hd = 0; hd < c.n_kv_heads; ++hd)
      w[p + "k_layernorm.norms." + std::to_string(hd) + ".weight"] = 1 + 0.3 * at::randn({c.d_head});
  }
  auto m = hf::build(c, w);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("model.layers.1.self_attn.q_layernorm"), S.resolve("model.layers.1.self_attn.q_norm"));
  EXPECT_EQ(S.resolve("layers.1.self_attn.k_layernorm"), S.resolve("model.layers.1.self_attn.k_norm"));
  Hooks h(S);
  h.capture_all();
  at::Tensor logits = m->forward(g.ref.at("input_ids").to(test_device()), {}, h);
  EXPECT_FALSE(logits.isnan().any().item<bool>());
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".self_attn.";
    const std::tuple<std::string, std::string, int64_t> parts[] = {{"q_proj", "q_layernorm", c.n_heads},
                                                                   {"k_proj", "k_layernorm", c.n_kv_heads}};
    for (const auto& [proj, norm, n] : parts) {
      at::Tensor x = h.captured(S.resolve(p + proj)).cpu();  // [b, t, n * d_head]
      x = x.view({x.size(0), x.size(1), n, c.d_head});
      std::vector<at::Tensor> heads;  // one nn.LayerNorm(d_head, bias=False) per head, as HF
      for (int64_t hd = 0; hd < n; ++hd)
        heads.push_back(at::layer_norm(x.select(2, hd), {c.d_head},
                                       w.at(p + norm + ".norms." + std::to_string(hd) + ".weight"), {}, c.norm_eps));
      at::Tensor want = at::stack(heads, 2);  // [b, t, n, d_head]
      EXPECT_LT(max_abs_diff(h.captured(S.resolve(p + norm)).cpu(), want), 1e-5) << p << norm;
    }
  }
}

}  // namespace
