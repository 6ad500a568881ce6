// Training data for train-lm: documents -> one token stream, seeded random windows, evaluation windows,
// the held-out loss and the unigram baseline.
#include <cmath>

#include "mlxterp/error.hpp"
#include "mlxterp/progress.hpp"
#include "mlxterp/train_lm.hpp"

namespace mlxterp::lm {

// Lines of a text without their "\n" / "\r\n" endings.
static std::vector<std::string> text_lines(const std::string& text) {
  std::vector<std::string> lines = split(text, '\n');
  for (auto& l : lines)
    if (!l.empty() && l.back() == '\r') l.pop_back();
  return lines;
}

DocSplit parse_doc_split(const std::string& s) {
  if (s == "lines") return DocSplit::Lines;
  if (s == "paragraphs") return DocSplit::Paragraphs;
  if (s == "whole") return DocSplit::Whole;
  MLXTERP_FAIL("--split: expected lines, paragraphs or whole, got '", s, "'");
}

std::vector<std::string> read_documents(const std::string& path, DocSplit split) {
  MLXTERP_CHECK(file_exists(path) && !is_directory(path), path, ": cannot open: no such file; expected a UTF-8 text file");
  std::string text = read_file(path);
  std::vector<std::string> docs;
  if (split == DocSplit::Whole) {
    if (!trim(text).empty()) docs.push_back(text);
  } else {
    std::string cur;
    auto flush = [&] {
      if (!trim(cur).empty()) docs.push_back(cur);
      cur.clear();
    };
    for (const auto& line : text_lines(text)) {
      if (split == DocSplit::Lines) {
        cur = line;
        flush();
      } else if (trim(line).empty()) {
        flush();
      } else {
        if (!cur.empty()) cur += "\n";
        cur += line;
      }
    }
    flush();
  }
  MLXTERP_CHECK(!docs.empty(), path, ": no text; expected at least one non-empty ",
                split == DocSplit::Lines ? "line" : split == DocSplit::Paragraphs ? "paragraph" : "document");
  return docs;
}

uint64_t TokenStream::fingerprint() const {
  uint64_t h = 1469598103934665603ULL;
  for (int32_t id : ids) {
    uint32_t u = uint32_t(id);
    for (int k = 0; k < 4; ++k) h = (h ^ ((u >> (8 * k)) & 0xff)) * 1099511628211ULL;
  }
  return h;
}

TokenStream tokenize_documents(const Tokenizer& tok, const std::vector<std::string>& docs, bool add_eos,
                               bool show_progress) {
  TokenStream s;
  const int32_t eos = tok.special().eos;
  Progress bar("Tokenizing", int64_t(docs.size()), stderr, !show_progress);
  for (const auto& d : docs) {
    std::vector<int32_t> ids = tok.encode(d);
    s.ids.insert(s.ids.end(), ids.begin(), ids.end());
    if (add_eos && eos >= 0) s.ids.push_back(eos);
    ++s.n_docs;
    bar.update(1);
  }
  bar.finish();
  return s;
}

TokenStream read_id_file(const std::string& path, int64_t d_vocab) {
  MLXTERP_CHECK(file_exists(path) && !is_directory(path), path,
                ": cannot open: no such file; expected token ids, one document per line");
  MLXTERP_CHECK(d_vocab > 0, path, ": the vocabulary size is unknown (give --vocab-size or --tokenizer)");
  std::string text = read_file(path);
  TokenStream s;
  size_t line_no = 0;
  for (const auto& line : text_lines(text)) {
    ++line_no;
    bool any = false;
    for (const auto& tokn : split(line, ' ')) {
      std::string t = trim(tokn);
      if (t.empty()) continue;
      int64_t id = parse_int(t, cat(path, ":", line_no));
      MLXTERP_CHECK(id >= 0 && id < d_vocab, path, ":", line_no, ": token id ", id, " is outside the vocabulary; expected 0 .. ",
                    d_vocab - 1);
      s.ids.push_back(int32_t(id));
      any = true;
    }
    s.n_docs += any;
  }
  MLXTERP_CHECK(!s.ids.empty(), path, ": no token ids; expected space-separated ids, one document per line");
  return s;
}

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

at::Tensor sample_batch(const TokenStream& data, int64_t batch, int64_t n_ctx, uint64_t seed, int64_t step) {
  const int64_t win = n_ctx + 1;
  MLXTERP_CHECK(int64_t(data.size()) >= win, "training data: ", data.size(), " tokens is less than one window of ",
                win, " (context + 1); expected more text or a smaller --context");
  const uint64_t range = uint64_t(int64_t(data.size()) - win + 1);
  // A counter-based generator: offset i of step s depends on (seed, s, i) only, never on earlier draws.
  const uint64_t base = mix(seed ^ mix(uint64_t(step) + 0x51ed270b27a1f3c5ULL));
  at::Tensor out = at::empty({batch, win}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < batch; ++i) {
    const uint64_t off = mix(base + uint64_t(i)) % range;  // modulo bias < range / 2^64: negligible
    const int32_t* src = data.ids.data() + off;
    for (int64_t j = 0; j < win; ++j) o[i * win + j] = src[j];
  }
  return out;
}

std::vector<at::Tensor> eval_windows(const TokenStream& data, int64_t n_ctx, int64_t max_tokens) {
  std::vector<at::Tensor> out;
  const int64_t n = int64_t(data.size());
  int64_t targets = 0;
  for (int64_t start = 0; start + 1 < n; start += n_ctx) {
    int64_t len = std::min(n_ctx + 1, n - start);
    if (max_tokens > 0) len = std::min(len, max_tokens - targets + 1);
    if (len < 2) break;
    std::vector<int64_t> w(data.ids.begin() + start, data.ids.begin() + start + len);
    out.push_back(at::tensor(w, at::kLong));
    targets += len - 1;
  }
  return out;
}

double EvalResult::perplexity() const { return std::exp(loss); }

EvalResult evaluate(Model& model, const TokenStream& data, int64_t n_ctx, int64_t max_tokens, int64_t batch) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> wins = eval_windows(data, n_ctx, max_tokens);
  EvalResult r;
  double total = 0;
  size_t i = 0;
  while (i < wins.size()) {
    // Equal-length windows go together; the short last one runs alone.
    size_t j = i;
    while (j < wins.size() && j - i < size_t(batch) && wins[j].size(0) == wins[i].size(0)) ++j;
    at::Tensor b = at::stack(std::vector<at::Tensor>(wins.begin() + i, wins.begin() + j)).to(model.device());
    const int64_t t = b.size(1) - 1;
    at::Tensor logits = model.forward(b.narrow(1, 0, t));  // [b, t, d_vocab]
    at::Tensor logp = at::log_softmax(logits.to(at::kFloat).reshape({-1, logits.size(-1)}), -1);
    at::Tensor nll = at::nll_loss(logp, b.narrow(1, 1, t).reshape({-1}), {}, at::Reduction::Sum);
    total += nll.item<double>();
    r.tokens += b.size(0) * t;
    i = j;
  }
  MLXTERP_CHECK(r.tokens > 0, "evaluation data: needs at least 2 tokens, got ", data.size());
  r.loss = total / double(r.tokens);
  return r;
}

EvalResult unigram_baseline(const TokenStream& train, const TokenStream& eval, int64_t d_vocab, int64_t n_ctx,
                            int64_t max_tokens) {
  std::vector<double> count(size_t(d_vocab), 1.0);  // add-one smoothing
  for (int32_t id : train.ids) count[size_t(id)] += 1.0;
  const double total = double(train.size()) + double(d_vocab);
  EvalResult r;
  double nll = 0;
  for (const at::Tensor& w : eval_windows(eval, n_ctx, max_tokens)) {
    const int64_t* p = w.data_ptr<int64_t>();
    for (int64_t k = 1; k < w.size(0); ++k) {
      MLXTERP_CHECK(p[k] >= 0 && p[k] < d_vocab, "evaluation data: token id ", p[k], " is outside the vocabulary (",
                    d_vocab, ")");
      nll -= std::log(count[size_t(p[k])] / total);
      ++r.tokens;
    }
  }
  MLXTERP_CHECK(r.tokens > 0, "evaluation data: needs at least 2 tokens, got ", eval.size());
  r.loss = nll / double(r.tokens);
  return r;
}

}  // namespace mlxterp::lm
