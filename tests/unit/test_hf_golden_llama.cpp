// The Llama family against Hugging Face transformers (tests/golden/hf, made by
// tests/reference/make_hf_goldens.py): every layer output, attention and MLP outputs, final norm,
// logits and attention weights within 1e-4 in fp32; padded batches; greedy generation; bf16 bounds;
// both config.json generations.
#include "common.hpp"
#include "hf_golden.hpp"
#include "mlxterp/trace.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

// The shared golden helpers (hf_golden.hpp) serve every family.
using hf::build;
using hf::check_forward;
using hf::expect_close;
using hf::Golden;
using hf::load_golden;

class HFLlamaFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(HFLlamaFamily, ForwardMatchesTransformers5Config) { check_forward(GetParam(), "config.json"); }
TEST_P(HFLlamaFamily, ForwardMatchesTransformers4Config) { check_forward(GetParam(), "config_v4.json"); }

TEST_P(HFLlamaFamily, PaddedBatchMatchesOnRealTokens) {
  Golden g = load_golden(GetParam());
  auto m = build(g);
  ForwardArgs args;
  at::Tensor mask = g.ref.at("mask_attention_mask");
  args.attention_mask = mask.to(test_device());
  Hooks h;
  at::Tensor logits = m->forward(g.ref.at("mask_input_ids").to(test_device()), args, h).cpu();
  at::Tensor want = g.ref.at("mask_logits");
  at::Tensor real = mask.to(at::kBool);
  expect_close(logits.index({real}), want.index({real}), 1e-4, GetParam() + " padded logits");
  EXPECT_FALSE(logits.isnan().any().item<bool>()) << "padding produced NaN";
}

TEST_P(HFLlamaFamily, GreedyGenerationMatchesHF) {
  Golden g = load_golden(GetParam());
  InterpretableModel im(LoadedModel{build(g), nullptr, g.dir, "hf"});
  at::Tensor prompt = g.ref.at("generate_prompt").squeeze(0);
  std::vector<int32_t> ids(prompt.data_ptr<int64_t>(), prompt.data_ptr<int64_t>() + prompt.numel());
  GenerateOptions o;
  o.max_tokens = 8;
  o.temperature = 0;
  o.stop_at_eos = false;
  auto r = im.generate_ids(ids, o);
  at::Tensor want = g.ref.at("generate_ids").squeeze(0).slice(0, prompt.numel());
  ASSERT_EQ(int64_t(r.new_ids.size()), want.numel());
  for (int64_t i = 0; i < want.numel(); ++i) EXPECT_EQ(r.new_ids[i], want[i].item<int64_t>()) << "token " << i;
}

TEST_P(HFLlamaFamily, Bf16WithinStatedBound) {
  // Stated bound: bf16 keeps 8 significant bits (relative rounding 2^-9); through 2 blocks the logits
  // stay within 2% of the logit range of both HF's own bf16 run and the fp32 reference.
  Golden g = load_golden(GetParam());
  auto m = build(g, at::kBFloat16);
  at::Tensor logits = m->forward(g.ref.at("input_ids").to(test_device())).to(at::kFloat).cpu();
  const double range = g.ref.at("logits").abs().max().item<double>();
  EXPECT_LT(max_abs_diff(logits, g.ref.at("logits_bf16")), 0.02 * range) << "logit range " << range;
  EXPECT_LT(max_abs_diff(logits, g.ref.at("logits")), 0.02 * range) << "logit range " << range;
}

INSTANTIATE_TEST_SUITE_P(Golden, HFLlamaFamily,
                         ::testing::Values("llama", "llama3_rope", "mistral", "qwen2", "qwen3"));

}  // namespace
