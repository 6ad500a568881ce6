// Direct logit attribution per layer and per head (analysis_attention.hpp).
#include "mlxterp/analysis_attention.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

// The final norm with its scale frozen at x: c -> P(c) / sigma(x) * w (P = centring for LayerNorm,
// identity for RMSNorm), plus the constant bias b. Found by probing model.final_norm, so any
// RMSNorm/LayerNorm variant (Gemma's 1 + w included) works; anything else is reported.
struct FrozenNorm {
  bool centered = false;
  at::Tensor w, b;  // [d] float64
  double sigma = 1;
  at::Tensor apply(const at::Tensor& c) const {  // [..., d] float64
    at::Tensor x = centered ? c - c.mean(-1, true) : c;
    return x / sigma * w;
  }
};

FrozenNorm probe_final_norm(const Model& model, const at::Tensor& x /* [d] float64 */) {
  const int64_t d = x.size(0);
  const double eps = model.config().norm_eps;
  auto N = [&](const at::Tensor& v) {
    return model.final_norm(v.to(model.device(), model.dtype()).view({1, 1, d})).view({d}).to(at::kCPU, at::kDouble);
  };
  FrozenNorm f;
  f.b = N(at::zeros({d}, at::kDouble));
  at::Tensor ones_out = N(at::ones({d}, at::kDouble)) - f.b;
  f.w = at::zeros({d}, at::kDouble);
  at::Tensor covered = at::zeros({d}, at::kBool);
  for (int start = 0; start < 2; ++start) {
    // Zero-mean +-1 probes (so centring is a no-op and sigma = sqrt(n_nonzero / d + eps)).
    at::Tensor v = at::zeros({d}, at::kDouble);
    int64_t n = 0;
    for (int64_t i = start; i + 1 < d; i += 2) {
      v[i] = 1;
      v[i + 1] = -1;
      n += 2;
    }
    if (n == 0) continue;
    const double s = std::sqrt(double(n) / double(d) + eps);
    at::Tensor out = N(v) - f.b;
    at::Tensor nz = v != 0;
    f.w = at::where(nz & ~covered, out * s / v.masked_fill(~nz, 1), f.w);
    covered = covered | nz;
  }
  MLXTERP_CHECK(covered.all().item<bool>(), "direct logit attribution: cannot probe the final norm of a model with d_model = ", d);
  f.centered = ones_out.abs().max().item<double>() < 1e-6 * std::max(1.0, f.w.abs().max().item<double>());
  at::Tensor xc = f.centered ? x - x.mean() : x;
  f.sigma = std::sqrt(xc.pow(2).mean().item<double>() + eps);
  at::Tensor want = N(x);
  double err = (f.apply(x) + f.b - want).abs().max().item<double>(), scale = want.abs().max().item<double>();
  MLXTERP_CHECK(err <= 1e-3 * std::max(scale, 1.0), "direct logit attribution: the model's final norm is not an RMSNorm or "
                "LayerNorm (a frozen-scale linearisation misses by ", err, "); DLA is not supported for this architecture");
  return f;
}

}  // namespace

DlaResult direct_logit_attribution(const InterpretableModel& m, const Prompt& prompt, const DlaOptions& o) {
  at::NoGradGuard ng;
  const auto& c = m.model().config();
  MLXTERP_CHECK(o.answer >= 0 && o.answer < c.d_vocab, "direct logit attribution: needs an answer token (--answer), got ",
                o.answer < 0 ? std::string("none") : std::to_string(o.answer));
  MLXTERP_CHECK(o.wrong < c.d_vocab, "direct logit attribution: wrong token ", o.wrong, " is out of range");
  DlaResult r;
  r.ids = prompt_ids(m, prompt);
  r.tokens = token_strings(m, r.ids);
  r.position = resolve_position(o.position, int64_t(r.ids.size()));
  r.answer_token = token_string(m, o.answer);
  if (o.wrong >= 0) r.wrong_token = token_string(m, o.wrong);
  const int L = m.n_layers();
  TraceOptions to;
  to.sites = {"model.embed_tokens", "model.layers." + std::to_string(L - 1)};
  for (int l = 0; l < L; ++l) {
    to.sites.push_back("model.layers." + std::to_string(l) + ".self_attn");
    to.sites.push_back("model.layers." + std::to_string(l) + ".mlp");
    if (o.per_head) to.sites.push_back("model.layers." + std::to_string(l) + ".self_attn.z");
  }
  TraceResult tr = m.trace_ids(ids_tensor(r.ids), {}, to);
  auto at_pos = [&](const std::string& site) { return tr.get(site)[0][r.position].to(at::kCPU, at::kDouble); };
  at::Tensor x = at_pos("model.layers." + std::to_string(L - 1));
  FrozenNorm f = probe_final_norm(m.model(), x);
  at::Tensor WU = m.model().unembedding_matrix().to(at::kCPU, at::kDouble);  // [d, V]
  at::Tensor u = WU.select(1, o.answer);
  if (o.wrong >= 0) u = u - WU.select(1, o.wrong);
  auto contrib = [&](const at::Tensor& v) { return f.apply(v).dot(u).item<double>(); };
  at::Tensor e = at_pos("model.embed_tokens");
  at::Tensor sum = e.clone();
  r.embed = contrib(e);
  r.attn = at::zeros({L}, at::kDouble);
  r.mlp = at::zeros({L}, at::kDouble);
  if (o.per_head) r.per_head = at::zeros({L, c.n_heads}, at::kDouble);
  for (int l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    at::Tensor a = at_pos(p + ".self_attn"), mo = at_pos(p + ".mlp");
    r.attn[l] = contrib(a);
    r.mlp[l] = contrib(mo);
    sum += a + mo;
    if (o.per_head) {
      MLXTERP_CHECK(m.model().has_weight(p + ".self_attn.o_proj.weight"), "direct logit attribution: per-head attribution needs '",
                    p, ".self_attn.o_proj.weight' (use per_head = false / --no-heads for this architecture)");
      at::Tensor Wo = m.model().w(p + ".self_attn.o_proj.weight").to(at::kCPU, at::kDouble);  // [d, n_heads*d_head]
      at::Tensor z = at_pos(p + ".self_attn.z");                                              // [n_heads*d_head]
      for (int64_t h = 0; h < c.n_heads; ++h) {
        at::Tensor out = Wo.narrow(1, h * c.d_head, c.d_head).mv(z.narrow(0, h * c.d_head, c.d_head));
        r.per_head[l][h] = contrib(out);
      }
    }
  }
  r.other = contrib(x - sum);
  r.bias = f.b.dot(u).item<double>();
  r.total = r.embed + r.attn.sum().item<double>() + r.mlp.sum().item<double>() + r.other + r.bias;
  at::Tensor logits = tr.logits[0][r.position].to(at::kCPU, at::kDouble);
  r.model_value = logits[o.answer].item<double>() - (o.wrong >= 0 ? logits[o.wrong].item<double>() : 0.0);
  return r;
}

