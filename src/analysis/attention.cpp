// Attention patterns and head-type scores (analysis_attention.hpp).
#include <random>

#include "mlxterp/analysis_attention.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

AttentionPatterns attention_patterns(const InterpretableModel& m, const Prompt& prompt, const std::vector<int>& layers) {
  at::NoGradGuard ng;
  AttentionPatterns p;
  p.ids = prompt_ids(m, prompt);
  p.tokens = token_strings(m, p.ids);
  p.layers = resolve_layers(layers, m.n_layers(), "attention");
  TraceOptions o;
  for (int l : p.layers) o.sites.push_back("model.layers." + std::to_string(l) + ".self_attn.attention_weights");
  o.need_logits = false;
  TraceResult tr = m.trace_ids(ids_tensor(p.ids), {}, o);
  std::vector<at::Tensor> w;
  for (const auto& s : o.sites) w.push_back(tr.get(s)[0].to(at::kCPU, at::kFloat));  // [h, t, t]
  p.weights = at::stack(w);
  return p;
}

nlohmann::json AttentionPatterns::to_json(int decimals) const {
  const double scale = std::pow(10.0, decimals);
  at::Tensor r = (weights * scale).round() / scale;
  nlohmann::ordered_json j;
  j["ids"] = ids;
  j["tokens"] = tokens;
  j["layers"] = layers;
  j["shape"] = {"layer", "head", "query", "key"};
  j["weights"] = report::tensor_json(r);
  return j;
}

// ---- scores ---------------------------------------------------------------------------------------

static void check_pattern(const at::Tensor& A, const char* what) {
  MLXTERP_CHECK(A.dim() == 2, what, ": expected one head's pattern [t_q, t_k], got shape ", shape_str(A.sizes()));
}

double previous_token_score(const at::Tensor& A) {
  check_pattern(A, "previous_token_score");
  if (A.size(0) < 2) return 0;
  return A.to(at::kDouble).diagonal(-1).mean().item<double>();
}

double first_token_score(const at::Tensor& A) {
  check_pattern(A, "first_token_score");
  if (A.size(0) < 2) return 0;
  return A.to(at::kDouble).narrow(0, 1, A.size(0) - 1).select(1, 0).mean().item<double>();
}

double current_token_score(const at::Tensor& A) {
  check_pattern(A, "current_token_score");
  if (A.size(0) < 2) return 0;
  return A.to(at::kDouble).diagonal(0).narrow(0, 1, A.size(0) - 1).mean().item<double>();
}

static double offset_diagonal_score(const at::Tensor& A, int64_t n, int64_t offset, int64_t back) {
  // Queries in the second copy: positions offset + n .. offset + 2n - 1; key = query - back.
  const int64_t t = A.size(0);
  double s = 0;
  int64_t c = 0;
  at::Tensor Ad = A.to(at::kDouble);
  for (int64_t i = offset + n; i < std::min(t, offset + 2 * n); ++i) {
    int64_t j = i - back;
    if (j < 0 || j >= A.size(1)) continue;
    s += Ad[i][j].item<double>();
    ++c;
  }
  return c ? s / double(c) : 0;
}

double induction_score(const at::Tensor& A, int64_t n, int64_t offset) {
  check_pattern(A, "induction_score");
  MLXTERP_CHECK(n >= 2, "induction_score: the repeated segment must have >= 2 tokens, got ", n);
  return offset_diagonal_score(A, n, offset, n - 1);
}

double duplicate_token_score(const at::Tensor& A, int64_t n, int64_t offset) {
  check_pattern(A, "duplicate_token_score");
  MLXTERP_CHECK(n >= 1, "duplicate_token_score: the repeated segment must have >= 1 token, got ", n);
  return offset_diagonal_score(A, n, offset, n);
}

