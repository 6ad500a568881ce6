// Activation patching: metrics, the batched patch runner, layer x position x head sweeps.
#include "mlxterp/analysis_patching.hpp"

#include "mlxterp/error.hpp"
#include "mlxterp/progress.hpp"
#include "mlxterp/util.hpp"
#include "analysis/patch_internal.hpp"

namespace mlxterp {

// ---- metrics ------------------------------------------------------------------------------------

Metric parse_metric(std::string_view s) {
  if (s == "logit-diff" || s == "logit_diff") return Metric::LogitDiff;
  if (s == "prob" || s == "p") return Metric::Prob;
  if (s == "kl") return Metric::KL;
  if (s == "ce" || s == "cross-entropy") return Metric::CE;
  if (s == "l2") return Metric::L2;
  if (s == "cosine") return Metric::Cosine;
  if (s == "mse") return Metric::MSE;
  MLXTERP_FAIL("Unknown metric: ", s, ". Use 'logit-diff', 'prob', 'kl', 'ce', 'l2', 'cosine', or 'mse'");
}

std::string metric_name(Metric m) {
  switch (m) {
    case Metric::LogitDiff: return "logit-diff";
    case Metric::Prob: return "prob";
    case Metric::KL: return "kl";
    case Metric::CE: return "ce";
    case Metric::L2: return "l2";
    case Metric::Cosine: return "cosine";
    case Metric::MSE: return "mse";
  }
  return "?";
}

at::Tensor metric_value(const MetricSpec& s, const at::Tensor& logits0, const at::Tensor& clean0) {
  at::Tensor l = logits0.to(at::kFloat);
  if (l.dim() == 1) l = l.unsqueeze(0);
  const int64_t V = l.size(-1);
  at::Tensor c = clean0.to(l.device(), at::kFloat).reshape({1, V});
  auto need_answer = [&](bool wrong_too) {
    MLXTERP_CHECK(s.answer >= 0 && s.answer < V, "metric ", metric_name(s.metric), ": needs an answer token (--answer); got ",
                  s.answer < 0 ? std::string("none") : std::to_string(s.answer));
    MLXTERP_CHECK(!wrong_too || (s.wrong >= 0 && s.wrong < V), "metric logit-diff: needs a wrong-answer token (--wrong); got ",
                  s.wrong < 0 ? std::string("none") : std::to_string(s.wrong));
  };
  switch (s.metric) {
    case Metric::LogitDiff:
      need_answer(true);
      return l.select(1, s.answer) - l.select(1, s.wrong);
    case Metric::Prob:
      need_answer(false);
      return at::softmax(l, -1).select(1, s.answer);
    case Metric::CE:
      need_answer(false);
      return -at::log_softmax(l, -1).select(1, s.answer);
    case Metric::KL: {
      at::Tensor lpc = at::log_softmax(c, -1);
      return (lpc.exp() * (lpc - at::log_softmax(l, -1))).sum(-1);
    }
    case Metric::L2:
      return (l.to(at::kDouble) - c.to(at::kDouble)).pow(2).sum(-1).sqrt().to(at::kFloat);
    case Metric::Cosine: {
      at::Tensor ld = l.to(at::kDouble), cd = c.to(at::kDouble);
      at::Tensor cos = (ld * cd).sum(-1) / (ld.norm(2, -1) * cd.norm(2, -1)).clamp_min(1e-30);
      return (1 - cos).to(at::kFloat);
    }
    case Metric::MSE:
      return (l.to(at::kDouble) - c.to(at::kDouble)).pow(2).mean(-1).to(at::kFloat);
  }
  MLXTERP_ASSERT(false);
}

// ---- shared helpers (patch_internal.hpp) ----------------------------------------------------------

namespace detail {

int64_t align_shift(int64_t t_clean, int64_t t_corrupt, iv::Align align) {
  if (t_clean == t_corrupt) return 0;
  MLXTERP_CHECK(align != iv::Align::Strict, "patching: the clean prompt has ", t_clean, " tokens and the corrupted prompt ",
                t_corrupt, "; expected equal lengths (pad the prompts to match, or choose --align end|start to line "
                "them up at the end or the start)");
  return align == iv::Align::End ? t_corrupt - t_clean : 0;
}

at::Tensor aligned_clean(const at::Tensor& clean, int seq_axis, int64_t t_corrupt, int64_t shift, at::Tensor* valid) {
  std::vector<int64_t> shape = clean.sizes().vec();
  const int64_t tc = shape[size_t(seq_axis)];
  shape[size_t(seq_axis)] = t_corrupt;
  at::Tensor out = at::zeros(shape, clean.options());
  std::vector<uint8_t> ok(size_t(t_corrupt), 0);
  for (int64_t p = 0; p < t_corrupt; ++p) {
    int64_t q = p - shift;
    if (q < 0 || q >= tc) continue;
    ok[size_t(p)] = 1;
    out.select(seq_axis, p).copy_(clean.select(seq_axis, q));
  }
  if (valid) *valid = at::tensor(ok, at::kByte).to(at::kBool);
  return out;
}

int site_seq_axis(const SiteInfo& info) { return ends_with(info.component, "attention_weights") ? 2 : 1; }

// mask[row] (shape = one row of the site) true where the edit applies.
void mark_edit(at::Tensor row_mask, const PatchEdit& e, const SiteInfo& info, int64_t n_heads, const at::Tensor& valid) {
  // row_mask: the site's shape without the batch axis; seq axis is site_seq_axis - 1.
  const int ax = site_seq_axis(info) - 1;
  const int64_t t = row_mask.size(ax);
  at::Tensor pos_mask = at::zeros({t}, at::kBool);
  if (e.positions.empty()) {
    pos_mask.fill_(true);
  } else {
    for (int64_t p : e.positions) {
      int64_t a = p < 0 ? t + p : p;
      MLXTERP_CHECK(a >= 0 && a < t, "patching: position ", p, " is out of range for a prompt of ", t, " tokens");
      pos_mask[a] = true;
    }
  }
  pos_mask = pos_mask & valid;
  std::vector<int64_t> pshape(size_t(row_mask.dim()), 1);
  pshape[size_t(ax)] = t;
  at::Tensor m = pos_mask.view(pshape);
  if (!e.heads.empty()) {
    at::Tensor hm = at::zeros({n_heads}, at::kBool);
    for (int64_t h : e.heads) {
      MLXTERP_CHECK(h >= 0 && h < n_heads, "patching: head ", h, " is out of range; expected 0 .. ", n_heads - 1);
      hm[h] = true;
    }
    std::vector<int64_t> hshape(size_t(row_mask.dim()), 1);
    if (ends_with(info.component, "attention_weights")) {
      hshape[0] = n_heads;  // [h, t, t_k]
      m = m & hm.view(hshape);
    } else if (row_mask.dim() == 3) {
      hshape[1] = n_heads;  // [t, h, d]
      m = m & hm.view(hshape);
    } else {
      const int64_t D = row_mask.size(-1);
      MLXTERP_CHECK(row_mask.dim() == 2 && D % n_heads == 0, "patching: site '", info.name, "' is not a per-head site "
                    "(expected [b, t, n_heads * d_head], such as self_attn.z)");
      hshape[1] = D;
      m = m & hm.repeat_interleave(D / n_heads).view(hshape);
    }
  }
  row_mask.logical_or_(m.expand_as(row_mask));
}

}  // namespace detail

// ---- the runner ---------------------------------------------------------------------------------

PatchRuns run_patches(const InterpretableModel& m, const std::vector<int32_t>& clean_ids, const std::vector<int32_t>& corrupt_ids,
                      const std::vector<PatchSpec>& specs, const PatchRunOptions& o) {
  MLXTERP_CHECK(o.batch_size >= 1, "patching: batch_size must be >= 1, got ", o.batch_size);
  at::NoGradGuard ng;
  const SiteTable& S = m.sites();
  const int64_t tc = int64_t(clean_ids.size()), tx = int64_t(corrupt_ids.size());
  MLXTERP_CHECK(tc > 0 && tx > 0, "patching: empty prompt");
  const int64_t shift = detail::align_shift(tc, tx, o.align);
  const int64_t n_heads = m.model().config().n_heads;
  // Metric positions in each run.
  const int64_t mp_x = resolve_position(o.metric_position, tx);
  const int64_t mp_c = o.metric_position < 0 ? resolve_position(o.metric_position, tc) : mp_x - shift;
  MLXTERP_CHECK(mp_c >= 0 && mp_c < tc, "patching: the metric position ", o.metric_position,
                " has no counterpart in the clean prompt");

  std::vector<int> sites;
  for (const auto& spec : specs)
    for (const auto& e : spec) {
      int id = S.resolve(e.site);
      if (std::find(sites.begin(), sites.end(), id) == sites.end()) sites.push_back(id);
    }
  PatchRuns out;
  out.clean_ids = clean_ids;
  out.corrupt_ids = corrupt_ids;
  TraceOptions co;
  for (int s : sites) co.sites.push_back(S[s].name);
  if (sites.empty()) co.capture = false;
  TraceResult clean = m.trace_ids(ids_tensor(clean_ids), {}, co);
  out.clean_logits = clean.logits[0][mp_c].to(at::kFloat);
  std::map<int, at::Tensor> clean_act, valid;
  for (int s : sites) {
    at::Tensor v;
    clean_act[s] = detail::aligned_clean(clean.get(S[s].name), detail::site_seq_axis(S[s]), tx, shift, &v);
    valid[s] = v;
  }
  TraceOptions xo;
  xo.capture = false;
  xo.interventions = o.base;
  TraceResult corrupt = m.trace_ids(ids_tensor(corrupt_ids), {}, xo);
  out.corrupt_logits = corrupt.logits[0][mp_x].to(at::kFloat);

  const int64_t n = int64_t(specs.size());
  out.logits = at::empty({n, out.clean_logits.size(0)}, at::kFloat);
  Progress bar("Patching", n, stderr, !o.progress);
  at::Tensor ids = ids_tensor(corrupt_ids);
  for (int64_t b0 = 0; b0 < n; b0 += o.batch_size) {
    const int64_t b1 = std::min(n, b0 + o.batch_size), nb = b1 - b0;
    TraceOptions po;
    po.capture = false;
    po.interventions = o.base;
    std::map<int, at::Tensor> masks;
    for (int64_t r = 0; r < nb; ++r) {
      for (const auto& e : specs[size_t(b0 + r)]) {
        int s = S.resolve(e.site);
        auto it = masks.find(s);
        if (it == masks.end()) {
          std::vector<int64_t> shape = clean_act[s].sizes().vec();
          shape[0] = nb;
          it = masks.emplace(s, at::zeros(shape, at::kBool)).first;
        }
        detail::mark_edit(it->second[r], e, S[s], n_heads, valid[s]);
      }
    }
    for (auto& [s, mask] : masks) {
      at::Tensor mk = mask.to(m.model().device());
      at::Tensor cv = clean_act[s];
      po.interventions.emplace_back(S[s].name, [mk, cv](const at::Tensor& x, const SiteCall&) {
        return at::where(mk, cv.to(x.device(), x.scalar_type()).expand_as(x), x);
      });
    }
    TraceResult tr = m.trace_ids(ids.expand({nb, tx}).contiguous(), {}, po);
    out.logits.narrow(0, b0, nb).copy_(tr.logits.select(1, mp_x).to(at::kCPU, at::kFloat));
    bar.update(nb);
  }
  bar.finish();
  out.clean_logits = out.clean_logits.cpu();
  out.corrupt_logits = out.corrupt_logits.cpu();
  return out;
}

// ---- components ---------------------------------------------------------------------------------

std::string component_site_suffix(const std::string& c) {
  static const std::map<std::string, std::string> k = {
      {"resid_post", ""},         {"output", ""},          {"resid_pre", "resid_pre"},   {"resid_mid", "resid_mid"},
      {"attn", "self_attn"},      {"self_attn", "self_attn"}, {"mlp", "mlp"},           {"head", "self_attn.z"},
      {"attn_head", "self_attn.z"}, {"z", "self_attn.z"},  {"q", "self_attn.q_proj"},   {"k", "self_attn.k_proj"},
      {"v", "self_attn.v_proj"},  {"o", "self_attn.o_proj"}, {"gate", "mlp.gate_proj"}, {"up", "mlp.up_proj"},
      {"down", "mlp.down_proj"}};
  auto it = k.find(c);
  return it == k.end() ? c : it->second;
}

bool component_is_per_head(const std::string& c) { return c == "head" || c == "attn_head"; }

namespace detail {

PatchSetup make_setup(const InterpretableModel& m, const Prompt& clean, const Prompt& corrupted, const PatchOptions& o) {
  PatchSetup s;
  s.clean_ids = prompt_ids(m, clean);
  s.corrupt_ids = prompt_ids(m, corrupted);
  s.layers = resolve_layers(o.layers, m.n_layers(), "patching");
  s.suffix = component_site_suffix(o.component);
  s.per_head = component_is_per_head(o.component);
  s.n_heads = s.per_head ? m.model().config().n_heads : 1;
  for (int l : s.layers) s.sites.push_back(m.sites()[m.sites().resolve_component(l, s.suffix)].name);
  const int64_t tx = int64_t(s.corrupt_ids.size());
  detail::align_shift(int64_t(s.clean_ids.size()), tx, o.align);  // checks lengths early
  if (o.positions == PatchPositions::All) {
    MLXTERP_CHECK(o.position_list.empty(), "patching: a position list needs --positions each");
    s.positions = {-1};
  } else if (o.position_list.empty()) {
    for (int64_t p = 0; p < tx; ++p) s.positions.push_back(p);
  } else {
    for (int64_t p : o.position_list) s.positions.push_back(resolve_position(p, tx));
  }
  s.metric = o.metric;
  if ((s.metric.metric == Metric::Prob || s.metric.metric == Metric::CE) && s.metric.answer < 0) {
    // Default answer: the clean run's top-1 at the metric position.
    at::NoGradGuard ng;
    TraceOptions to;
    to.capture = false;
    TraceResult tr = m.trace_ids(ids_tensor(s.clean_ids), {}, to);
    s.metric.answer = int32_t(tr.logits[0][resolve_position(o.metric.position, int64_t(s.clean_ids.size()))].argmax().item<int64_t>());
  }
  return s;
}

}  // namespace detail

PatchResult activation_patching(const InterpretableModel& m, const Prompt& clean, const Prompt& corrupted, const PatchOptions& o) {
  detail::PatchSetup s = detail::make_setup(m, clean, corrupted, o);
  std::vector<PatchSpec> specs;
  for (const auto& site : s.sites)
    for (int64_t p : s.positions)
      for (int64_t h = 0; h < s.n_heads; ++h) {
        PatchEdit e{site, {}, {}};
        if (p >= 0) e.positions = {p};
        if (s.per_head) e.heads = {h};
        specs.push_back({e});
      }
  PatchRunOptions ro;
  ro.align = o.align;
  ro.metric_position = o.metric.position;
  ro.batch_size = o.batch_size;
  ro.progress = o.progress;
  PatchRuns runs = run_patches(m, s.clean_ids, s.corrupt_ids, specs, ro);
  PatchResult r;
  r.component = o.component;
  r.metric = metric_name(s.metric.metric);
  r.layers = s.layers;
  r.positions = s.positions;
  r.n_heads = s.n_heads;
  r.clean_tokens = token_strings(m, s.clean_ids);
  r.corrupt_tokens = token_strings(m, s.corrupt_ids);
  if (s.metric.answer >= 0) r.answer_token = token_string(m, s.metric.answer);
  if (s.metric.wrong >= 0) r.wrong_token = token_string(m, s.metric.wrong);
  r.clean_value = metric_value(s.metric, runs.clean_logits, runs.clean_logits).item<double>();
  r.corrupt_value = metric_value(s.metric, runs.corrupt_logits, runs.clean_logits).item<double>();
  r.values = metric_value(s.metric, runs.logits, runs.clean_logits)
                 .to(at::kDouble)
                 .view({int64_t(s.layers.size()), int64_t(s.positions.size()), s.n_heads});
  // Positions with no clean counterpart (aligned prompts of different lengths) are left unpatched;
  // their recovery is 0 by construction.
  const double denom = r.clean_value - r.corrupt_value;
  r.recovery = std::abs(denom) > 1e-12 ? (r.values - r.corrupt_value) / denom : at::zeros_like(r.values);
  return r;
}

// ---- JSON ---------------------------------------------------------------------------------------

static nlohmann::json common_json(const std::string& component, const std::string& metric, const std::vector<int>& layers,
                                  const std::vector<int64_t>& positions, int64_t n_heads, double clean_value,
                                  double corrupt_value, const std::vector<std::string>& ct,
                                  const std::vector<std::string>& xt) {
  nlohmann::ordered_json j;
  j["component"] = component;
  j["metric"] = metric;
  j["clean_value"] = report::finite_or_null(clean_value);
  j["corrupt_value"] = report::finite_or_null(corrupt_value);
  j["clean_tokens"] = ct;
  j["corrupt_tokens"] = xt;
  j["layers"] = layers;
  j["positions"] = positions;
  j["n_heads"] = n_heads;
  j["shape"] = {"layer", "position", "head"};
  return j;
}

nlohmann::json PatchResult::to_json() const {
  nlohmann::json j = common_json(component, metric, layers, positions, n_heads, clean_value, corrupt_value, clean_tokens,
                                 corrupt_tokens);
  if (!answer_token.empty()) j["answer"] = answer_token;
  if (!wrong_token.empty()) j["wrong"] = wrong_token;
  j["values"] = report::tensor_json(values);
  j["recovery"] = report::tensor_json(recovery);
  return j;
}

nlohmann::json AttributionResult::to_json() const {
  nlohmann::json j = common_json(component, metric, layers, positions, n_heads, clean_value, corrupt_value, clean_tokens,
                                 corrupt_tokens);
  j["estimate"] = report::tensor_json(estimate);
  j["recovery"] = report::tensor_json(recovery);
  if (patched_effect.defined()) {
    j["patched_effect"] = report::tensor_json(patched_effect);
    j["pearson_r"] = report::finite_or_null(pearson_r);
  }
  return j;
}

}  // namespace mlxterp
