// sae eval: reconstruction, sparsity and downstream metrics on held-out text (definitions: docs/sae-evaluation.md).
#include <algorithm>
#include <cmath>

#include "mlxterp/error.hpp"
#include "mlxterp/sae_eval.hpp"
#include "mlxterp/util.hpp"
#include "stream.hpp"

namespace mlxterp {

using ojson = nlohmann::ordered_json;
using namespace sae_eval_detail;

namespace {

ojson num(double v) { return std::isfinite(v) ? ojson(v) : ojson(nullptr); }

std::vector<double> to_vec(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// Sums over all evaluated tokens (double precision, on the SAE's device).
struct Accum {
  int64_t n = 0;
  at::Tensor sx, sx2, sr, sr2;      // [d] Σx, Σx², Σr, Σr² (r = x - x̂)
  at::Tensor counts, act_sum, act_max;  // [d_sae] firing counts (int64), Σz, max z
  at::Tensor l0_hist;               // [d_sae + 1] tokens with each L0
  double s_xnorm2 = 0, s_xhnorm2 = 0, s_dot = 0, s_cos = 0, s_l2in = 0, s_l2out = 0, s_l2ratio = 0, s_nmse = 0,
         s_l1 = 0;
  // CE / KL
  double ce_clean = 0, ce_sae = 0, ce_zero = 0, kl_sae = 0, kl_zero = 0;
  int64_t n_ce = 0, n_kl = 0;
  // The original's interpretability examples: per latent, the top rows (value, document).
  int64_t n_ex = 5;
  std::vector<std::vector<std::pair<float, int64_t>>> top_rows;
};

void add_top_rows(Accum& A, const at::Tensor& z, const std::vector<int64_t>& row_doc) {
  const int64_t m = std::min<int64_t>(A.n_ex, z.size(0));
  if (m == 0) return;
  auto [vals, idx] = z.topk(m, 0);  // [m, d_sae]
  at::Tensor v = vals.to(at::kCPU, at::kFloat).contiguous(), ix = idx.to(at::kCPU, at::kLong).contiguous();
  const float* vp = v.data_ptr<float>();
  const int64_t* ip = ix.data_ptr<int64_t>();
  const int64_t F = z.size(1);
  for (int64_t f = 0; f < F; ++f) {
    auto& rows = A.top_rows[size_t(f)];
    for (int64_t j = 0; j < m; ++j) {
      float val = vp[j * F + f];
      if (!(val > 0)) break;  // sorted descending
      if (int64_t(rows.size()) == A.n_ex && val <= rows.back().first) break;
      rows.push_back({val, row_doc[size_t(ip[j * F + f])]});
      std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      if (int64_t(rows.size()) > A.n_ex) rows.pop_back();
    }
  }
}

// Per-position next-token CE [B, T-1] and KL(clean ‖ other) [B, T].
at::Tensor token_ce(const at::Tensor& logits, const at::Tensor& ids) {
  at::Tensor lp = at::log_softmax(logits.narrow(1, 0, logits.size(1) - 1), -1);
  at::Tensor tgt = ids.narrow(1, 1, ids.size(1) - 1).unsqueeze(-1);
  return -lp.gather(-1, tgt).squeeze(-1);
}
at::Tensor token_kl(const at::Tensor& clean_logp, const at::Tensor& logits) {
  at::Tensor lq = at::log_softmax(logits, -1);
  return (clean_logp.exp() * (clean_logp - lq)).sum(-1);
}

double masked_sum(const at::Tensor& v, const at::Tensor& m) { return v.masked_select(m).to(at::kDouble).sum().item<double>(); }

}  // namespace

SaeQualityScore sae_quality_score(double cosine, double practical_dead_fraction, int64_t features_with_examples) {
  SaeQualityScore s;
  s.reconstruction = cosine > 0.95 ? 2.0 : cosine > 0.90 ? 1.5 : cosine > 0.85 ? 1.0 : 0.0;
  s.sparsity = practical_dead_fraction < 0.30 ? 2.0 : practical_dead_fraction < 0.50 ? 1.5
               : practical_dead_fraction < 0.70 ? 1.0 : 0.0;
  s.interpretability = features_with_examples >= 8 ? 1.0 : features_with_examples >= 5 ? 0.5 : 0.0;
  s.total = s.reconstruction + s.sparsity + s.interpretability;
  s.verdict = s.total >= 4.5 ? "🎉 EXCELLENT SAE - Ready for production use!"
              : s.total >= 3.5 ? "✅ GOOD SAE - Suitable for most analyses"
              : s.total >= 2.5 ? "⚠️ FAIR SAE - Usable, but consider improvements"
                               : "❌ POOR SAE - Retraining recommended";
  return s;
}

ojson evaluate_sae_on_corpus(const InterpretableModel& model, const SAE& sae0, const TextCorpus& corpus,
                             const SaeEvalOptions& o) {
  Timer timer;
  at::NoGradGuard ng;
  const int site = resolve_sae_site(sae0, model, o.data.site);
  const at::Device dev = model.model().device();
  const SAE sae = sae0.device() == dev ? sae0 : sae0.to(dev);
  const int64_t d = sae.d_in, F = sae.d_sae;
  SequenceStream stream(model, corpus, site, o.data, sae);
  const auto dopt = at::TensorOptions().device(dev);

  Accum A;
  A.n_ex = o.n_examples;
  A.sx = at::zeros({d}, dopt.dtype(at::kDouble));
  A.sx2 = at::zeros_like(A.sx);
  A.sr = at::zeros_like(A.sx);
  A.sr2 = at::zeros_like(A.sx);
  A.counts = at::zeros({F}, dopt.dtype(at::kLong));
  A.act_sum = at::zeros({F}, dopt.dtype(at::kDouble));
  A.act_max = at::zeros({F}, dopt.dtype(at::kFloat));
  A.l0_hist = at::zeros({F + 1}, dopt.dtype(at::kLong));
  A.top_rows.assign(size_t(F), {});

  std::unique_ptr<AtomicFile> tokens_out;
  if (!o.save_tokens.empty()) tokens_out = std::make_unique<AtomicFile>(o.save_tokens);

  SeqBatch b;
  while (stream.next(b)) {
    const int64_t B = b.ids.size(0), T = b.ids.size(1);
    ForwardOut clean = run_batch(model, b, site, /*capture=*/true, o.downstream);
    at::Tensor keep = b.keep.to(dev);
    at::Tensor keep_flat = keep.reshape({-1});
    at::Tensor act = clean.act;  // [B, T, d]
    at::Tensor x = act.reshape({B * T, d}).index({keep_flat}).to(at::kFloat);  // [n, d]
    at::Tensor z = sae.encode(x);
    at::Tensor xh = sae.decode(z);
    const int64_t n = x.size(0);
    A.n += n;

    at::Tensor xd = x.to(at::kDouble), xhd = xh.to(at::kDouble), r = xd - xhd;
    A.sx += xd.sum(0);
    A.sx2 += xd.pow(2).sum(0);
    A.sr += r.sum(0);
    A.sr2 += r.pow(2).sum(0);
    at::Tensor xn = xd.norm(2, 1), xhn = xhd.norm(2, 1), dot = (xd * xhd).sum(1);
    A.s_xnorm2 += xn.pow(2).sum().item<double>();
    A.s_xhnorm2 += xhn.pow(2).sum().item<double>();
    A.s_dot += dot.sum().item<double>();
    A.s_cos += (dot / (xn * xhn + 1e-8)).sum().item<double>();
    A.s_l2in += xn.sum().item<double>();
    A.s_l2out += xhn.sum().item<double>();
    A.s_l2ratio += (xhn / at::where(xn.abs() < 1e-4, at::ones_like(xn), xn)).sum().item<double>();
    A.s_nmse += (r.pow(2).mean(1) / xd.pow(2).mean(1).clamp_min(1e-30)).sum().item<double>();
    at::Tensor fired = z > 0;
    at::Tensor l0 = fired.sum(1);  // [n] int64
    A.l0_hist += at::bincount(l0, {}, F + 1);
    A.s_l1 += z.to(at::kDouble).sum().item<double>();
    A.counts += fired.sum(0);
    A.act_sum += z.to(at::kDouble).sum(0);
    A.act_max = at::maximum(A.act_max, z.amax(0));

    // Kept row -> document, for the original's example texts.
    at::Tensor rows_of = keep_flat.nonzero().squeeze(1).to(at::kCPU).div(T, "floor");
    std::vector<int64_t> row_doc(static_cast<size_t>(n));
    const int64_t* rp = rows_of.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) row_doc[size_t(i)] = b.doc[size_t(rp[i])];
    add_top_rows(A, z, row_doc);

    if (o.downstream && T >= 2) {
      // With the SAE: evaluated positions get x̂, the others (BOS, padding) keep their activation.
      at::Tensor spliced = act.to(at::kFloat).reshape({B * T, d}).clone();
      spliced.index_put_({keep_flat}, xh);
      spliced = spliced.to(act.scalar_type());
      const auto shape = act.sizes().vec();
      InterventionFn with_sae = [spliced, shape](const at::Tensor& xs, const SiteCall& call) {
        MLXTERP_ASSERT(call.pos_offset == 0 && xs.size(0) * xs.size(1) == spliced.size(0));
        return spliced.view(xs.sizes());
      };
      InterventionFn zero = [](const at::Tensor& xs, const SiteCall&) { return at::zeros_like(xs); };
      at::Tensor ids = b.ids.to(dev);
      at::Tensor logits_sae = run_batch(model, b, site, false, true, with_sae).logits;
      at::Tensor logits_zero = run_batch(model, b, site, false, true, zero).logits;
      at::Tensor ce_mask = keep.narrow(1, 0, T - 1).logical_and(b.mask.to(dev).narrow(1, 1, T - 1).gt(0));
      A.ce_clean += masked_sum(token_ce(clean.logits, ids), ce_mask);
      A.ce_sae += masked_sum(token_ce(logits_sae, ids), ce_mask);
      A.ce_zero += masked_sum(token_ce(logits_zero, ids), ce_mask);
      A.n_ce += ce_mask.sum().item<int64_t>();
      at::Tensor lp = at::log_softmax(clean.logits, -1);
      A.kl_sae += masked_sum(token_kl(lp, logits_sae), keep);
      A.kl_zero += masked_sum(token_kl(lp, logits_zero), keep);
      A.n_kl += keep.sum().item<int64_t>();
    }

    if (tokens_out) {
      auto ia = b.ids.accessor<int64_t, 2>();
      at::Tensor kb = b.keep.to(at::kByte);
      auto ka = kb.accessor<uint8_t, 2>();
      for (int64_t i = 0; i < B; ++i) {
        const int64_t L = b.length[size_t(i)];
        ojson line;
        std::vector<int64_t> ids(static_cast<size_t>(L));
        std::vector<int> kp(static_cast<size_t>(L));
        for (int64_t j = 0; j < L; ++j) {
          ids[size_t(j)] = ia[i][j];
          kp[size_t(j)] = ka[i][j] ? 1 : 0;
        }
        line["ids"] = ids;
        line["keep"] = kp;
        line["doc"] = b.doc[size_t(i)];
        line["piece"] = b.piece[size_t(i)];
        tokens_out->stream() << line.dump() << "\n";
      }
    }
  }
  stream.finish_progress();
  MLXTERP_CHECK(A.n > 0, corpus.path(), ": no tokens to evaluate (", stream.documents(),
                " documents selected); expected text with at least one non-special token");
  if (tokens_out) tokens_out->commit();

