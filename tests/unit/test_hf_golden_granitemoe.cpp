// GraniteMoE and GraniteMoeShared against Hugging Face transformers: Granite's multipliers with a top-k mixture of
// fused experts (softmax over the k largest router logits) and, for the shared variant, a dense shared MLP.
// The goldens have no router logits (HF's GraniteMoe router is not a `gate` module and its outputs are not
// recorded), so hf::check_routing does not apply; RoutingIsSoftmaxOverTopK checks the routing from our own
// router-logit site instead, and the forward checks cover its effect on every MLP output.
#include "hf_golden.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

// HF's block_sparse_moe module (the golden's mlp.{i}) is the routed experts only: our mlp.switch_mlp for the shared
// variant, whose mlp adds the shared MLP.
std::string hf_mlp(const std::string& name) { return name == "granitemoeshared" ? "mlp.switch_mlp" : "mlp"; }

class HFGraniteMoe : public ::testing::TestWithParam<std::string> {};

TEST_P(HFGraniteMoe, ForwardMatchesTransformers5Config) { hf::check_forward(GetParam(), "config.json", hf_mlp(GetParam())); }
TEST_P(HFGraniteMoe, ForwardMatchesTransformers4Config) {
  hf::check_forward(GetParam(), "config_v4.json", hf_mlp(GetParam()));
}
TEST_P(HFGraniteMoe, PaddedBatchMatchesOnRealTokens) { hf::check_padded(GetParam()); }
TEST_P(HFGraniteMoe, GreedyGenerationMatchesHF) { hf::check_generate(GetParam()); }
TEST_P(HFGraniteMoe, Bf16WithinStatedBound) { hf::check_bf16(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Golden, HFGraniteMoe, ::testing::Values("granitemoe", "granitemoeshared"));

// routing_weights = softmax over the top-k router logits (0 elsewhere); the expert sites recombine into switch_mlp,
// and mlp = switch_mlp (+ shared_expert).
TEST(HFGraniteMoeSites, RoutingIsSoftmaxOverTopK) {
  for (std::string name : {"granitemoe", "granitemoeshared"}) {
    auto g = hf::load_golden(name);
    auto m = hf::build(g);
    const SiteTable& S = m->sites();
    Hooks h(S);
    h.capture_all(/*include_on_request=*/true);
    m->forward(g.ref.at("input_ids").to(test_device()), {}, h);
    for (int i = 0; i < 2; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".mlp";
      at::Tensor logits = h.captured(S.resolve(p + ".gate")).cpu();          // [b, t, E]
      at::Tensor w = h.captured(S.resolve(p + ".routing_weights")).cpu();    // [b, t, E]
      auto [top, idx] = logits.topk(2, -1);
      at::Tensor want = at::zeros_like(logits).scatter(-1, idx, at::softmax(top, -1));
      hf::expect_close(w, want, 1e-6, name + " routing weights " + p);
      at::Tensor sum = at::zeros_like(h.captured(S.resolve(p)));
      for (int e = 0; e < 4; ++e)
        sum = sum + w.select(-1, e).unsqueeze(-1).to(sum.device()) * h.captured(S.resolve(p + ".experts." + std::to_string(e)));
      hf::expect_close(sum, h.captured(S.resolve(p + ".switch_mlp")), 1e-5, name + " switch_mlp " + p);
      at::Tensor total = h.captured(S.resolve(p + ".switch_mlp"));
      if (name == "granitemoeshared") total = total + h.captured(S.resolve(p + ".shared_expert"));
      hf::expect_close(total, h.captured(S.resolve(p)), 1e-6, name + " mlp " + p);
    }
  }
}

// input_linear holds [gate | up]: swapping the halves moves the logits. The shared MLP matters, and HF's module
// names are aliases of our sites.
TEST(HFGraniteMoeSites, FusedExpertLayoutAndSharedMlp) {
  for (std::string name : {"granitemoe", "granitemoeshared"}) {
    auto g = hf::load_golden(name);
    TensorMap w = load_safetensors_model(g.dir);
    for (int i = 0; i < 2; ++i) {
      at::Tensor& in = w.at("model.layers." + std::to_string(i) + ".block_sparse_moe.input_linear.weight");
      in = at::cat({in.narrow(1, 32, 32), in.narrow(1, 0, 32)}, 1);
    }
    auto swapped = hf::build(g.config, std::move(w));
    EXPECT_GT(max_abs_diff(swapped->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits")), 1e-3) << name;
  }
  auto g = hf::load_golden("granitemoeshared");
  nlohmann::json j = g.config.raw;
  j["shared_intermediate_size"] = 0;
  EXPECT_NE(error_of([&] { hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir)); })
                .find("unexpected weight 'model.layers.0.shared_mlp."),
            std::string::npos);
  TensorMap w = load_safetensors_model(g.dir);
  for (auto it = w.begin(); it != w.end();) it = it->first.find("shared_mlp") != std::string::npos ? w.erase(it) : std::next(it);
  auto no_shared = hf::build(parse_hf_config(j, "config.json"), std::move(w));
  EXPECT_LT(no_shared->sites().find("model.layers.0.mlp.shared_expert"), 0);
  EXPECT_GT(max_abs_diff(no_shared->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits")), 1e-3);

  auto m = hf::build(g);
  const SiteTable& S = m->sites();
  EXPECT_EQ(S.resolve("model.layers.1.block_sparse_moe"), S.resolve("model.layers.1.mlp.switch_mlp"));
  EXPECT_EQ(S.resolve("model.layers.1.shared_mlp"), S.resolve("model.layers.1.mlp.shared_expert"));
  EXPECT_EQ(S.resolve("model.layers.1.block_sparse_moe.router.layer"), S.resolve("model.layers.1.mlp.gate"));
  auto plain = hf::build(hf::load_golden("granitemoe"));
  EXPECT_EQ(plain->sites().resolve("model.layers.0.block_sparse_moe"), plain->sites().resolve("model.layers.0.mlp"));
  EXPECT_LT(plain->sites().find("model.layers.0.mlp.shared_expert"), 0);
}

// Granite's multipliers apply to the MoE variants too: without the residual multiplier the logits move.
TEST(HFGraniteMoeSites, MultipliersMatter) {
  auto g = hf::load_golden("granitemoe");
  nlohmann::json j = g.config.raw;
  j["residual_multiplier"] = 1.0;
  auto m = hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir));
  EXPECT_GT(max_abs_diff(m->forward(g.ref.at("input_ids").to(test_device())), g.ref.at("logits")), 1e-3);
}

TEST(HFGraniteMoeSites, BadConfigsAreNamed) {
  auto expect_error = [](const std::string& name, const char* key, const nlohmann::json& value, const std::string& needle) {
    auto g = hf::load_golden(name);
    nlohmann::json j = g.config.raw;
    j[key] = value;
    EXPECT_NE(error_of([&] { hf::build(parse_hf_config(j, "config.json"), load_safetensors_model(g.dir)); }).find(needle),
              std::string::npos)
        << key;
  };
  expect_error("granitemoe", "num_experts_per_tok", 5, "num_experts_per_tok must be in 1 .. 4");
  expect_error("granitemoe", "num_local_experts", 0, "num_local_experts must be positive");
  expect_error("granitemoeshared", "shared_intermediate_size", -1, "shared_intermediate_size must be >= 0");
  expect_error("granitemoe", "intermediate_size", 16, "block_sparse_moe.input_linear.weight");
}

}  // namespace
