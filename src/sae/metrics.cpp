// SAE evaluation metrics on held-out activations (definitions: docs/sae-metrics.md).
#include "mlxterp/error.hpp"
#include "mlxterp/sae_train.hpp"

namespace mlxterp {

std::map<std::string, double> evaluate_sae(const SAE& sae, const at::Tensor& x0, int64_t batch_rows) {
  at::NoGradGuard ng;
  MLXTERP_CHECK(x0.dim() == 2 && x0.size(1) == sae.d_in, "evaluate_sae: expected activations [n, ", sae.d_in,
                "], got ", shape_str(x0.sizes()));
  std::map<std::string, double> m;
  const int64_t n = x0.size(0);
  m["n_tokens"] = double(n);
  if (n == 0) return m;
  SAE s = sae.device() == x0.device() ? sae : sae.to(x0.device());
  at::Tensor mean = x0.to(at::kDouble).mean(0);  // [d_in], centre of the whole evaluation set
  double sse = 0, sst = 0, cos = 0, l0 = 0, l1 = 0;
  at::Tensor active = at::zeros({s.d_sae}, at::TensorOptions().dtype(at::kBool).device(x0.device()));
  for (int64_t b = 0; b < n; b += batch_rows) {
    at::Tensor x = x0.narrow(0, b, std::min(batch_rows, n - b)).to(at::kFloat);
    at::Tensor z = s.encode(x);
    at::Tensor xh = s.decode(z);
    at::Tensor xd = x.to(at::kDouble), xhd = xh.to(at::kDouble);
    sse += (xd - xhd).pow(2).sum().item<double>();
    sst += (xd - mean).pow(2).sum().item<double>();
    cos += ((xd * xhd).sum(1) / (xd.norm(2, 1) * xhd.norm(2, 1)).clamp_min(1e-30)).sum().item<double>();
    at::Tensor nz = z > 0;
    l0 += nz.sum().item<double>();
    l1 += z.abs().sum().item<double>();
    active |= nz.any(0);
  }
  m["mse"] = sse / double(n);
  m["fvu"] = sst > 0 ? sse / sst : NAN;
  m["explained_variance"] = 1.0 - m["fvu"];
  m["cosine"] = cos / double(n);
  m["l0"] = l0 / double(n);
  m["l0_sparsity"] = m["l0"] / double(s.d_sae);
  m["l1"] = l1 / double(n);
  m["l1_magnitude"] = l1 / (double(n) * double(s.d_sae));
  m["frac_active"] = active.to(at::kDouble).mean().item<double>();
  return m;
}

}  // namespace mlxterp
