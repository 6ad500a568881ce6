// mlxterp/analysis_steering.hpp — steering vectors (contrastive activation addition) and llama.cpp
// GGUF control vectors.
//
//   mlxterp::SteeringOptions o;
//   o.layers = {2, 3};                                  // block outputs model.layers.2 and .3
//   o.method = mlxterp::SteerMethod::MeanDiff;          // or PcaCenter (repeng) / PcaDiff (llama.cpp)
//   auto sv = mlxterp::compute_steering_vectors(m, positive_prompts, negative_prompts, o);
//   mlxterp::GenerateOptions g;
//   g.interventions = mlxterp::steering_interventions(sv, /*strength=*/4.0);   // every token, KV cache on
//   auto text = m.generate("Once upon a time", g).text;
//   mlxterp::save_steering_vectors("happy.safetensors", sv);                 // tensors named by site
//   mlxterp::save_control_vector("happy.gguf", mlxterp::to_control_vector(sv, "llama"));
//
// Definitions.
//  * A prompt becomes one activation: the site's value at the last token (Reduce::Last, CAA's choice)
//    or the mean over its tokens (Reduce::Mean).
//  * MeanDiff: v = mean(positive) - mean(negative).
//  * PcaDiff: first principal direction of the paired differences (pos_i - neg_i), uncentred, as
//    llama.cpp's cvector-generator; PcaCenter: of the pair-centred points pos_i - c_i and neg_i - c_i
//    (c_i = (pos_i + neg_i) / 2), as repeng. Both are sign-calibrated (the positive prompts project
//    higher than the negative ones on most pairs; llama.cpp leaves the sign random) and scaled to the
//    mean projection of (pos_i - neg_i), so strength 1 moves an activation by a typical pair gap.
//  * Applying: x + strength * v at every position of the site, on the prompt and every generated token.
//
// Control vectors (llama.cpp's format and semantics, established by test against llama.cpp itself,
// tests/golden/steering/): a GGUF with general.architecture = "controlvector",
// controlvector.model_hint (the model's architecture), controlvector.layer_count, and F32 1-D tensors
// direction.N for N >= 1. llama.cpp adds strength * direction.N to the OUTPUT of block N (0-based),
// i.e. our site model.layers.N (= blocks.N.hook_resid_post), at every position. direction.0 does not
// exist (block 0's output is never steered).
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "mlxterp/analysis_common.hpp"

namespace mlxterp {

enum class SteerMethod { MeanDiff, PcaDiff, PcaCenter };
enum class Reduce { Last, Mean };
SteerMethod parse_steer_method(std::string_view s);  // "mean" | "pca-diff" | "pca-center"
std::string steer_method_name(SteerMethod m);

struct SteeringOptions {
  std::vector<int> layers;                  // empty = every layer
  std::string component = "resid_post";     // a block site suffix: resid_post, resid_pre, resid_mid, mlp, self_attn
  SteerMethod method = SteerMethod::MeanDiff;
  Reduce reduce = Reduce::Last;
  int batch_size = 32;                      // prompts per forward pass (padded, masked)
};

struct SteeringVectors {
  std::vector<int> layers;
  std::vector<at::Tensor> vectors;  // one per layer, [d_model] float32 on CPU
  std::string component = "resid_post", method = "mean";
  // Diagnostics per layer: mean projection (onto v / |v|) of the positive and negative activations,
  // and the fraction of pairs (or of positive x negative comparisons when unpaired) where the
  // positive projects higher.
  std::vector<double> pos_projection, neg_projection, separation;

  // The site a layer's vector belongs to ("model.layers.3" for resid_post).
  std::string site(int layer) const;
  const at::Tensor& vector(int layer) const;  // throws if the layer has none
  nlohmann::json to_json() const;
};

// Positive and negative prompts (paired by index for the PCA methods, which need equal counts).
SteeringVectors compute_steering_vectors(const InterpretableModel& m, const std::vector<Prompt>& positive,
                                         const std::vector<Prompt>& negative, const SteeringOptions& options);
// strength * v on each layer's site.
std::vector<std::pair<std::string, InterventionFn>> steering_interventions(const SteeringVectors& sv, double strength);

// One safetensors file; tensors named by site ("model.layers.3"), metadata method/component/layers,
// so `--intervene model.layers.3=add:FILE*4` picks the right tensor.
void save_steering_vectors(const std::string& path, const SteeringVectors& sv);
SteeringVectors load_steering_vectors(const std::string& path);

// ---- llama.cpp control vectors --------------------------------------------------------------------

struct ControlVector {
  std::string model_hint;               // controlvector.model_hint ("llama")
  int64_t layer_count = 0;              // controlvector.layer_count as stored (llama.cpp writes n_layers - 1)
  std::map<int, at::Tensor> directions; // N -> direction.N [n_embd] float32; added to block N's output
  int64_t n_embd() const;
};
// Writes the GGUF (atomically). Checks: N >= 1, all directions 1-D with one length.
void save_control_vector(const std::string& path, const ControlVector& cv);
// Reads and validates like llama.cpp's loader: architecture "controlvector", every tensor named
// direction.N with N >= 1, F32, 1-D, one length. (Several tensors for one N are summed, as there.)
ControlVector load_control_vector(const std::string& path);
// Block-output (resid_post) steering vectors -> control vector; layer 0 cannot be expressed (error).
ControlVector to_control_vector(const SteeringVectors& sv, const std::string& model_hint, int64_t n_layers);
// strength * direction.N added at model.layers.N for N in [layer_start, layer_end] (inclusive;
// -1 = no bound), like llama.cpp's --control-vector-scaled and --control-vector-layer-range.
std::vector<std::pair<std::string, InterventionFn>> control_vector_interventions(const ControlVector& cv, const Model& model,
                                                                                 double strength = 1.0, int layer_start = -1,
                                                                                 int layer_end = -1);

}  // namespace mlxterp
