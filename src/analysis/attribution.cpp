// Attribution patching: m(patched) - m(corrupted) ~ grad_a m |corrupted . (a_clean - a_corrupted).
#include "analysis/patch_internal.hpp"
#include "mlxterp/analysis_patching.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

AttributionResult attribution_patching(const InterpretableModel& m, const Prompt& clean, const Prompt& corrupted,
                                       const PatchOptions& o) {
  detail::PatchSetup s = detail::make_setup(m, clean, corrupted, o);
  const SiteTable& S = m.sites();
  const int64_t tc = int64_t(s.clean_ids.size()), tx = int64_t(s.corrupt_ids.size());
  const int64_t shift = detail::align_shift(tc, tx, o.align);
  const int64_t mp_x = resolve_position(o.metric.position, tx);
  const int64_t mp_c = o.metric.position < 0 ? resolve_position(o.metric.position, tc) : mp_x - shift;

  // Clean activations (no gradient).
  TraceResult ct;
  {
    at::NoGradGuard ng;
    TraceOptions co;
    co.sites = s.sites;
    ct = m.trace_ids(ids_tensor(s.clean_ids), {}, co);
  }
  at::Tensor clean_logits = ct.logits[0][mp_c].to(at::kFloat).detach();

  // Corrupted run with a zero "probe" added at every site: d metric / d probe = d metric / d activation.
  auto probes = std::make_shared<std::map<std::string, at::Tensor>>();
  TraceOptions xo;
  xo.sites = s.sites;
  xo.grad = true;
  for (const auto& site : s.sites) {
    xo.interventions.emplace_back(site, [probes, site](const at::Tensor& x, const SiteCall&) {
      at::Tensor p = at::zeros_like(x).requires_grad_(true);
      (*probes)[site] = p;
      return x + p;
    });
  }
  TraceResult xt = m.trace_ids(ids_tensor(s.corrupt_ids), {}, xo);
  at::Tensor value = metric_value(s.metric, xt.logits.select(1, mp_x), clean_logits);  // [1]
  value.sum().backward();

  AttributionResult a;
  a.component = o.component;
  a.metric = metric_name(s.metric.metric);
  a.layers = s.layers;
  a.positions = s.positions;
  a.n_heads = s.n_heads;
  a.clean_tokens = token_strings(m, s.clean_ids);
  a.corrupt_tokens = token_strings(m, s.corrupt_ids);
  {
    at::NoGradGuard ng;
    a.corrupt_value = value.item<double>();
    a.clean_value = metric_value(s.metric, clean_logits, clean_logits).item<double>();
  }
  const int64_t L = int64_t(s.layers.size()), P = int64_t(s.positions.size()), H = s.n_heads;
  a.estimate = at::zeros({L, P, H}, at::kDouble);
  at::NoGradGuard ng;
  for (int64_t li = 0; li < L; ++li) {
    const std::string& site = s.sites[size_t(li)];
    const SiteInfo& info = S[S.resolve(site)];
    at::Tensor grad = probes->at(site).grad();
    MLXTERP_CHECK(grad.defined(), "attribution: no gradient reached site '", site, "' (does the metric depend on it?)");
    at::Tensor valid;
    at::Tensor cl = detail::aligned_clean(ct.get(site), detail::site_seq_axis(info), tx, shift, &valid);
    at::Tensor diff = cl.to(at::kDouble) - xt.get(site).detach().to(at::kDouble);  // [1, t, ...]
    at::Tensor prod = (grad.to(at::kDouble) * diff)[0];                            // [t, ...]
    for (int64_t pi = 0; pi < P; ++pi) {
      for (int64_t h = 0; h < H; ++h) {
        PatchEdit e{site, {}, {}};
        if (s.positions[size_t(pi)] >= 0) e.positions = {s.positions[size_t(pi)]};
        if (s.per_head) e.heads = {h};
        at::Tensor mask = at::zeros(prod.sizes(), at::kBool);
        detail::mark_edit(mask, e, info, m.model().config().n_heads, valid);
        a.estimate[li][pi][h] = prod.masked_select(mask.to(prod.device())).sum().item<double>();
      }
    }
  }
  const double denom = a.clean_value - a.corrupt_value;
  a.recovery = std::abs(denom) > 1e-12 ? a.estimate / denom : at::zeros_like(a.estimate);
  return a;
}

void validate_attribution(const InterpretableModel& m, const Prompt& clean, const Prompt& corrupted, const PatchOptions& o,
                          AttributionResult& a) {
  PatchResult r = activation_patching(m, clean, corrupted, o);
  a.patched_effect = r.values - r.corrupt_value;
  at::Tensor x = a.estimate.flatten(), y = a.patched_effect.flatten();
  std::vector<double> xs(size_t(x.numel())), ys(size_t(y.numel()));
  for (int64_t i = 0; i < x.numel(); ++i) {
    xs[size_t(i)] = x[i].item<double>();
    ys[size_t(i)] = y[i].item<double>();
  }
  a.pearson_r = pearson(xs, ys);
}

}  // namespace mlxterp
