// Internal helpers shared by activation patching, attribution patching and causal tracing.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "mlxterp/analysis_patching.hpp"

namespace mlxterp::detail {

// Corrupted position p reads clean position p - shift. Throws for Strict with unequal lengths.
int64_t align_shift(int64_t t_clean, int64_t t_corrupt, iv::Align align);
// The clean activation [1, t_clean, ...] laid out on the corrupted prompt's positions (zeros where
// there is no counterpart); *valid = [t_corrupt] bool, true where a clean value exists.
at::Tensor aligned_clean(const at::Tensor& clean, int seq_axis, int64_t t_corrupt, int64_t shift, at::Tensor* valid);
int site_seq_axis(const SiteInfo& info);
// ORs into row_mask (one batch row of the site's shape) where the edit applies.
void mark_edit(at::Tensor row_mask, const PatchEdit& e, const SiteInfo& info, int64_t n_heads, const at::Tensor& valid);

// Inputs resolved once for patching and attribution.
struct PatchSetup {
  std::vector<int32_t> clean_ids, corrupt_ids;
  std::vector<int> layers;
  std::vector<std::string> sites;    // canonical site per layer
  std::string suffix;
  bool per_head = false;
  int64_t n_heads = 1;
  std::vector<int64_t> positions;    // {-1} = all at once
  MetricSpec metric;                 // answer filled in for prob/ce when absent
};
PatchSetup make_setup(const InterpretableModel& m, const Prompt& clean, const Prompt& corrupted, const PatchOptions& o);

}  // namespace mlxterp::detail