InductionScores induction_scores(const InterpretableModel& m, const InductionOptions& o) {
  MLXTERP_CHECK(o.length >= 2, "induction scores: length must be >= 2, got ", o.length);
  MLXTERP_CHECK(o.n_sequences >= 1, "induction scores: n_sequences must be >= 1, got ", o.n_sequences);
  at::NoGradGuard ng;
  const int64_t V = m.model().config().d_vocab;
  // Candidate tokens: not special, not a byte-fallback piece "<0x..>".
  std::vector<int32_t> pool;
  for (int32_t id = 0; id < V; ++id) {
    if (m.has_tokenizer() && id < m.tokenizer().vocab_size()) {
      if (m.tokenizer().is_special(id)) continue;
      std::string piece = m.tokenizer().id_to_piece(id);
      if (piece.size() == 6 && starts_with(piece, "<0x") && piece.back() == '>') continue;
    } else if (id == m.model().config().bos_token_id || id == m.model().config().eos_token_id ||
               id == m.model().config().pad_token_id) {
      continue;
    }
    pool.push_back(id);
  }
  MLXTERP_CHECK(int64_t(pool.size()) >= o.length, "induction scores: only ", pool.size(),
                " ordinary tokens in the vocabulary; expected at least length = ", o.length);
  int32_t bos = m.has_tokenizer() ? m.tokenizer().special().bos : int32_t(m.model().config().bos_token_id);
  const bool use_bos = o.prepend_bos && bos >= 0;
  const int64_t off = use_bos ? 1 : 0, t = off + 2 * o.length;
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  at::Tensor ids = at::empty({o.n_sequences, t}, at::kLong);
  for (int s = 0; s < o.n_sequences; ++s) {
    if (use_bos) ids[s][0] = bos;
    for (int64_t i = 0; i < o.length; ++i) {
      int64_t tok = pool[pick(rng)];
      ids[s][off + i] = tok;
      ids[s][off + o.length + i] = tok;
    }
  }
  InductionScores r = induction_scores_on(m, ids, o.length, off, o.layers);
  r.options = o;
  return r;
}

InductionScores induction_scores_on(const InterpretableModel& m, const at::Tensor& ids_in, int64_t length, int64_t off,
                                    const std::vector<int>& layers) {
  at::NoGradGuard ng;
  const at::Tensor ids = ids_in.to(at::kCPU, at::kLong);
  MLXTERP_CHECK(ids.dim() == 2 && ids.size(1) == off + 2 * length && length >= 2 && off >= 0,
                "induction scores: expected ids [S, offset + 2 * length] with length >= 2, got ", ids.sizes(),
                " for length ", length, " and offset ", off);
  at::Tensor a = ids.narrow(1, off, length), b = ids.narrow(1, off + length, length);
  MLXTERP_CHECK(at::equal(a, b), "induction scores: the second half of each sequence must repeat the first (positions ", off,
                " .. ", off + length - 1, ")");
  const int64_t t = ids.size(1);
  const auto o = InductionOptions{length, int(ids.size(0)), off > 0, 0, layers};
  InductionScores r;
  r.options = o;
  r.layers = resolve_layers(layers, m.n_layers(), "induction scores");
  TraceOptions to;
  for (int l : r.layers) to.sites.push_back("model.layers." + std::to_string(l) + ".self_attn.attention_weights");
  to.need_logits = false;
  TraceResult tr = m.trace_ids(ids, {}, to);
  const int64_t H = m.model().config().n_heads, L = int64_t(r.layers.size());
  r.induction = at::zeros({L, H}, at::kDouble);
  r.duplicate = at::zeros({L, H}, at::kDouble);
  // Vectorised: gather the two diagonals for the second copy's queries.
  at::Tensor q = at::arange(off + o.length, t, at::kLong);
  for (int64_t li = 0; li < L; ++li) {
    at::Tensor w = tr.get(to.sites[size_t(li)]).to(at::kCPU, at::kDouble);  // [S, H, t, t]
    at::Tensor rows = w.index_select(2, q);                                  // [S, H, n, t]
    at::Tensor ki = (q - (o.length - 1)).view({1, 1, -1, 1}).expand({rows.size(0), H, q.size(0), 1});
    at::Tensor kd = (q - o.length).view({1, 1, -1, 1}).expand({rows.size(0), H, q.size(0), 1});
    r.induction[li] = rows.gather(3, ki).mean({0, 2, 3});
    r.duplicate[li] = rows.gather(3, kd).mean({0, 2, 3});
  }
  return r;
}

