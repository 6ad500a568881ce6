// Streaming feature analysis: top contexts (bounded heaps), reservoir samples, growing histograms, densities.
#include <algorithm>
#include <climits>
#include <cmath>

#include "mlxterp/error.hpp"
#include "mlxterp/sae_features.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"
#include "stream.hpp"

namespace mlxterp {

using namespace sae_eval_detail;

namespace {

constexpr int kHistBins = 32;

struct Rec {
  FeatureContext c;
  bool pending = false;
  int64_t seq = 0;  // row of the batch, while pending
};

struct Latent {
  int64_t count = 0;
  double sum = 0;
  float max = 0;
  std::vector<Rec> heap;  // min-heap on value (front = weakest kept)
  std::vector<Rec> res;   // reservoir
  uint64_t rng = 0;
  int exp = INT_MIN;      // histogram range [0, 2^exp)
  std::vector<uint32_t> hist;
  bool touched = false;
};

bool weaker(const Rec& a, const Rec& b) { return a.c.value > b.c.value; }  // std heap with this = min-heap

uint64_t next_rand(uint64_t& s) {  // splitmix64
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void hist_add(Latent& L, float v) {
  if (L.hist.empty()) L.hist.assign(kHistBins, 0);
  if (L.exp == INT_MIN) std::frexp(double(v), &L.exp);  // v < 2^exp
  while (double(v) >= std::ldexp(1.0, L.exp)) {  // double the range: merge bin pairs into the lower half
    for (int i = 0; i < kHistBins / 2; ++i) L.hist[size_t(i)] = L.hist[size_t(2 * i)] + L.hist[size_t(2 * i + 1)];
    for (int i = kHistBins / 2; i < kHistBins; ++i) L.hist[size_t(i)] = 0;
    ++L.exp;
  }
  int bin = int(double(v) / std::ldexp(1.0, L.exp) * kHistBins);
  ++L.hist[size_t(std::clamp(bin, 0, kHistBins - 1))];
}

void start_rec(Rec& r, float v, int64_t seq, int64_t pos, const SeqBatch& b) {
  r.c = FeatureContext{};
  r.c.value = v;
  r.c.doc = b.doc[size_t(seq)];
  r.c.piece = b.piece[size_t(seq)];
  r.c.position = pos;
  r.pending = true;
  r.seq = seq;
}

// Model final-norm gain per residual dimension: (norm(s e_i) - norm(-s e_i))_i / (2 sqrt(d)). RMSNorm maps s e_i to
// s e_i / rms(s e_i) * w = sqrt(d) w_i e_i (any s > 0), so this is exactly the RMSNorm weight (incl. Gemma's 1 + w); for LayerNorm
// it is the weight up to a factor common to all dimensions.
at::Tensor final_norm_gain(const Model& m) {
  const int64_t d = m.config().d_model;
  auto opt = at::TensorOptions().device(m.device()).dtype(m.dtype());
  at::Tensor e = at::eye(d, opt) * std::sqrt(double(d));
  return ((m.final_norm(e) - m.final_norm(-e)) / (2 * std::sqrt(double(d)))).diagonal().to(at::kFloat);
}

}  // namespace

bool add_logit_tables(const InterpretableModel& model, const SAE& sae, std::vector<FeatureStats>& stats, int64_t n) {
  at::NoGradGuard ng;
  const Model& m = model.model();
  if (sae.d_in != m.config().d_model || stats.empty()) return false;
  const at::Device dev = m.device();
  at::Tensor WU = m.unembedding_matrix();                 // [d_model, V]
  at::Tensor g = final_norm_gain(m);                      // [d_model]
  at::Tensor Wd = sae.folded().params.W_dec.to(dev);      // [d_sae, d_in] raw space
  const int64_t V = WU.size(1), k = std::min<int64_t>(n, V);
  for (size_t c0 = 0; c0 < stats.size(); c0 += 256) {
    const size_t c1 = std::min(stats.size(), c0 + 256);
    std::vector<int64_t> ids;
    for (size_t i = c0; i < c1; ++i) ids.push_back(stats[i].feature);
    at::Tensor sel = at::tensor(ids, at::kLong).to(dev);
    at::Tensor eff = at::matmul((Wd.index_select(0, sel) * g).to(WU.scalar_type()), WU).to(at::kFloat);  // [c, V]
    auto [pv, pi] = eff.topk(k, 1);
    auto [nv, ni] = eff.topk(k, 1, /*largest=*/false);
    at::Tensor lo = std::get<0>(eff.min(1)), hi = std::get<0>(eff.max(1));
    pv = pv.cpu(); pi = pi.cpu(); nv = nv.cpu(); ni = ni.cpu(); lo = lo.cpu(); hi = hi.cpu();
    for (size_t i = c0; i < c1; ++i) {
      const int64_t r = int64_t(i - c0);
      FeatureStats& f = stats[i];
      f.promoted.clear();
      f.suppressed.clear();
      for (int64_t j = 0; j < k; ++j) {
        f.promoted.push_back({int32_t(pi[r][j].item<int64_t>()), pv[r][j].item<float>()});
        f.suppressed.push_back({int32_t(ni[r][j].item<int64_t>()), nv[r][j].item<float>()});
      }
      f.logit_lo = lo[r].item<double>();
      f.logit_hi = hi[r].item<double>();
      at::Tensor h = at::histc(eff[r], 24, f.logit_lo, f.logit_hi > f.logit_lo ? f.logit_hi : f.logit_lo + 1e-6).cpu();
      f.logit_hist.assign(size_t(h.numel()), 0);
      for (int64_t j = 0; j < h.numel(); ++j) f.logit_hist[size_t(j)] = int64_t(h[j].item<float>());
    }
  }
  return true;
}

void add_neighbors(const SAE& sae, std::vector<FeatureStats>& stats, int64_t n) {
  at::NoGradGuard ng;
  if (stats.empty() || sae.d_sae < 2) return;
  at::Tensor W = sae.folded().params.W_dec;  // raw-space directions
  at::Tensor Wn = W / W.norm(2, 1, true).clamp_min(1e-12);
  const int64_t k = std::min<int64_t>(n, sae.d_sae - 1);
  for (size_t c0 = 0; c0 < stats.size(); c0 += 256) {
    const size_t c1 = std::min(stats.size(), c0 + 256);
    std::vector<int64_t> ids;
    for (size_t i = c0; i < c1; ++i) ids.push_back(stats[i].feature);
    at::Tensor sel = at::tensor(ids, at::kLong).to(W.device());
    at::Tensor cos = at::matmul(Wn.index_select(0, sel), Wn.t());  // [c, d_sae]
    cos.scatter_(1, sel.unsqueeze(1), -INFINITY);                 // not itself
    auto [v, ix] = cos.topk(k, 1);
    v = v.cpu();
    ix = ix.cpu();
    for (size_t i = c0; i < c1; ++i) {
      stats[i].neighbors.clear();
      for (int64_t j = 0; j < k; ++j)
        stats[i].neighbors.push_back({ix[int64_t(i - c0)][j].item<int64_t>(), v[int64_t(i - c0)][j].item<float>()});
    }
  }
}

FeatureAnalysis analyze_features(const InterpretableModel& model, const SAE& sae0, const TextCorpus& corpus,
                                 const FeatureAnalysisOptions& o) {
  Timer timer;
  at::NoGradGuard ng;
  MLXTERP_CHECK(o.top_contexts >= 1 && o.sample_contexts >= 0 && o.context_left >= 0 && o.context_right >= 0,
                "feature analysis: top_contexts must be >= 1 and sample_contexts, context_left, context_right >= 0; got ",
                o.top_contexts, ", ", o.sample_contexts, ", ", o.context_left, ", ", o.context_right);
  const int site = resolve_sae_site(sae0, model, o.data.site);
  const at::Device dev = model.model().device();
  const SAE sae = sae0.device() == dev ? sae0 : sae0.to(dev);
  const int64_t F = sae.d_sae, d = sae.d_in;
  std::vector<int64_t> sel = o.features;
  if (sel.empty())
    for (int64_t f = 0; f < F; ++f) sel.push_back(f);
  std::vector<char> seen(size_t(F), 0);
  for (int64_t f : sel) {
    MLXTERP_CHECK(f >= 0 && f < F, "--features: latent ", f, " is out of range; expected 0 .. ", F - 1,
                  " (the SAE has ", F, " latents)");
    MLXTERP_CHECK(!seen[size_t(f)], "--features: latent ", f, " is listed twice");
    seen[size_t(f)] = 1;
  }
  const int64_t S = int64_t(sel.size());
  const bool all = S == F && [&] {
    for (int64_t i = 0; i < S; ++i)
      if (sel[size_t(i)] != i) return false;
    return true;
  }();
  at::Tensor sel_t = at::tensor(sel, at::kLong).to(dev);

  std::vector<Latent> lat(static_cast<size_t>(S));
  const size_t K = size_t(o.top_contexts), R = size_t(o.sample_contexts);
  for (int64_t s = 0; s < S; ++s) {
    lat[size_t(s)].heap.reserve(K);
    lat[size_t(s)].res.reserve(R);
    lat[size_t(s)].rng = mix_seed({o.seed, 0xFEA7u, uint64_t(sel[size_t(s)])});
  }

  SaeDataOptions dopt = o.data;
  if (dopt.progress_label == "Evaluating SAE") dopt.progress_label = "Analysing features";
  SequenceStream stream(model, corpus, site, dopt, sae);
  const int64_t W = o.context_left + o.context_right + 1;
  SeqBatch b;
  std::vector<int64_t> touched;
  while (stream.next(b)) {
    const int64_t B = b.ids.size(0), T = b.ids.size(1);
    ForwardOut fw = run_batch(model, b, site, true, false);
    at::Tensor keep = b.keep.to(dev);
    auto ia = b.ids.accessor<int64_t, 2>();
    // Sub-batches of whole sequences keep the dense latents under ~64 MB.
    const int64_t per = std::max<int64_t>(1, (int64_t(1) << 24) / std::max<int64_t>(1, T * F));
    for (int64_t q0 = 0; q0 < B; q0 += per) {
      const int64_t nb = std::min(per, B - q0);
      at::Tensor x = fw.act.narrow(0, q0, nb).reshape({nb * T, d}).to(at::kFloat);
      at::Tensor z = sae.encode(x) * keep.narrow(0, q0, nb).reshape({nb * T, 1}).to(at::kFloat);
      if (!all) z = z.index_select(1, sel_t);  // [nb*T, S]
      at::Tensor nz = z.nonzero();              // [P, 2] (row, slot), row-major order
      at::Tensor vals = z.index({nz.select(1, 0), nz.select(1, 1)}).to(at::kCPU, at::kFloat).contiguous();
      nz = nz.to(at::kCPU).contiguous();
      const int64_t P = nz.size(0);
      const int64_t* np = nz.data_ptr<int64_t>();
      const float* vp = vals.data_ptr<float>();
      touched.clear();
      for (int64_t p = 0; p < P; ++p) {
        const int64_t row = np[2 * p], s = np[2 * p + 1];
        const float v = vp[p];
        Latent& L = lat[size_t(s)];
        const int64_t seq = q0 + row / T, pos = row % T;
        ++L.count;
        L.sum += v;
        L.max = std::max(L.max, v);
        hist_add(L, v);
        bool ins = false;
        if (L.heap.size() < K) {
          L.heap.emplace_back();
          start_rec(L.heap.back(), v, seq, pos, b);
          std::push_heap(L.heap.begin(), L.heap.end(), weaker);
          ins = true;
        } else if (v > L.heap.front().c.value) {
          std::pop_heap(L.heap.begin(), L.heap.end(), weaker);
          start_rec(L.heap.back(), v, seq, pos, b);
          std::push_heap(L.heap.begin(), L.heap.end(), weaker);
          ins = true;
        }
        if (R > 0) {
          if (L.res.size() < R) {
            L.res.emplace_back();
            start_rec(L.res.back(), v, seq, pos, b);
            ins = true;
          } else {
            const uint64_t j = next_rand(L.rng) % uint64_t(L.count);
            if (j < R) {
              start_rec(L.res[size_t(j)], v, seq, pos, b);
              ins = true;
            }
          }
        }
        if (ins && !L.touched) {
          L.touched = true;
          touched.push_back(s);
        }
      }
      // Fill the windows of this sub-batch's new contexts with one gather.
      std::vector<Rec*> pend;
      std::vector<int64_t> pslot;
      for (int64_t s : touched) {
        Latent& L = lat[size_t(s)];
        L.touched = false;
        for (auto* vec : {&L.heap, &L.res})
          for (Rec& r : *vec)
            if (r.pending) {
              pend.push_back(&r);
              pslot.push_back(s);
            }
      }
      if (pend.empty()) continue;
      std::vector<int64_t> rows(pend.size() * size_t(W)), cols(pend.size() * size_t(W));
      for (size_t i = 0; i < pend.size(); ++i) {
        const Rec& r = *pend[i];
        const int64_t len = b.length[size_t(r.seq)];
        for (int64_t w = 0; w < W; ++w) {
          const int64_t pos = std::clamp<int64_t>(r.c.position - o.context_left + w, 0, len - 1);
          rows[i * size_t(W) + size_t(w)] = (r.seq - q0) * T + pos;
          cols[i * size_t(W) + size_t(w)] = pslot[i];
        }
      }
      at::Tensor g = z.index({at::tensor(rows, at::kLong).to(dev), at::tensor(cols, at::kLong).to(dev)})
                         .to(at::kCPU, at::kFloat).contiguous();
      const float* gp = g.data_ptr<float>();
      for (size_t i = 0; i < pend.size(); ++i) {
        Rec& r = *pend[i];
        const int64_t len = b.length[size_t(r.seq)];
        const int64_t a = std::max<int64_t>(0, r.c.position - o.context_left);
        const int64_t e = std::min<int64_t>(len, r.c.position + o.context_right + 1);
        r.c.centre = int32_t(r.c.position - a);
        r.c.tokens.clear();
        r.c.acts.clear();
        for (int64_t pos = a; pos < e; ++pos) {
          r.c.tokens.push_back(int32_t(ia[r.seq][pos]));
          r.c.acts.push_back(gp[i * size_t(W) + size_t(pos - (r.c.position - o.context_left))]);
        }
        r.pending = false;
      }
    }
  }
  stream.finish_progress();

  FeatureAnalysis fa;
  fa.site = model.sites()[site].name;
  fa.tokens = stream.tokens();
  fa.sequences = stream.sequences();
  fa.documents = stream.documents_done();
  fa.context_size = stream.context_size();
  fa.data_path = corpus.path();
  fa.features.resize(size_t(S));
  for (int64_t s = 0; s < S; ++s) {
    Latent& L = lat[size_t(s)];
    FeatureStats& f = fa.features[size_t(s)];
    f.feature = sel[size_t(s)];
    f.count = L.count;
    f.density = fa.tokens > 0 ? double(L.count) / double(fa.tokens) : 0.0;
    f.max_act = L.max;
    f.mean_act = L.count ? L.sum / double(L.count) : 0.0;
    std::sort(L.heap.begin(), L.heap.end(), [](const Rec& a, const Rec& c) { return a.c.value > c.c.value; });
    for (auto& r : L.heap) f.top.push_back(std::move(r.c));
    std::sort(L.res.begin(), L.res.end(), [](const Rec& a, const Rec& c) { return a.c.value < c.c.value; });
    for (auto& r : L.res) f.samples.push_back(std::move(r.c));
    f.hist_range = L.exp == INT_MIN ? 0.0 : std::ldexp(1.0, L.exp);
    f.hist.assign(L.hist.begin(), L.hist.end());
    std::vector<Rec>().swap(L.heap);
    std::vector<Rec>().swap(L.res);
  }
  fa.has_logits = add_logit_tables(model, sae, fa.features, o.n_logits);
  add_neighbors(sae, fa.features, o.n_neighbors);
  fa.seconds = timer.seconds();
  return fa;
}

// ---- one text -------------------------------------------------------------------------------------

TextFeatures feature_activations_by_token(const InterpretableModel& model, const SAE& sae0, const std::string& text,
                                          const std::vector<int64_t>& features, const std::string& site_name) {
  at::NoGradGuard ng;
  const int site = resolve_sae_site(sae0, model, site_name);
  const SAE sae = sae0.device() == model.model().device() ? sae0 : sae0.to(model.model().device());
  TextFeatures r;
  r.ids = model.encode(text);
  MLXTERP_CHECK(!r.ids.empty(), "feature activations: the text ", quote(text.substr(0, 40)), " has no tokens");
  r.tokens = model.to_str_tokens(r.ids);
  for (int32_t id : r.ids) r.evaluated.push_back(!(model.has_tokenizer() && model.tokenizer().is_special(id)));
  TraceOptions t;
  t.sites = {model.sites()[site].name};
  t.need_logits = false;
  TraceResult tr = model.trace_ids(at::tensor(std::vector<int64_t>(r.ids.begin(), r.ids.end()), at::kLong).unsqueeze(0), {}, t);
  at::Tensor a = tr.activations.at(model.sites()[site].name);
  const int64_t n = int64_t(r.ids.size());
  at::Tensor z = sae.encode(a.reshape({n, sae.d_in}).to(at::kFloat));
  std::vector<uint8_t> ev(r.evaluated.begin(), r.evaluated.end());
  at::Tensor mask = at::tensor(std::vector<int64_t>(ev.begin(), ev.end()), at::kLong).to(z.device()).to(at::kFloat);
  z = z * mask.unsqueeze(1);
  r.features = features;
  if (r.features.empty())
    for (int64_t f = 0; f < sae.d_sae; ++f) r.features.push_back(f);
  for (int64_t f : r.features)
    MLXTERP_CHECK(f >= 0 && f < sae.d_sae, "--features: latent ", f, " is out of range; expected 0 .. ", sae.d_sae - 1);
  r.acts = z.index_select(1, at::tensor(r.features, at::kLong).to(z.device())).to(at::kCPU).contiguous();
  return r;
}

std::vector<TextFeature> top_features_for_text(const InterpretableModel& model, const SAE& sae, const std::string& text,
                                               int64_t top_k, const std::string& site) {
  TextFeatures tf = feature_activations_by_token(model, sae, text, {}, site);
  auto [mx, arg] = tf.acts.max(0);  // [d_sae]
  const int64_t k = std::min<int64_t>(top_k, mx.size(0));
  auto [v, ix] = mx.topk(k);
  std::vector<TextFeature> out;
  for (int64_t i = 0; i < k; ++i) {
    const float val = v[i].item<float>();
    if (!(val > 0)) break;
    const int64_t f = ix[i].item<int64_t>();
    out.push_back({f, val, arg[f].item<int64_t>()});
  }
  return out;
}

}  // namespace mlxterp