nlohmann::json DlaResult::to_json() const {
  nlohmann::ordered_json j;
  j["ids"] = ids;
  j["tokens"] = tokens;
  j["position"] = position;
  j["answer"] = answer_token;
  if (!wrong_token.empty()) j["wrong"] = wrong_token;
  j["embed"] = embed;
  j["attn"] = report::tensor_json(attn);
  j["mlp"] = report::tensor_json(mlp);
  if (per_head.defined()) j["per_head"] = report::tensor_json(per_head);
  j["bias"] = bias;
  j["other"] = other;
  j["total"] = total;
  j["model_value"] = model_value;
  return j;
}

report::Page dla_page(const DlaResult& r) {
  report::Page page("Direct logit attribution");
  std::string text;
  for (const auto& t : r.tokens) text += t;
  std::string what = "logit[" + quote(r.answer_token) + "]" + (r.wrong_token.empty() ? "" : " - logit[" + quote(r.wrong_token) + "]");
  page.html("<p class=\"mx-meta\">Input: <code>" + report::html_escape(text) + "</code><br>Explained: <code>" +
            report::html_escape(what) + "</code> at position " + std::to_string(r.position) + " (token " +
            report::html_escape(quote(r.tokens[size_t(r.position)])) + ")</p>");
  page.paragraph("Each component's output, read through the final norm with its scale frozen and the unembedding, "
                 "adds this much to the quantity. Sum of components: " + report::fmt(r.total, "%.4f") +
                 "; the model's value: " + report::fmt(r.model_value, "%.4f") + ".");
  report::BarChart bc;
  bc.title = "Contribution per component";
  bc.labels.push_back("embed");
  bc.values.push_back(r.embed);
  for (int64_t l = 0; l < r.attn.size(0); ++l) {
    bc.labels.push_back("L" + std::to_string(l) + " attn");
    bc.values.push_back(r.attn[l].item<double>());
    bc.labels.push_back("L" + std::to_string(l) + " mlp");
    bc.values.push_back(r.mlp[l].item<double>());
  }
  if (std::abs(r.other) > 1e-9) {
    bc.labels.push_back("other");
    bc.values.push_back(r.other);
  }
  if (std::abs(r.bias) > 1e-9) {
    bc.labels.push_back("norm bias");
    bc.values.push_back(r.bias);
  }
  bc.y_label = "logit contribution";
  page.html(report::bar_chart_svg(bc));
  if (r.per_head.defined()) {
    report::Heatmap hm;
    hm.title = "Per head";
    hm.values = report::Matrix::from(r.per_head);
    for (int64_t l = 0; l < r.per_head.size(0); ++l) hm.row_labels.push_back("L" + std::to_string(l));
    for (int64_t h = 0; h < r.per_head.size(1); ++h) hm.col_labels.push_back("H" + std::to_string(h));
    hm.diverging = true;
    hm.show_values = true;
    hm.x_label = "head";
    hm.y_label = "layer";
    page.html(report::heatmap_svg(hm));
  }
  page.data("mx-dla-data", r.to_json());
  return page;
}

}  // namespace mlxterp