at::Tensor copying_scores(const Model& model, const std::vector<int>& layers0) {
  at::NoGradGuard ng;
  const auto& c = model.config();
  std::vector<int> layers = resolve_layers(layers0, int(c.n_layers), "copying scores");
  const int64_t V = c.d_vocab, H = c.n_heads, dh = c.d_head, rep = c.n_heads / c.n_kv_heads;
  at::Tensor WE = model.embed(at::arange(V, at::kLong).unsqueeze(0).to(model.device()))[0].to(at::kCPU, at::kDouble);  // [V, d]
  at::Tensor WU = model.unembedding_matrix().to(at::kCPU, at::kDouble);                                                  // [d, V]
  at::Tensor G = WE.t().matmul(WU.t());                                                                                  // [d, d]
  at::Tensor out = at::zeros({int64_t(layers.size()), H}, at::kDouble);
  for (size_t li = 0; li < layers.size(); ++li) {
    const std::string p = "model.layers." + std::to_string(layers[li]) + ".self_attn.";
    MLXTERP_CHECK(model.has_weight(p + "v_proj.weight") && model.has_weight(p + "o_proj.weight"),
                  "copying scores: the model has no separate '", p, "v_proj.weight' / 'o_proj.weight' (fused QKV "
                  "architectures are not supported yet)");
    at::Tensor Wv = model.w(p + "v_proj.weight").to(at::kCPU, at::kDouble);  // [n_kv*dh, d]
    at::Tensor Wo = model.w(p + "o_proj.weight").to(at::kCPU, at::kDouble);  // [d, n_heads*dh]
    for (int64_t h = 0; h < H; ++h) {
      at::Tensor Wvh = Wv.narrow(0, (h / rep) * dh, dh);  // [dh, d]
      at::Tensor Woh = Wo.narrow(1, h * dh, dh);          // [d, dh]
      at::Tensor M = Wvh.matmul(G).matmul(Woh);           // [dh, dh]: same nonzero spectrum as the V x V circuit
      at::Tensor ev = at::linalg_eigvals(M);
      double re = at::real(ev).sum().item<double>(), ab = ev.abs().sum().item<double>();
      out[int64_t(li)][h] = ab > 0 ? re / ab : 0.0;
    }
  }
  return out;
}

// ---- HeadScores -------------------------------------------------------------------------------------

std::vector<HeadScores::Entry> HeadScores::top(const std::string& score, int k) const {
  auto it = scores.find(score);
  MLXTERP_CHECK(it != scores.end(), "head scores: no score '", score, "'");
  std::vector<Entry> all;
  for (size_t li = 0; li < layers.size(); ++li)
    for (int64_t h = 0; h < n_heads; ++h) all.push_back({layers[li], h, it->second[int64_t(li)][h].item<double>()});
  std::stable_sort(all.begin(), all.end(), [](const Entry& a, const Entry& b) { return a.score > b.score; });
  if (int(all.size()) > k) all.resize(size_t(k));
  return all;
}

std::map<std::string, std::vector<HeadScores::Entry>> HeadScores::classify(const std::map<std::string, double>& th) const {
  std::map<std::string, std::vector<Entry>> out;
  for (const auto& [name, thr] : th) {
    auto it = scores.find(name);
    if (it == scores.end()) continue;
    for (const auto& e : top(name, int(layers.size() * size_t(n_heads))))
      if (e.score > thr) out[name].push_back(e);
  }
  return out;
}

nlohmann::json HeadScores::to_json() const {
  nlohmann::ordered_json j;
  j["layers"] = layers;
  j["n_heads"] = n_heads;
  nlohmann::ordered_json s;
  for (const auto& [name, t] : scores) s[name] = report::tensor_json(t);
  j["scores"] = s;
  nlohmann::ordered_json tops;
  for (const auto& [name, t] : scores) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& e : top(name, 5)) a.push_back({{"layer", e.layer}, {"head", e.head}, {"score", e.score}});
    tops[name] = a;
  }
  j["top"] = tops;
  return j;
}

HeadScores head_scores(const InterpretableModel& m, const AttentionPatterns& p, const InductionScores* ind, bool copying) {
  HeadScores hs;
  hs.layers = p.layers;
  hs.n_heads = p.weights.size(1);
  const int64_t L = int64_t(p.layers.size()), H = hs.n_heads;
  at::Tensor prev = at::zeros({L, H}, at::kDouble), first = at::zeros({L, H}, at::kDouble), cur = at::zeros({L, H}, at::kDouble);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h) {
      at::Tensor A = p.weights[l][h];
      prev[l][h] = previous_token_score(A);
      first[l][h] = first_token_score(A);
      cur[l][h] = current_token_score(A);
    }
  hs.scores["previous_token"] = prev;
  hs.scores["first_token"] = first;
  hs.scores["current_token"] = cur;
  if (ind) {
    MLXTERP_CHECK(ind->layers == p.layers, "head scores: induction scores cover other layers than the patterns");
    hs.scores["induction"] = ind->induction;
    hs.scores["duplicate_token"] = ind->duplicate;
  }
  if (copying) hs.scores["copying"] = copying_scores(m.model(), p.layers);
  return hs;
}

}  // namespace mlxterp
