// Shared pieces of the SAE evaluation / feature tests: the stories260K model, tiny SAEs with known behaviour,
// and small TinyStories corpora.
#pragma once

#include <ATen/ATen.h>

#include <fstream>
#include <memory>
#include <string>

#include "common.hpp"
#include "mlxterp/sae.hpp"
#include "mlxterp/sae_data.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp::test {

inline const char* kStoriesHf = "models/stories260K/hf/config.json";
inline const char* kStoriesText = "text/tinystories_val_subset.txt";

// stories260K from its HF directory (the layout the PyTorch reference reads), loaded once.
inline const InterpretableModel& stories_model() {
  static std::unique_ptr<InterpretableModel> m;
  if (!m) m = std::make_unique<InterpretableModel>(InterpretableModel::load(data_path("models/stories260K/hf")));
  return *m;
}

// x -> [relu(x), relu(-x)] -> relu(x) - relu(-x) = x: reconstructs every activation exactly.
inline SAE identity_sae(int64_t d, const std::string& site = "model.layers.2") {
  SAE s;
  s.arch = SaeArch::ReLU;
  s.d_in = d;
  s.d_sae = 2 * d;
  at::Tensor eye = at::eye(d, at::kFloat);
  s.params.W_enc = at::cat({eye, -eye});
  s.params.b_enc = at::zeros({2 * d});
  s.params.W_dec = at::cat({eye, -eye});
  s.params.b_dec = at::zeros({d});
  s.metadata = {{"site", site}};
  return s;
}

// A random TopK SAE (decoder rows of unit norm, W_enc = W_dec), deterministic in `seed`.
inline SAE random_topk_sae(int64_t d, int64_t n, int64_t k, uint64_t seed, const std::string& site = "model.layers.2") {
  at::manual_seed(seed);
  SAE s;
  s.arch = SaeArch::TopK;
  s.d_in = d;
  s.d_sae = n;
  s.k = k;
  at::Tensor w = at::randn({n, d});
  w = w / w.norm(2, 1, true);
  s.params.W_enc = w.clone();
  s.params.W_dec = w.clone();
  s.params.b_enc = at::zeros({n});
  s.params.b_dec = at::zeros({d});
  s.metadata = {{"site", site}, {"layer", 2}, {"component", ""}};
  return s;
}

// The first `n` documents of the TinyStories subset, written to `path` (blank-line separated).
inline std::string first_stories(const std::string& path, size_t n) {
  TextCorpus c = TextCorpus::open(data_path(kStoriesText));
  std::ofstream f(path);
  for (size_t i = 0; i < n && i < c.size(); ++i) f << c.text(i) << "\n\n";
  return path;
}

}  // namespace mlxterp::test
