// Mixture-of-experts models against Hugging Face transformers: Mixtral, Qwen2-MoE (shared expert and
// its gate), Qwen3-MoE, OLMoE. Router logits and chosen experts per token, plus the usual checks.
#include <functional>
#include <map>

#include "hf_golden.hpp"
#include "mlxterp/error.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

class HFMoE : public ::testing::TestWithParam<std::string> {};

TEST_P(HFMoE, ForwardMatchesTransformers5Config) { hf::check_forward(GetParam(), "config.json"); }
TEST_P(HFMoE, ForwardMatchesTransformers4Config) { hf::check_forward(GetParam(), "config_v4.json"); }
TEST_P(HFMoE, RoutingMatchesHF) {
  hf::check_routing(GetParam(), "config.json");
  hf::check_routing(GetParam(), "config_v4.json");
}
TEST_P(HFMoE, PaddedBatchMatchesOnRealTokens) { hf::check_padded(GetParam()); }
TEST_P(HFMoE, GreedyGenerationMatchesHF) { hf::check_generate(GetParam()); }
TEST_P(HFMoE, Bf16WithinStatedBound) { hf::check_bf16(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Golden, HFMoE, ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

// The per-expert sites recombine into the block output: mlp = sum_e w_e * experts.e (+ gated shared expert).
TEST(HFMoESites, ExpertSitesRecombineIntoTheBlockOutput) {
  for (std::string name : {"qwen2_moe", "mixtral"}) {
    auto g = hf::load_golden(name);
    auto m = hf::build(g);
    const SiteTable& S = m->sites();
    Hooks h(S);
    h.capture_all(/*include_on_request=*/true);
    m->forward(g.ref.at("input_ids"), {}, h);
    const std::string p = "model.layers.1.mlp";
    at::Tensor w = h.captured(S.resolve(p + ".routing_weights"));  // [b, t, E]
    at::Tensor sum = at::zeros_like(h.captured(S.resolve(p)));
    for (int e = 0; e < 4; ++e)
      sum = sum + w.select(-1, e).unsqueeze(-1).to(at::kFloat) * h.captured(S.resolve(p + ".experts." + std::to_string(e)));
    hf::expect_close(sum, h.captured(S.resolve(p + ".switch_mlp")), 1e-5, name + " switch_mlp");
    at::Tensor total = h.captured(S.resolve(p + ".switch_mlp"));
    if (name == "qwen2_moe")
      total = total + at::sigmoid(h.captured(S.resolve(p + ".shared_expert_gate"))) *
                          h.captured(S.resolve(p + ".shared_expert"));
    hf::expect_close(total, h.captured(S.resolve(p)), 1e-5, name + " mlp");
    // Every token uses exactly top-k experts.
    EXPECT_TRUE(at::equal((w != 0).sum(-1).cpu(), at::full({2, 12}, 2, at::kLong))) << name;
  }
  auto mix = hf::build(hf::load_golden("mixtral"));
  EXPECT_EQ(mix->sites().resolve("model.layers.0.block_sparse_moe"), mix->sites().resolve("model.layers.0.mlp"));
  EXPECT_EQ(mix->sites().resolve("model.layers.0.block_sparse_moe.experts.3"),
            mix->sites().resolve("model.layers.0.mlp.experts.3"));
}

// Editing the routing weights forces experts: routing every token to expert 0 alone makes the block
// output equal expert 0's MLP (weight 1), and expert 0's site then covers every token.
TEST(HFMoESites, RoutingWeightsInterventionForcesExperts) {
  auto g = hf::load_golden("qwen3_moe");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  Hooks h(S);
  const std::string p = "model.layers.0.mlp";
  h.intervene(S.resolve(p + ".routing_weights"), [](const at::Tensor& x, const SiteCall&) {
    at::Tensor y = at::zeros_like(x);
    y.select(-1, 0).fill_(1);
    return y;
  });
  h.capture(S.resolve(p + ".experts.0"));
  h.capture(S.resolve(p + ".experts.1"));
  h.capture(S.resolve(p));
  m->forward(g.ref.at("input_ids"), {}, h);
  at::Tensor e0 = h.captured(S.resolve(p + ".experts.0"));
  EXPECT_TRUE(at::equal(h.captured(S.resolve(p)), e0));
  EXPECT_TRUE((e0.abs().sum(-1) > 0).all().item<bool>());
  EXPECT_EQ(h.captured(S.resolve(p + ".experts.1")).abs().max().item<double>(), 0.0);
}

// Zeroing one expert's site removes its contribution exactly where it was chosen, nowhere else.
TEST(HFMoESites, ExpertInterventionActsOnItsTokensOnly) {
  auto g = hf::load_golden("olmoe");
  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  const std::string p = "model.layers.1.mlp";
  Hooks base(S);
  base.capture(S.resolve(p));
  base.capture(S.resolve(p + ".routing_weights"));
  m->forward(g.ref.at("input_ids"), {}, base);
  Hooks h(S);
  h.capture(S.resolve(p));
  h.intervene(S.resolve(p + ".experts.2"),
              [](const at::Tensor& x, const SiteCall&) { return at::zeros_like(x); });
  m->forward(g.ref.at("input_ids"), {}, h);
  at::Tensor chosen = base.captured(S.resolve(p + ".routing_weights")).select(-1, 2) != 0;  // [b, t]
  at::Tensor changed = (h.captured(S.resolve(p)) - base.captured(S.resolve(p))).abs().amax(-1) > 0;
  ASSERT_GT(chosen.sum().item<int64_t>(), 0);
  EXPECT_TRUE(at::equal(changed, chosen));
}

// Bad configurations fail with the field named, before any forward pass.
TEST(HFFamilyErrors, BadConfigsAreNamed) {
  auto expect_error = [](const std::string& name, const std::function<void(nlohmann::json&)>& edit,
                         const std::string& needle) {
    auto g = hf::load_golden(name);
    nlohmann::json j = g.config.raw;
    edit(j);
    try {
      hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir));
      ADD_FAILURE() << name << ": expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("mixtral", [](nlohmann::json& j) { j["num_experts_per_tok"] = 5; }, "num_experts_per_tok must be in 1 .. 4");
  expect_error("gemma2", [](nlohmann::json& j) { j["final_logit_softcapping"] = -1.0; }, "final_logit_softcapping must be > 0");
  expect_error("olmoe", [](nlohmann::json& j) { j["clip_qkv"] = 8.0; }, "clip_qkv is not supported");
  // A config that disagrees with the weights (expert width) is caught by the weight check.
  expect_error("qwen2_moe", [](nlohmann::json& j) { j["moe_intermediate_size"] = 16; }, "mlp.experts.0.");
}

// `mlxterp components` on a MoE directory without a tokenizer (falls back to ids) lists the MoE sites.
TEST(HFMoESites, ComponentsCliListsRouterExpertsAndSharedExpert) {
  CliResult r = run_cli("components --model '" + golden_path("hf/qwen2_moe") + "' --layer 1 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  std::map<std::string, std::vector<int64_t>> got;
  for (const auto& c : j) got[c["name"].get<std::string>()] = c["shape"].get<std::vector<int64_t>>();
  const std::string p = "model.layers.1.mlp";
  EXPECT_EQ(got.at(p + ".gate"), (std::vector<int64_t>{1, 2, 4}));
  EXPECT_EQ(got.at(p + ".routing_weights"), (std::vector<int64_t>{1, 2, 4}));
  for (int e = 0; e < 4; ++e) EXPECT_EQ(got.at(p + ".experts." + std::to_string(e)), (std::vector<int64_t>{1, 2, 32}));
  EXPECT_EQ(got.at(p + ".switch_mlp"), (std::vector<int64_t>{1, 2, 32}));
  EXPECT_EQ(got.at(p + ".shared_expert"), (std::vector<int64_t>{1, 2, 32}));
  EXPECT_EQ(got.at(p + ".shared_expert_gate"), (std::vector<int64_t>{1, 2, 1}));
}

TEST(HFFamilyErrors, Gpt2PositionsPastTheTableAreAnError) {
  auto m = hf::build(hf::load_golden("gpt2"));
  try {
    m->forward(at::ones({1, 65}, at::kLong));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("n_positions"), std::string::npos) << e.what();
  }
}

}  // namespace
