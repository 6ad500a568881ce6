// Shared checks of our architectures against Hugging Face transformers' reference outputs
// (tests/golden/hf/<variant>, made by tests/reference/make_hf_goldens.py). Used by the per-family
// test files test_hf_golden_<family>.cpp.
#pragma once

#include <memory>
#include <string>

#include "common.hpp"
#include "mlxterp/config.hpp"
#include "mlxterp/model.hpp"

namespace mlxterp::test::hf {

struct Golden {
  std::string name, dir;
  ModelConfig config;
  TensorMap ref;
};

Golden load_golden(const std::string& name, const std::string& config_file = "config.json");
std::unique_ptr<Model> build(const Golden& g, at::ScalarType dtype = at::kFloat);
// Builds a model from explicit config + weights (e.g. read back from a GGUF).
std::unique_ptr<Model> build(const ModelConfig& c, TensorMap w, at::ScalarType dtype = at::kFloat);
// Logits of the golden's weights (or `w`) under the config json `j`, on the golden's input ids; and the error a
// build under `j` raises ("" if none). For tests that change one config field and show it matters.
at::Tensor logits_with(const Golden& g, const nlohmann::json& j, TensorMap w = {});
std::string build_error(const Golden& g, const nlohmann::json& j, TensorMap w = {});
// Expects |got - want|max < tol (same shapes); returns that error (inf when not comparable).
double expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what);

// Every layer output, attention and MLP block output, attention weights, final norm and logits
// within 1e-4 (weights 1e-5) in fp32; MoE router logits too when the golden has them. `mlp_component` is our
// site for the golden's mlp.{i} (HF's MLP module): "mlp" unless HF's module is only part of our MLP block
// (GraniteMoeShared's block_sparse_moe = our mlp.switch_mlp, without the shared MLP).
void check_forward(const std::string& name, const std::string& config_file, const std::string& mlp_component = "mlp");
// Right-padded batch: logits at real tokens within 1e-4, no NaN anywhere.
void check_padded(const std::string& name);
// Greedy KV-cached generation equals HF generate's 8 tokens.
void check_generate(const std::string& name);
// bf16 logits within `frac` x (fp32 logit range) of HF's bf16 run and of the fp32 reference.
void check_bf16(const std::string& name, double frac = 0.02);
// MoE: per layer and token, the chosen experts (top-k of the router logits) equal HF's.
void check_routing(const std::string& name, const std::string& config_file);

}  // namespace mlxterp::test::hf
