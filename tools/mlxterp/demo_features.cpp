// `mlxterp demo`: which SAE features to show and where they fire most strongly.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "demo.hpp"

#include "mlxterp/error.hpp"
#include "mlxterp/progress.hpp"

namespace mlxterp::cli::demo {

std::string human_count(int64_t n) {
  char b[32];
  if (n >= 1000000)
    std::snprintf(b, sizeof b, "%.2fM", n / 1e6);
  else if (n >= 1000)
    std::snprintf(b, sizeof b, "%.0fK", n / 1e3);
  else
    std::snprintf(b, sizeof b, "%lld", static_cast<long long>(n));
  return b;
}

std::string fixed(double v, int precision) {
  char b[48];
  std::snprintf(b, sizeof b, "%.*f", precision, v);
  return b;
}

std::string first_lines(const std::string& path, int64_t n, const std::string& out) {
  std::string text = read_file(path), kept;
  int64_t got = 0;
  for (const auto& line : split(text, '\n')) {
    if (trim(line).empty()) continue;
    kept += line + "\n";
    if (++got == n) break;
  }
  MLXTERP_CHECK(got > 0, path, ": no text; expected one document per line");
  write_file_atomic(out, kept);
  return out;
}

namespace {

// Running top-n (value, token index) per feature, merged batch by batch with topk.
struct TopTracker {
  at::Tensor values, index;  // [d_sae, n]
  void add(const at::Tensor& z, const at::Tensor& token_index, int64_t n) {
    // z [rows, d_sae] (non-kept rows already zeroed), token_index [rows] int64 (global token numbers)
    at::Tensor zt = z.t();                                           // [d_sae, rows]
    const int64_t k = std::min<int64_t>(n, zt.size(1));
    auto [v, i] = zt.topk(k, 1);                                     // [d_sae, k]
    at::Tensor gi = token_index.index({i.reshape({-1})}).view(i.sizes());
    if (!values.defined()) {
      values = v;
      index = gi;
      return;
    }
    at::Tensor allv = at::cat({values, v}, 1), alli = at::cat({index, gi}, 1);
    auto [v2, j] = allv.topk(std::min<int64_t>(n, allv.size(1)), 1);
    values = v2;
    index = alli.gather(1, j);
  }
};

}  // namespace

std::vector<Feature> top_features(const InterpretableModel& m, const SAE& sae, int layer, const TextCorpus& corpus,
                                  const FeatureOptions& o) {
  at::NoGradGuard ng;
  const Tokenizer& tok = m.tokenizer();
  const int64_t n_docs = o.max_docs > 0 ? std::min<int64_t>(o.max_docs, int64_t(corpus.size())) : int64_t(corpus.size());
  const int64_t n_ctx = m.model().config().n_ctx;
  const std::string site = "model.layers." + std::to_string(layer);
  // Keep several candidates per feature so that at most one context per document survives.
  const int64_t keep = 4 * o.n_contexts;
  std::vector<std::vector<int32_t>> doc_ids(static_cast<size_t>(n_docs));
  std::vector<int64_t> token_doc, token_pos;  // global token number -> (doc, pos)
  at::Tensor active = at::zeros({sae.d_sae}, at::kLong);
  int64_t n_tokens = 0;
  TopTracker top;
  Progress bar("Scanning features", n_docs, stderr, !o.progress);
  for (int64_t d0 = 0; d0 < n_docs; d0 += o.batch) {
    const int64_t d1 = std::min(n_docs, d0 + o.batch);
    std::vector<std::string> texts;
    for (int64_t d = d0; d < d1; ++d) texts.push_back(corpus.text(size_t(d)));
    BatchOptions bo;
    bo.max_length = n_ctx;
    BatchEncoding enc = encode_batch(tok, texts, bo);
    TraceOptions to;
    to.sites = {site};
    to.need_logits = false;
    TraceResult tr = m.trace_ids(enc.ids, enc.attention_mask, to);
    at::Tensor acts = tr.get(site).to(at::kCPU, at::kFloat);  // [b, t, d_model]
    const int64_t b = acts.size(0), t = acts.size(1);
    at::Tensor keepmask = enc.attention_mask.to(at::kBool).clone();  // [b, t]
    for (int64_t s : {int64_t(tok.special().bos), int64_t(tok.special().eos), int64_t(tok.special().pad)})
      if (s >= 0) keepmask &= enc.ids != s;
    at::Tensor z = sae.encode(acts.reshape({b * t, -1}).to(sae.device())).to(at::kCPU);  // [b*t, d_sae]
    at::Tensor km = keepmask.reshape({-1});
    z = z * km.unsqueeze(1).to(z.scalar_type());
    active += (z > 0).sum(0);
    n_tokens += km.sum().item<int64_t>();
    at::Tensor gidx = at::arange(int64_t(token_doc.size()), int64_t(token_doc.size()) + b * t, at::kLong);
    for (int64_t i = 0; i < b; ++i) {
      const int64_t d = d0 + i;
      const int64_t len = enc.lengths[size_t(i)];
      const at::Tensor row = enc.ids[i].narrow(0, 0, len);
      doc_ids[size_t(d)] = std::vector<int32_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + len);
      for (int64_t p = 0; p < t; ++p) {
        token_doc.push_back(d);
        token_pos.push_back(p);
      }
    }
    top.add(z, gidx, keep);
    bar.update(d1 - d0);
  }
  bar.finish();
  MLXTERP_CHECK(n_tokens > 0, "demo: the SAE corpus has no tokens to scan; expected text documents (--data)");

