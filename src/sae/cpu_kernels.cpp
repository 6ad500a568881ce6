// CPU loops for the sparse SAE step (see cpu_kernels.hpp).
#include "cpu_kernels.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "mlxterp/error.hpp"

namespace mlxterp::sae_cpu {

namespace {

template <class T>
inline T key(T v) {
  return std::isnan(v) ? -std::numeric_limits<T>::infinity() : v;
}

template <class T>
Pairs topk_rows_t(const at::Tensor& m0, int64_t k) {
  at::Tensor m = m0.contiguous();
  const int64_t N = m.size(0), F = m.size(1);
  k = std::min(k, F);
  Pairs p;
  p.rows = at::arange(N, at::kLong).repeat_interleave(k);
  p.cols = at::empty({N * k}, at::kLong);
  p.vals = at::empty({N * k}, m.options());
  const T* v = m.data_ptr<T>();
  int64_t* cols = p.cols.data_ptr<int64_t>();
  T* vals = p.vals.data_ptr<T>();
  at::parallel_for(0, N, 16, [&](int64_t b, int64_t e) {
    std::vector<int32_t> idx(static_cast<size_t>(F));
    for (int64_t r = b; r < e; ++r) {
      const T* row = v + r * F;
      std::iota(idx.begin(), idx.end(), 0);
      // Larger first; ties by lower index, so the choice is a pure function of the row.
      auto before = [row](int32_t a, int32_t c) {
        const T ka = key(row[a]), kc = key(row[c]);
        return ka > kc || (ka == kc && a < c);
      };
      if (k < F) std::nth_element(idx.begin(), idx.begin() + k, idx.end(), before);
      std::sort(idx.begin(), idx.begin() + k);
      for (int64_t j = 0; j < k; ++j) {
        cols[r * k + j] = idx[size_t(j)];
        vals[r * k + j] = row[idx[size_t(j)]];
      }
    }
  });
  return p;
}

template <class T>
Pairs topk_global_relu_t(const at::Tensor& m0, int64_t kn) {
  at::Tensor m = m0.contiguous();
  const int64_t N = m.size(0), F = m.size(1), n = N * F;
  kn = std::min(kn, n);
  const T* v = m.data_ptr<T>();
  auto relu_key = [](T x) { return std::isnan(x) ? T(0) : std::max(x, T(0)); };
  // The kn-th largest of max(m, 0): everything above it is kept, then entries equal to it in row-major
  // order until kn are kept.
  std::vector<T> tmp(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tmp[size_t(i)] = relu_key(v[i]);
  std::nth_element(tmp.begin(), tmp.begin() + (kn - 1), tmp.end(), std::greater<T>());
  const T thr = tmp[size_t(kn - 1)];
  int64_t above = 0;
  for (int64_t i = 0; i < n; ++i) above += relu_key(v[i]) > thr;
  int64_t ties_left = kn - above;
  Pairs p;
  p.rows = at::empty({kn}, at::kLong);
  p.cols = at::empty({kn}, at::kLong);
  p.vals = at::empty({kn}, m.options());
  int64_t* rows = p.rows.data_ptr<int64_t>();
  int64_t* cols = p.cols.data_ptr<int64_t>();
  T* vals = p.vals.data_ptr<T>();
  int64_t o = 0;
  for (int64_t i = 0; i < n && o < kn; ++i) {
    const T r = relu_key(v[i]);
    if (r > thr || (r == thr && ties_left-- > 0)) {
      rows[o] = i / F;
      cols[o] = i % F;
      vals[o] = v[i];
      ++o;
    }
  }
  MLXTERP_ASSERT(o == kn);
  return p;
}

template <class T>
void pairs_backward_t(const at::Tensor& G0, const at::Tensor& xc0, const at::Tensor& W0, const Pairs& p,
                      const at::Tensor& post0, at::Tensor& gW_enc, at::Tensor& gb_enc, at::Tensor& gW_dec) {
  at::Tensor G = G0.contiguous(), xc = xc0.contiguous(), W = W0.contiguous(), post = post0.contiguous();
  at::Tensor pre = p.vals.contiguous();
  MLXTERP_ASSERT(gW_enc.is_contiguous() && gb_enc.is_contiguous() && gW_dec.is_contiguous());
  const int64_t D = G.size(1), M = p.cols.size(0), F = W.size(0);
  const T* g = G.data_ptr<T>();
  const T* x = xc.data_ptr<T>();
  const T* w = W.data_ptr<T>();
  const T* pv = pre.data_ptr<T>();
  const T* po = post.data_ptr<T>();
  const int64_t* rows = p.rows.data_ptr<int64_t>();
  const int64_t* cols = p.cols.data_ptr<int64_t>();
  T* ge = gW_enc.data_ptr<T>();
  T* gb = gb_enc.data_ptr<T>();
  T* gd = gW_dec.data_ptr<T>();
  // Threads own disjoint latent ranges and walk the pairs in order, so every sum has one fixed order.
  at::parallel_for(0, F, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t m = 0; m < M; ++m) {
      const int64_t c = cols[m];
      if (c < lo || c >= hi) continue;
      const T* gr = g + rows[m] * D;
      const T* wr = w + c * D;
      const T* xr = x + rows[m] * D;
      T* gdr = gd + c * D;
      T* ger = ge + c * D;
      const T post_m = po[m];
      T dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += gr[d] * wr[d];
      const T gv = pv[m] > 0 ? dot : T(0);
      for (int64_t d = 0; d < D; ++d) {
        gdr[d] += post_m * gr[d];
        ger[d] += gv * xr[d];
      }
      gb[c] += gv;
    }
  });
}

}  // namespace

Pairs topk_rows(const at::Tensor& m, int64_t k) {
  return m.scalar_type() == at::kDouble ? topk_rows_t<double>(m, k) : topk_rows_t<float>(m, k);
}

Pairs topk_global_relu(const at::Tensor& m, int64_t kn) {
  return m.scalar_type() == at::kDouble ? topk_global_relu_t<double>(m, kn) : topk_global_relu_t<float>(m, kn);
}

void pairs_backward(const at::Tensor& G, const at::Tensor& xc, const at::Tensor& W_dec, const Pairs& p,
                    const at::Tensor& post, at::Tensor& gW_enc, at::Tensor& gb_enc, at::Tensor& gW_dec) {
  if (p.cols.numel() == 0) return;
  if (G.scalar_type() == at::kDouble)
    pairs_backward_t<double>(G, xc, W_dec, p, post, gW_enc, gb_enc, gW_dec);
  else
    pairs_backward_t<float>(G, xc, W_dec, p, post, gW_enc, gb_enc, gW_dec);
}

}  // namespace mlxterp::sae_cpu