  // ---- reconstruction ----
  const double N = double(A.n);
  std::vector<double> sx = to_vec(A.sx), sx2 = to_vec(A.sx2), sr = to_vec(A.sr), sr2 = to_vec(A.sr2);
  double sse = 0, sst = 0, var_r_centered = 0, sum_x = 0, sum_x2 = 0, sum_r = 0;
  std::vector<double> fvu_dim(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) {
    const double sst_i = sx2[size_t(i)] - sx[size_t(i)] * sx[size_t(i)] / N;  // Σ_t (x - x̄)²
    sse += sr2[size_t(i)];
    sst += sst_i;
    var_r_centered += sr2[size_t(i)] - sr[size_t(i)] * sr[size_t(i)] / N;
    fvu_dim[size_t(i)] = sst_i > 0 ? sr2[size_t(i)] / sst_i : NAN;
    sum_x += sx[size_t(i)];
    sum_x2 += sx2[size_t(i)];
    sum_r += sr[size_t(i)];
  }
  const double NE = N * double(d);
  const double var_all_x = sum_x2 / NE - (sum_x / NE) * (sum_x / NE);
  const double var_all_r = sse / NE - (sum_r / NE) * (sum_r / NE);
  const double fvu = sst > 0 ? sse / sst : NAN;
  ojson rec;
  rec["mse"] = num(sse / N);
  rec["mse_per_element"] = num(sse / NE);
  rec["fvu"] = num(fvu);
  rec["explained_variance"] = num(1.0 - fvu);
  rec["frac_variance_explained_centered"] = num(sst > 0 ? 1.0 - var_r_centered / sst : NAN);
  rec["explained_variance_global"] = num(1.0 - var_all_r / (var_all_x + 1e-8));
  rec["nmse_openai"] = num(A.s_nmse / N);
  rec["cosine"] = num(A.s_cos / N);
  ojson fd = ojson::array();
  for (double v : fvu_dim) fd.push_back(num(v));
  rec["fvu_by_dimension"] = fd;

