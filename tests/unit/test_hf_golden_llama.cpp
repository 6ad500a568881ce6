// The Llama family against Hugging Face transformers (tests/golden/hf, made by
// tests/reference/make_hf_goldens.py): every layer output, attention and MLP outputs, final norm,
// logits and attention weights within 1e-4 in fp32; padded batches; greedy generation; bf16 bounds;
// both config.json generations.
#include "common.hpp"
#include "mlxterp/trace.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

struct Golden {
  std::string dir;
  ModelConfig config;
  TensorMap ref;
};

Golden load_golden(const std::string& name, const std::string& config_file = "config.json") {
  Golden g;
  g.dir = golden_path("hf/" + name);
  std::string cfg_path = join_path(g.dir, config_file);
  g.config = parse_hf_config(nlohmann::json::parse(read_file(cfg_path)), cfg_path);
  g.ref = SafeTensors::open(join_path(g.dir, "reference.safetensors")).all();
  return g;
}

std::unique_ptr<Model> build(const Golden& g, at::ScalarType dtype = at::kFloat) {
  auto m = create_model(g.config, load_safetensors_model(g.dir));
  m->to(test_device(), dtype);
  return m;
}

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  double err = max_abs_diff(got, want);
  EXPECT_LT(err, tol) << what << ": max abs error " << err;
}

void check_forward(const std::string& name, const std::string& config_file) {
  Golden g = load_golden(name, config_file);
  auto m = build(g);
  const SiteTable& S = m->sites();
  Hooks h(S);
  h.capture_all(/*include_on_request=*/true);
  at::Tensor logits = m->forward(g.ref.at("input_ids").to(test_device()), {}, h);
  const std::string tag = name + " (" + config_file + ")";
  for (int i = 0; i < g.config.n_layers; ++i) {
    const std::string l = std::to_string(i);
    expect_close(h.captured(S.resolve_component(i, "")), g.ref.at("layer." + l), 1e-4, tag + " layer " + l);
    expect_close(h.captured(S.resolve_component(i, "self_attn")), g.ref.at("attn." + l), 1e-4, tag + " attn " + l);
    expect_close(h.captured(S.resolve_component(i, "mlp")), g.ref.at("mlp." + l), 1e-4, tag + " mlp " + l);
    expect_close(h.captured(S.resolve_component(i, "self_attn.attention_weights")), g.ref.at("attn_weights." + l),
                 1e-5, tag + " attention weights " + l);
  }
  expect_close(h.captured(S.resolve("model.norm")), g.ref.at("final_norm"), 1e-4, tag + " final norm");
  expect_close(logits, g.ref.at("logits"), 1e-4, tag + " logits");
}

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
