// CPU loops for the sparse TopK / BatchTopK step (internal to src/sae). They replace chains of libtorch ops
// (topk, index_select, broadcast mul, index_add) whose allocations and passes dominate a small SAE step on the
// CPU. All are deterministic (single pass in a fixed order) and accept float32 or float64 contiguous tensors.
#pragma once

#include <ATen/ATen.h>

namespace mlxterp::sae_cpu {

// Kept (row, col) pairs and their values, rows non-decreasing, cols ascending within a row.
struct Pairs {
  at::Tensor rows, cols;  // [M] int64
  at::Tensor vals;        // [M] the selected entries of the input matrix (same dtype)
};

// Per row of `m` [N, F], the k largest entries (NaN counts as -inf). Same set as at::topk up to ties.
Pairs topk_rows(const at::Tensor& m, int64_t k);
// Over the whole of max(m, 0) [N, F], the kn largest entries (BatchTopK); vals are the entries of m.
Pairs topk_global_relu(const at::Tensor& m, int64_t kn);

// Backward of x̂ = Σ_pairs post·W_dec[col] (into row) with post = ReLU(pre) and pre = xc·W_enc[col] + b_enc[col],
// given G = dL/dx̂ [N, D]: gW_dec[col] += post·G[row]; gv = (G[row]·W_dec[col])·[pre > 0];
// gW_enc[col] += gv·xc[row]; gb_enc[col] += gv. All outputs are accumulated into (contiguous, same dtype).
void pairs_backward(const at::Tensor& G, const at::Tensor& xc, const at::Tensor& W_dec, const Pairs& p,
                    const at::Tensor& post, at::Tensor& gW_enc, at::Tensor& gb_enc, at::Tensor& gW_dec);

// Whether the loops apply (CPU, float32/float64).
inline bool applicable(const at::Tensor& t) {
  return t.is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

}  // namespace mlxterp::sae_cpu