  ojson shr;
  shr["l2_norm_in"] = num(A.s_l2in / N);
  shr["l2_norm_out"] = num(A.s_l2out / N);
  shr["l2_ratio"] = num(A.s_l2ratio / N);
  shr["relative_reconstruction_bias"] = num(A.s_dot != 0 ? (A.s_xhnorm2 / N) / (A.s_dot / N) : NAN);

  // ---- sparsity ----
  std::vector<double> l0h = to_vec(A.l0_hist);
  double l0_mean = 0, l0_sq = 0;
  int64_t l0_min = -1, l0_max = 0;
  for (int64_t v = 0; v <= F; ++v) {
    const double c = l0h[size_t(v)];
    if (c <= 0) continue;
    l0_mean += c * double(v);
    l0_sq += c * double(v) * double(v);
    if (l0_min < 0) l0_min = v;
    l0_max = v;
  }
  l0_mean /= N;
  auto l0_quantile = [&](double q) {
    const double target = q * N;
    double acc = 0;
    for (int64_t v = 0; v <= F; ++v) {
      acc += l0h[size_t(v)];
      if (acc >= target && l0h[size_t(v)] > 0) return double(v);
    }
    return double(l0_max);
  };
  ojson hist = ojson::object();
  for (int64_t v = l0_min; v <= l0_max; ++v)
    if (l0h[size_t(v)] > 0) hist[std::to_string(v)] = int64_t(l0h[size_t(v)]);
  std::vector<double> counts = to_vec(A.counts), asum = to_vec(A.act_sum), amax = to_vec(A.act_max);
  const int64_t rare_threshold = std::max<int64_t>(o.rare_min, int64_t(o.rare_fraction * N));
  int64_t dead = 0, practical = 0, dense = 0, below5 = 0, below6 = 0;
  double cmax = 0, cmin = INFINITY;
  for (int64_t f = 0; f < F; ++f) {
    const double c = counts[size_t(f)], dens = c / N;
    dead += c == 0;
    practical += c < double(rare_threshold);
    dense += dens > o.dense_density;
    below5 += dens < 1e-5;
    below6 += dens < 1e-6;
    cmax = std::max(cmax, c);
    cmin = std::min(cmin, c);
  }
  // log10-density histogram in quarter decades from the smallest observable density to 1.
  const double lo = std::floor(std::log10(1.0 / N) * 4.0) / 4.0;
  const int n_bins = int(std::round(-lo * 4.0));
  std::vector<int64_t> dens_counts(size_t(std::max(1, n_bins)), 0);
  for (int64_t f = 0; f < F; ++f) {
    if (counts[size_t(f)] == 0) continue;
    const double ld = std::log10(counts[size_t(f)] / N);
    int bin = std::clamp(int(std::floor((ld - lo) * 4.0)), 0, int(dens_counts.size()) - 1);
    ++dens_counts[size_t(bin)];
  }
  ojson edges = ojson::array();
  for (int i = 0; i <= int(dens_counts.size()); ++i) edges.push_back(lo + 0.25 * i);
  ojson sp;
  sp["l0"] = num(l0_mean);
  sp["l0_std"] = num(std::sqrt(std::max(0.0, l0_sq / N - l0_mean * l0_mean)));
  sp["l0_min"] = l0_min;
  sp["l0_max"] = l0_max;
  sp["l0_quantiles"] = {{"p10", l0_quantile(0.1)}, {"p50", l0_quantile(0.5)}, {"p90", l0_quantile(0.9)},
                        {"p99", l0_quantile(0.99)}};
  sp["l0_histogram"] = hist;
  sp["l0_fraction"] = num(l0_mean / double(F));
  sp["l1"] = num(A.s_l1 / N);
  sp["dead_features"] = dead;
  sp["dead_fraction"] = num(double(dead) / double(F));
  sp["rare_threshold_tokens"] = rare_threshold;
  sp["practically_dead_features"] = practical;
  sp["practically_dead_fraction"] = num(double(practical) / double(F));
  sp["dense_density"] = o.dense_density;
  sp["dense_features"] = dense;
  sp["dense_fraction"] = num(double(dense) / double(F));
  sp["below_1e-5"] = below5;
  sp["below_1e-6"] = below6;
  sp["density_histogram"] = {{"log10_density_edges", edges}, {"counts", dens_counts}, {"dead", dead}};
  double mean_act_alive = 0;
  int64_t alive = 0;
  for (int64_t f = 0; f < F; ++f)
    if (counts[size_t(f)] > 0) {
      mean_act_alive += asum[size_t(f)] / counts[size_t(f)];
      ++alive;
    }
  sp["mean_activation_when_active"] = num(alive ? mean_act_alive / double(alive) : NAN);
  sp["max_activation"] = num(*std::max_element(amax.begin(), amax.end()));

