// Phi (phi-1 / 1.5 / 2) against Hugging Face transformers: one LayerNorm feeding attention and MLP
// (parallel residual), partial rotary (50%), biases everywhere incl. lm_head, optional per-head q/k
// LayerNorm.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

TEST(HFPhi, ForwardMatchesTransformers5Config) { hf::check_forward("phi", "config.json"); }
TEST(HFPhi, ForwardMatchesTransformers4Config) { hf::check_forward("phi", "config_v4.json"); }
TEST(HFPhi, PaddedBatchMatchesOnRealTokens) { hf::check_padded("phi"); }
TEST(HFPhi, GreedyGenerationMatchesHF) { hf::check_generate("phi"); }
TEST(HFPhi, Bf16WithinStatedBound) { hf::check_bf16("phi"); }

TEST(HFPhiSites, NativePathsAndParallelResidual) {
  auto g = hf::load_golden("phi");
  // The golden's config.json also carries an rms_norm_eps (1e-6) that Phi does not use.
  EXPECT_EQ(g.config.norm_eps, 1e-5);
  EXPECT_EQ(g.config.rope_for_layer(0).partial_rotary_factor, 0.5);
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("model.layers.0.self_attn.dense"), S.resolve("model.layers.0.self_attn.o_proj"));
  EXPECT_EQ(S.resolve("model.layers.0.mlp.fc1"), S.resolve("model.layers.0.mlp.up_proj"));
  EXPECT_EQ(S.resolve("model.layers.1.mlp.fc2"), S.resolve("model.layers.1.mlp.down_proj"));
  EXPECT_EQ(S.resolve("model.layers.1.mlp.activation_fn"), S.resolve("model.layers.1.mlp.hidden"));
  EXPECT_EQ(S.resolve("model.final_layernorm"), S.resolve("model.norm"));
  EXPECT_EQ(S.resolve("layers.1.self_attn.dense"), S.resolve("model.layers.1.self_attn.o_proj"));
  EXPECT_EQ(S.resolve("model.model.layers.1.mlp.fc1"), S.resolve("model.layers.1.mlp.up_proj"));
  EXPECT_EQ(S.resolve("blocks.0.mlp.hook_pre"), S.resolve("model.layers.0.mlp.fc1"));
  EXPECT_EQ(S.resolve("blocks.1.hook_resid_post"), S.resolve("model.layers.1"));
  // Parallel residual from one LayerNorm: no resid_mid, no second norm, no q/k norm unless qk_layernorm.
  EXPECT_LT(S.find("model.layers.0.resid_mid"), 0);
  EXPECT_LT(S.find("model.layers.0.post_attention_layernorm"), 0);
  EXPECT_LT(S.find("model.layers.0.self_attn.q_norm"), 0);
  // The MLP reads input_layernorm's output: zeroing it changes both the attention and the MLP output.
  Hooks base(S), edited(S);
  const int attn = S.resolve("model.layers.0.self_attn"), mlp = S.resolve("model.layers.0.mlp");
  for (Hooks* h : {&base, &edited}) {
    h->capture(attn);
    h->capture(mlp);
  }
  edited.intervene(S.resolve("model.layers.0.input_layernorm"),
                   [](const at::Tensor& x, const SiteCall&) { return x * 0; });
  at::Tensor ids = g.ref.at("input_ids").to(test_device());
  m->forward(ids, {}, base);
  m->forward(ids, {}, edited);
  EXPECT_GT(max_abs_diff(edited.captured(attn), base.captured(attn)), 1e-3);
  EXPECT_GT(max_abs_diff(edited.captured(mlp), base.captured(mlp)), 1e-3);
}

// qk_layernorm=true: a LayerNorm (with bias) over each head's d_head dims of q and k, before RoPE.
// No HF golden has it, so it is checked against its definition on the golden weights.
TEST(HFPhiSites, QkLayerNormPerHead) {
  auto g = hf::load_golden("phi");
  nlohmann::json j = g.config.raw;
  j["qk_layernorm"] = true;
  ModelConfig c = parse_hf_config(j, "config.json");
  TensorMap w = load_safetensors_model(g.dir);
  const int64_t dh = c.d_head;
  const std::string missing = error_of([&] { hf::build(c, w); });
  EXPECT_NE(missing.find("missing weight 'model.layers.0.self_attn.k_layernorm.bias'"), std::string::npos) << missing;
  at::manual_seed(7);
  for (int i = 0; i < c.n_layers; ++i)
    for (const char* n : {"q_layernorm", "k_layernorm"}) {
      const std::string p = "model.layers." + std::to_string(i) + ".self_attn." + n;
      w[p + ".weight"] = 1 + 0.3 * at::randn({dh});
      w[p + ".bias"] = 0.3 * at::randn({dh});
    }
  auto m = hf::build(c, w);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("model.layers.1.self_attn.q_layernorm"), S.resolve("model.layers.1.self_attn.q_norm"));
  Hooks h(S);
  const int q = S.resolve("model.layers.1.self_attn.q_proj"), qn = S.resolve("model.layers.1.self_attn.q_norm");
  const int k = S.resolve("model.layers.1.self_attn.k_proj"), kn = S.resolve("model.layers.1.self_attn.k_norm");
  for (int id : {q, qn, k, kn}) h.capture(id);
  at::Tensor logits = m->forward(g.ref.at("input_ids").to(test_device()), {}, h);
  auto per_head = [&](const at::Tensor& x, const std::string& n) {
    const std::string p = "model.layers.1.self_attn." + n;
    at::Tensor xh = x.cpu().reshape({x.size(0), x.size(1), -1, dh});
    return at::layer_norm(xh, {dh}, w.at(p + ".weight"), w.at(p + ".bias"), 1e-5);
  };
  hf::expect_close(h.captured(qn).cpu(), per_head(h.captured(q), "q_layernorm"), 1e-5, "q_layernorm");
  hf::expect_close(h.captured(kn).cpu(), per_head(h.captured(k), "k_layernorm"), 1e-5, "k_layernorm");
  EXPECT_GT(max_abs_diff(logits, g.ref.at("logits")), 1e-3);  // the norms are in the path
}

}  // namespace