  // Eligible features: fired on >= 5 tokens, on at most max_density of them.
  const at::Tensor act = active.contiguous();
  const std::vector<int64_t> count(act.data_ptr<int64_t>(), act.data_ptr<int64_t>() + act.numel());
  std::vector<int64_t> eligible;
  for (int64_t f = 0; f < sae.d_sae; ++f)
    if (count[size_t(f)] >= 5 && double(count[size_t(f)]) <= o.max_density * double(n_tokens)) eligible.push_back(f);
  // Densest first; ties by id, so the order is deterministic.
  std::stable_sort(eligible.begin(), eligible.end(),
                   [&](int64_t a, int64_t b) { return count[size_t(a)] > count[size_t(b)]; });
  MLXTERP_CHECK(!eligible.empty(), "demo: no SAE feature fires on between 5 tokens and ", o.max_density * 100,
                "% of the ", n_tokens, " scanned tokens; expected a longer text (--data, --max-docs) or more SAE training");
  std::vector<std::pair<int64_t, std::string>> picked;
  const int64_t n_frequent = (o.n_features + 1) / 2;
  for (int64_t i = 0; i < std::min<int64_t>(n_frequent, int64_t(eligible.size())); ++i) picked.emplace_back(eligible[size_t(i)], "frequent");
  std::vector<int64_t> rest(eligible.begin() + std::min<size_t>(size_t(n_frequent), eligible.size()), eligible.end());
  std::mt19937_64 rng(o.seed);
  for (int64_t i = 0; i < int64_t(rest.size()) && int64_t(picked.size()) < o.n_features; ++i) {
    std::swap(rest[size_t(i)], rest[size_t(i) + size_t(rng() % (rest.size() - size_t(i)))]);
    picked.emplace_back(rest[size_t(i)], "random");
  }

  std::vector<Feature> out;
  for (const auto& [f, why] : picked) {
    Feature feat;
    feat.id = f;
    feat.density = double(count[size_t(f)]) / double(n_tokens);
    feat.why = why;
    std::vector<char> seen(size_t(n_docs), 0);
    for (int64_t j = 0; j < top.values.size(1) && int64_t(feat.contexts.size()) < o.n_contexts; ++j) {
      const double v = top.values[f][j].item<double>();
      if (v <= 0) break;
      const int64_t g = top.index[f][j].item<int64_t>();
      const int64_t d = token_doc[size_t(g)];
      if (seen[size_t(d)]) continue;
      seen[size_t(d)] = 1;
      Context c;
      c.doc = d;
      c.pos = token_pos[size_t(g)];
      c.value = v;
      c.tokens = m.to_str_tokens(doc_ids[size_t(d)]);
      // The feature's activation over the whole document, for the report's shading.
      TraceOptions to;
      to.sites = {site};
      to.need_logits = false;
      const auto& di = doc_ids[size_t(d)];
      at::Tensor ids = at::tensor(std::vector<int64_t>(di.begin(), di.end()), at::kLong).unsqueeze(0);
      at::Tensor z = sae.encode(m.trace_ids(ids, {}, to).get(site)[0].to(sae.device(), at::kFloat)).to(at::kCPU);
      at::Tensor col = z.select(1, f).contiguous();
      c.acts.assign(col.data_ptr<float>(), col.data_ptr<float>() + col.numel());
      feat.contexts.push_back(std::move(c));
    }
    out.push_back(std::move(feat));
  }
  return out;
}

std::string context_text(const Context& c, int before, int after) {
  std::string s;
  const int64_t lo = std::max<int64_t>(1, c.pos - before);  // position 0 is BOS
  const int64_t hi = std::min<int64_t>(int64_t(c.tokens.size()) - 1, c.pos + after);
  if (lo > 1) s += "...";
  for (int64_t p = lo; p <= hi; ++p) {
    std::string t = c.tokens[size_t(p)];
    if (p == c.pos) {
      // Keep a leading space outside the brackets: "the [LORD]".
      const bool sp = !t.empty() && t[0] == ' ';
      s += (sp ? " [" : "[") + t.substr(sp ? 1 : 0) + "]";
    } else {
      s += t;
    }
  }
  if (hi < int64_t(c.tokens.size()) - 1) s += " ...";
  return s;
}

}  // namespace mlxterp::cli::demo