  // ---- downstream ----
  ojson ds = ojson::object();
  if (o.downstream) {
    const double cc = A.ce_clean / double(A.n_ce), cs = A.ce_sae / double(A.n_ce), cz = A.ce_zero / double(A.n_ce);
    const double ks = A.kl_sae / double(A.n_kl), kz = A.kl_zero / double(A.n_kl);
    ds["ce_loss_without_sae"] = num(cc);
    ds["ce_loss_with_sae"] = num(cs);
    ds["ce_loss_with_ablation"] = num(cz);
    ds["ce_loss_score"] = num((cz - cs) / (cz - cc));
    ds["delta_lm_loss"] = num(cs - cc);
    ds["kl_div_with_sae"] = num(ks);
    ds["kl_div_with_ablation"] = num(kz);
    ds["kl_div_score"] = num((kz - ks) / kz);
    ds["ce_tokens"] = A.n_ce;
    ds["kl_tokens"] = A.n_kl;
  }

  // ---- the original's report ----
  std::vector<int64_t> order(static_cast<size_t>(F));
  for (int64_t f = 0; f < F; ++f) order[size_t(f)] = f;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return counts[size_t(a)] > counts[size_t(c)]; });
  ojson feats = ojson::array();
  int64_t with_examples = 0;
  for (int64_t i = 0; i < std::min<int64_t>(o.n_examples_features, F); ++i) {
    const int64_t f = order[size_t(i)];
    ojson ex = ojson::array();
    std::vector<int64_t> seen;
    for (const auto& [v, doc] : A.top_rows[size_t(f)]) {
      if (std::find(seen.begin(), seen.end(), doc) != seen.end()) continue;
      seen.push_back(doc);
      std::string text = corpus.pretokenized() ? model.decode(corpus.ids(size_t(doc))) : corpus.text(size_t(doc));
      if (text.size() > 200) {  // first 200 characters, not cutting a UTF-8 sequence
        size_t cut = 200;
        while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
        text = text.substr(0, cut);
      }
      ex.push_back({{"activation", v}, {"document", doc}, {"text", text}});
    }
    with_examples += !ex.empty();
    feats.push_back({{"feature", f}, {"count", int64_t(counts[size_t(f)])}, {"examples", ex}});
  }
  const double cos = A.s_cos / N;
  SaeQualityScore qs = sae_quality_score(cos, double(practical) / double(F), with_examples);
  const SiteInfo& si = model.sites()[site];
  ojson orig;
  orig["sae_path"] = o.sae_path;
  orig["model"] = o.model_path.empty() ? model.source() : o.model_path;
  orig["layer"] = si.layer;
  orig["component"] = si.component.empty() ? "resid_post" : si.component;
  orig["architecture"] = {{"type", sae_arch_name(sae.arch)},
                          {"d_model", d},
                          {"d_hidden", F},
                          {"expansion", double(F) / double(d)},
                          {"k", sae.k}};
  orig["reconstruction"] = {{"mse", num(sse / NE)},
                            {"cosine_similarity", num(cos)},
                            {"explained_variance", num(1.0 - var_all_r / (var_all_x + 1e-8))}};
  orig["sparsity"] = {{"l0_mean", num(l0_mean)},
                      {"l0_fraction", num(l0_mean / double(F))},
                      {"dead_features", dead},
                      {"rare_threshold", rare_threshold},
                      {"dead_features_practical", practical},
                      {"dead_fraction", num(double(practical) / double(F))},
                      {"max_feature_activations", int64_t(cmax)},
                      {"min_feature_activations", int64_t(cmin)}};
  orig["interpretability"] = {{"features", feats}, {"features_with_examples", with_examples}};
  orig["score_breakdown"] = {{"reconstruction", qs.reconstruction},
                             {"sparsity", qs.sparsity},
                             {"interpretability", qs.interpretability}};
  orig["quality_score"] = qs.total;
  orig["max_score"] = 5.0;
  orig["verdict"] = qs.verdict;

  ojson out;
  out["format"] = "mlxterp-sae-eval";
  out["version"] = 1;
  ojson sj = {{"path", o.sae_path},
              {"description", sae.describe()},
              {"architecture", sae_arch_name(sae.arch)},
              {"d_in", d},
              {"d_sae", F},
              {"k", sae.k},
              {"site", si.name}};
  if (sae.metadata.contains("imported_from")) sj["imported_from"] = sae.metadata["imported_from"];
  if (sae.metadata.contains("hook_name")) sj["hook_name"] = sae.metadata["hook_name"];
  out["sae"] = sj;
  out["model"] = o.model_path.empty() ? model.source() : o.model_path;
  out["data"] = {{"path", corpus.path()},
                 {"documents_total", int64_t(corpus.size())},
                 {"documents_evaluated", stream.documents_done()},
                 {"first_document", stream.first_document()},
                 {"holdout", o.data.holdout},
                 {"context_size", stream.context_size()},
                 {"sequences", stream.sequences()},
                 {"tokens", A.n},
                 {"exclude_special", o.data.exclude_special}};
  out["reconstruction"] = rec;
  out["shrinkage"] = shr;
  out["sparsity"] = sp;
  out["downstream"] = ds;
  out["original_report"] = orig;
  const double secs = timer.seconds();
  out["timing"] = {{"seconds", secs},
                   {"tokens_per_s", N / std::max(1e-9, secs)},
                   {"peak_rss_mb", double(peak_rss_bytes()) / 1048576.0}};
  return out;
}

}  // namespace mlxterp
