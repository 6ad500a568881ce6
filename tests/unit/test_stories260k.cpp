// stories260K: the three containers load into identical weights and reproduce the float64 reference
// forward (forward_reference.json) within 1e-4, per layer and site.
#include "common.hpp"
#include "mlxterp/trace.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

const char* kModelDir = "models/stories260K";

std::string container(const std::string& which) {
  if (which == "hf") return data_path(std::string(kModelDir) + "/hf");
  if (which == "gguf") return data_path(std::string(kModelDir) + "/stories260K.gguf");
  return data_path(std::string(kModelDir) + "/stories260K.bin");
}

ModelFiles read_container(const std::string& which) {
  if (which == "hf") return read_hf_model(container(which));
  if (which == "gguf") return read_gguf_model(container(which));
  return read_llama2c_model(container(which));
}

class Stories260K : public ::testing::TestWithParam<std::string> {};

TEST_P(Stories260K, WeightsIdenticalToHF) {
  MLXTERP_REQUIRE_DATA("models/stories260K/hf/model.safetensors");
  ModelFiles hf = read_container("hf");
  ModelFiles other = read_container(GetParam());
  ASSERT_EQ(hf.weights.size(), other.weights.size());
  for (const auto& [name, t] : hf.weights) {
    ASSERT_TRUE(other.weights.count(name)) << name;
    EXPECT_TRUE(at::equal(t, other.weights.at(name).to(t.scalar_type()))) << name << " differs in " << GetParam();
  }
  EXPECT_EQ(hf.config.d_model, other.config.d_model);
  EXPECT_EQ(hf.config.n_kv_heads, other.config.n_kv_heads);
  EXPECT_EQ(hf.config.tie_word_embeddings, other.config.tie_word_embeddings);
}

TEST_P(Stories260K, ForwardMatchesReference) {
  MLXTERP_REQUIRE_DATA("reference/stories260K/forward_reference.json");
  auto ref = nlohmann::json::parse(read_file(data_path("reference/stories260K/forward_reference.json")));
  ModelFiles f = read_container(GetParam());
  auto model = create_model(f.config, std::move(f.weights));
  model->to(test_device(), at::kFloat);
  std::vector<int64_t> toks = ref["input_tokens"].get<std::vector<int64_t>>();
  at::Tensor ids = at::tensor(toks, at::kLong).unsqueeze(0);
  Hooks h(model->sites());
  h.capture_all();
  at::Tensor logits = model->forward(ids.to(test_device()), {}, h);
  const SiteTable& S = model->sites();
  struct Pair {
    const char* key;
    const char* site;
  };
  for (Pair p : {Pair{"resid_pre", "resid_pre"}, Pair{"attn_out", "self_attn"}, Pair{"mlp_out", "mlp"},
                 Pair{"resid_post", ""}}) {
    for (int l = 0; l < 5; ++l) {
      at::Tensor want = json_to_tensor(ref[p.key][l]);
      at::Tensor got = h.captured(S.resolve_component(l, p.site)).squeeze(0);
      double err = max_abs_diff(got, want);
      EXPECT_LT(err, 1e-4) << GetParam() << ": " << p.key << " layer " << l << " max abs error " << err;
    }
  }
  double err = max_abs_diff(logits.squeeze(0), json_to_tensor(ref["logits"]));
  EXPECT_LT(err, 1e-4) << "logits max abs error " << err;
}

// `mlxterp generate --prompt "" --max-tokens 200 --temperature 0` reproduces llama2.c's own greedy output.
TEST_P(Stories260K, GreedyGenerationFromBosMatchesLlama2c) {
  MLXTERP_REQUIRE_DATA("reference/stories260K/greedy_200_from_bos.txt");
  std::string device = test_device().is_cuda() ? " --device cuda --dtype f32" : "";
  auto r = run_cli("generate --model '" + container(GetParam()) +
                   "' --prompt '' --max-tokens 200 --temperature 0 --quiet" + device);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(trim(r.out), trim(read_file(data_path("reference/stories260K/greedy_200_from_bos.txt"))));
}

INSTANTIATE_TEST_SUITE_P(Containers, Stories260K, ::testing::Values("hf", "gguf", "llama2c"));

}  // namespace
