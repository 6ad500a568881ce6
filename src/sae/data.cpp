// Documents, activation harvesting from the model, the streaming source and the shuffled batch stream.
#include <ATen/CPUGeneratorImpl.h>

#include "mlxterp/error.hpp"
#include "mlxterp/sae_data.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

uint64_t mix_seed(std::initializer_list<uint64_t> parts) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  for (uint64_t p : parts) {
    uint64_t z = (h ^ p) + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    h = z ^ (z >> 31);
  }
  return h >> 1;  // positive when read as int64
}

namespace {

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor p = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong));
  return std::vector<int64_t>(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + n);
}

}  // namespace

// ---- TextCorpus -----------------------------------------------------------------------------------

TextCorpus TextCorpus::open(const std::string& path, bool lines) {
  TextCorpus c;
  c.path_ = path;
  MLXTERP_CHECK(file_exists(path), path, ": no such file (--data expects a text file, a .jsonl file or a cache directory)");
  c.file_ = MappedFile::open(path);
  const char* s = reinterpret_cast<const char*>(c.file_->data());
  const size_t n = c.file_->size();
  c.jsonl_ = ends_with(to_lower(path), ".jsonl");
  size_t line_no = 0;
  auto push = [&](size_t a, size_t b) {  // [a, b) trimmed of surrounding whitespace
    while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
    while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
    if (b > a) {
      MLXTERP_CHECK(b - a < (size_t(1) << 32), path, ": a document longer than 4 GB");
      c.spans_.emplace_back(uint64_t(a), uint32_t(b - a));
    }
  };
  if (c.jsonl_) {
    size_t a = 0;
    int kind = -1;  // 0 text, 1 ids
    while (a < n) {
      size_t e = a;
      while (e < n && s[e] != '\n') ++e;
      ++line_no;
      std::string_view line(s + a, e - a);
      if (!trim(line).empty()) {
        nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        MLXTERP_CHECK(!j.is_discarded() && j.is_object(), path, ":", line_no,
                      ": expected a JSON object with a \"text\" string (or an \"ids\" list), got ",
                      quote(std::string(line.substr(0, 60))));
        int this_kind = j.contains("text") && j["text"].is_string() ? 0
                        : j.contains("ids") && j["ids"].is_array() ? 1 : -1;
        MLXTERP_CHECK(this_kind >= 0, path, ":", line_no, ": expected a \"text\" string or an \"ids\" list of token ids");
        MLXTERP_CHECK(kind < 0 || kind == this_kind, path, ":", line_no,
                      ": mixes \"text\" and \"ids\" lines; expected one kind throughout the file");
        if (this_kind == 1)
          for (const auto& v : j["ids"])
            MLXTERP_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < (int64_t(1) << 31),
                          path, ":", line_no, ": \"ids\" must hold non-negative integers, got ", v.dump());
        kind = this_kind;
        c.spans_.emplace_back(uint64_t(a), uint32_t(e - a));
      }
      a = e + 1;
    }
    c.pretokenized_ = kind == 1;
  } else if (lines) {
    size_t a = 0;
    while (a < n) {
      size_t e = a;
      while (e < n && s[e] != '\n') ++e;
      push(a, e);
      a = e + 1;
    }
  } else {
    // Paragraphs: documents end at a line that is empty or all whitespace.
    size_t doc_start = 0, a = 0;
    while (a < n) {
      size_t e = a;
      while (e < n && s[e] != '\n') ++e;
      if (trim(std::string_view(s + a, e - a)).empty()) {
        push(doc_start, a);
        doc_start = e + 1;
      }
      a = e + 1;
    }
    push(doc_start, n);
  }
  MLXTERP_CHECK(!c.spans_.empty(), path, ": no documents found; expected ",
                c.jsonl_ ? "JSON lines with a \"text\" field" : lines ? "non-empty lines" : "blank-line-separated paragraphs");
  return c;
}

std::string TextCorpus::text(size_t i) const {
  MLXTERP_ASSERT(i < spans_.size() && !pretokenized_);
  const char* s = reinterpret_cast<const char*>(file_->data()) + spans_[i].first;
  std::string_view v(s, spans_[i].second);
  if (!jsonl_) return std::string(v);
  return nlohmann::json::parse(v)["text"].get<std::string>();
}

std::vector<int32_t> TextCorpus::ids(size_t i) const {
  MLXTERP_ASSERT(i < spans_.size() && pretokenized_);
  const char* s = reinterpret_cast<const char*>(file_->data()) + spans_[i].first;
  auto j = nlohmann::json::parse(std::string_view(s, spans_[i].second));
  return j["ids"].get<std::vector<int32_t>>();
}

// ---- Harvester ------------------------------------------------------------------------------------

Harvester::Harvester(const InterpretableModel& model, const TextCorpus& corpus, std::vector<int> sites, HarvestOptions o)
    : model_(model), corpus_(corpus), sites_(std::move(sites)), o_(o) {
  MLXTERP_CHECK(!corpus.pretokenized() ? model.has_tokenizer() : true, model.source(),
                ": this model has no tokenizer, so --data must be pre-tokenised (JSONL with an \"ids\" list per line) "
                "or pass --tokenizer");
  const auto& cfg = model.model().config();
  const int64_t V = cfg.d_vocab;
  special_.assign(size_t(V), 0);
  auto mark = [&](int64_t id) {
    if (id >= 0 && id < V) special_[size_t(id)] = 1;
  };
  if (model.has_tokenizer()) {
    const Tokenizer& tok = model.tokenizer();
    bos_ = tok.special().bos;
    for (int32_t id = 0; id < std::min<int64_t>(V, tok.vocab_size()); ++id)
      if (tok.is_special(id)) mark(id);
    mark(tok.special().bos);
    mark(tok.special().eos);
    mark(tok.special().pad);
  } else {
    bos_ = int32_t(cfg.bos_token_id);
    mark(cfg.bos_token_id);
    mark(cfg.eos_token_id);
    mark(cfg.pad_token_id);
  }
  // Widths: one tiny forward.
  TraceOptions t;
  for (int s : sites_) t.sites.push_back(model.sites()[s].name);
  t.need_logits = false;
  TraceResult r = model.trace_ids(at::zeros({1, 2}, at::kLong), {}, t);
  for (int s : sites_) {
    at::Tensor a = r.activations.at(model.sites()[s].name);
    MLXTERP_CHECK(a.dim() >= 3 && a.size(0) == 1 && a.size(1) == 2, "site '", model.sites()[s].name, "' has shape ",
                  shape_str(a.sizes()), "; an SAE needs a per-token site [batch, seq, d]");
    dims_.push_back(a[0][0].numel());
  }
}

const std::vector<int32_t>& Harvester::tokens(int64_t doc) {
  if (doc != cached_doc_) {
    cached_ = corpus_.pretokenized() ? corpus_.ids(size_t(doc)) : model_.encode(corpus_.text(size_t(doc)));
    cached_doc_ = doc;
  }
  return cached_;
}

namespace {
struct Layout {
  bool starts_bos;
  int64_t body, per;
};
Layout layout(const std::vector<int32_t>& t, int32_t bos, int64_t ctx) {
  Layout l;
  l.starts_bos = !t.empty() && bos >= 0 && t[0] == bos;
  l.body = int64_t(t.size()) - (l.starts_bos ? 1 : 0);
  l.per = ctx - (l.starts_bos ? 1 : 0);
  return l;
}
}  // namespace

int64_t Harvester::n_pieces(int64_t doc) {
  Layout l = layout(tokens(doc), bos_, o_.context_size);
  return l.body <= 0 ? 0 : (l.body + l.per - 1) / l.per;
}

int64_t Harvester::piece_length(int64_t doc, int64_t p) {
  Layout l = layout(tokens(doc), bos_, o_.context_size);
  return std::max<int64_t>(0, std::min(l.per, l.body - p * l.per));
}

void Harvester::piece(int64_t doc, int64_t p, std::vector<int32_t>& ids, std::vector<char>& keep) {
  const auto& t = tokens(doc);
  Layout l = layout(t, bos_, o_.context_size);
  ids.clear();
  keep.clear();
  const int64_t start = (l.starts_bos ? 1 : 0) + p * l.per;
  const int64_t end = std::min<int64_t>(int64_t(t.size()), start + l.per);
  if (l.starts_bos) ids.push_back(bos_);
  for (int64_t i = start; i < end; ++i) ids.push_back(t[size_t(i)]);
  for (int32_t id : ids) {
    bool sp = id >= 0 && size_t(id) < special_.size() && special_[size_t(id)];
    keep.push_back(!(o_.exclude_special && sp));
  }
  if (l.starts_bos && !o_.exclude_special && p > 0) keep[0] = 0;  // a repeated BOS is not data
}

int64_t Harvester::kept_tokens(int64_t doc) {
  int64_t n = 0, np = n_pieces(doc);
  std::vector<int32_t> ids;
  std::vector<char> keep;
  for (int64_t p = 0; p < np; ++p) {
    piece(doc, p, ids, keep);
    for (char k : keep) n += k;
  }
  return n;
}

Harvester::Rows Harvester::run(const std::vector<SequenceRef>& seqs) {
  // Forwards take the sequences longest first (little padding); rows come back in the order of `seqs`.
  const size_t n = seqs.size();
  std::vector<std::vector<int32_t>> ids(n);
  std::vector<std::vector<char>> keep(n);
  std::vector<std::vector<int32_t>> pos(n);
  for (size_t i = 0; i < n; ++i) {
    piece(seqs[i].doc, seqs[i].piece, ids[i], keep[i]);
    Layout l = layout(tokens(seqs[i].doc), bos_, o_.context_size);
    for (int64_t j = 0; j < int64_t(ids[i].size()); ++j)
      pos[i].push_back(int32_t(l.starts_bos ? (j == 0 ? 0 : 1 + seqs[i].piece * l.per + (j - 1))
                                            : seqs[i].piece * l.per + j));
  }
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a].size() > ids[b].size(); });

  // Row r of the output is the r-th kept token in (sequence, position) order: sequence i's kept tokens start
  // at base[i]. Each forward's rows go straight to their places (no per-call concatenation or reordering
  // copy, so a harvest holds one copy of its rows: flat memory across shuffle-buffer refills).
  std::vector<int64_t> base(n + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    int64_t c = 0;
    for (char k : keep[i]) c += k;
    base[i + 1] = base[i] + c;
  }
  const int64_t total = base[n];
  Rows out;
  out.token_ids.resize(size_t(total));
  out.doc_ids.resize(size_t(total));
  out.positions.resize(size_t(total));
  out.acts.resize(sites_.size());

  TraceOptions topt;
  for (int s : sites_) topt.sites.push_back(model_.sites()[s].name);
  topt.need_logits = false;
  for (size_t c0 = 0; c0 < n; c0 += size_t(o_.text_batch_size)) {
    const size_t c1 = std::min(n, c0 + size_t(o_.text_batch_size));
    const int64_t B = int64_t(c1 - c0), T = int64_t(ids[order[c0]].size());
    at::Tensor t_ids = at::zeros({B, T}, at::kLong), t_mask = at::zeros({B, T}, at::kLong);
    auto ia = t_ids.accessor<int64_t, 2>();
    auto ma = t_mask.accessor<int64_t, 2>();
    std::vector<int64_t> flat, dest;  // kept positions in the [B * T] batch, their output rows
    bool padded = false;
    for (int64_t b = 0; b < B; ++b) {
      const size_t i = order[c0 + size_t(b)];
      padded |= int64_t(ids[i].size()) != T;
      int64_t r = base[i];
      for (int64_t j = 0; j < int64_t(ids[i].size()); ++j) {
        ia[b][j] = ids[i][size_t(j)];
        ma[b][j] = 1;
        if (keep[i][size_t(j)]) {
          flat.push_back(b * T + j);
          dest.push_back(r);
          out.token_ids[size_t(r)] = ids[i][size_t(j)];
          out.doc_ids[size_t(r)] = int32_t(seqs[i].doc);
          out.positions[size_t(r)] = pos[i][size_t(j)];
          ++r;
        }
      }
    }
    if (flat.empty()) continue;
    TraceResult res = model_.trace_ids(t_ids, padded ? t_mask : at::Tensor(), topt);
    at::Tensor sel = at::tensor(flat, at::kLong), to = at::tensor(dest, at::kLong);
    for (size_t s = 0; s < sites_.size(); ++s) {
      at::Tensor a = res.activations.at(model_.sites()[sites_[s]].name).reshape({B * T, dims_[s]});
      if (!out.acts[s].defined()) out.acts[s] = at::empty({total, dims_[s]}, a.options());
      out.acts[s].index_copy_(0, to.to(a.device()), a.index_select(0, sel.to(a.device())));
    }
  }
  for (size_t s = 0; s < sites_.size(); ++s)
    if (!out.acts[s].defined()) out.acts[s] = at::empty({0, dims_[s]});
  return out;
}

// ---- ModelActivationSource ----------------------------------------------------------------------

namespace {
constexpr int kPieceBits = 24;
int64_t pack(int64_t pos, int64_t piece) { return (pos << kPieceBits) | piece; }
int64_t cursor_pos(int64_t c) { return c >> kPieceBits; }
int64_t cursor_piece(int64_t c) { return c & ((int64_t(1) << kPieceBits) - 1); }
}  // namespace

ModelActivationSource::ModelActivationSource(const InterpretableModel& model, const TextCorpus& corpus, int site,
                                             HarvestOptions o, double validation_split, uint64_t seed,
                                             at::Device device, const std::function<void(int64_t, int64_t)>& on_count)
    : harvester_(model, corpus, {site}, o), corpus_(corpus), seed_(seed), device_(device) {
  site_name_ = model.sites()[site].name;
  const int64_t n = int64_t(corpus.size());
  pieces_.assign(size_t(n), 0);
  ntok_.assign(size_t(n), 0);
  starts_bos_.assign(size_t(n), 0);
  std::vector<int64_t> kept(size_t(n), 0), nonempty;
  for (int64_t d = 0; d < n; ++d) {
    int64_t np = harvester_.n_pieces(d);
    MLXTERP_CHECK(np < (int64_t(1) << kPieceBits), corpus.path(), ": document ", d, " is too long (", np, " pieces)");
    pieces_[size_t(d)] = int32_t(np);
    const auto& t = harvester_.tokens(d);
    ntok_[size_t(d)] = int32_t(t.size());
    starts_bos_[size_t(d)] = !t.empty() && harvester_.bos() >= 0 && t[0] == harvester_.bos();
    kept[size_t(d)] = harvester_.kept_tokens(d);
    if (kept[size_t(d)] > 0) nonempty.push_back(d);
    if (on_count && (d % 256 == 0 || d + 1 == n)) on_count(d + 1, n);
  }
  const int64_t n_val = int64_t(double(nonempty.size()) * validation_split);
  train_.assign(nonempty.begin(), nonempty.end() - n_val);
  val_.assign(nonempty.end() - n_val, nonempty.end());
  for (int64_t d : train_) tokens_ += kept[size_t(d)];
  MLXTERP_CHECK(tokens_ > 0, corpus.path(), ": no training tokens (", nonempty.size(), " non-empty documents, ", n_val,
                " held out for validation)");
}

const std::vector<int64_t>& ModelActivationSource::order(int64_t epoch) {
  if (epoch != order_epoch_) {
    auto perm = seeded_permutation(int64_t(train_.size()), mix_seed({seed_, 0x0D0C, uint64_t(epoch)}));
    order_.resize(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) order_[i] = train_[size_t(perm[i])];
    order_epoch_ = epoch;
  }
  return order_;
}

at::Tensor ModelActivationSource::next_rows(int64_t epoch, int64_t& cursor, int64_t want) {
  // Collect whole pieces until their kept tokens (estimated from lengths: all but a leading BOS) reach
  // `want`, then harvest them in one call (sorted by length inside, so forwards carry little padding).
  const auto& ord = order(epoch);
  int64_t pos = cursor_pos(cursor), piece = cursor_piece(cursor), est = 0;
  std::vector<SequenceRef> seqs;
  while (est < want && pos < int64_t(ord.size())) {
    const int64_t d = ord[size_t(pos)];
    seqs.push_back({d, piece});
    est += piece_kept_estimate(d, piece);
    if (++piece >= pieces_[size_t(d)]) {
      ++pos;
      piece = 0;
    }
  }
  cursor = pack(pos, piece);
  if (seqs.empty()) return at::empty({0, d_in()}, at::TensorOptions().device(device_));
  Harvester::Rows r = harvester_.run(seqs);
  forwards_ += (int64_t(seqs.size()) + harvester_.options().text_batch_size - 1) / harvester_.options().text_batch_size;
  return r.acts[0].to(device_, at::kFloat);
}

int64_t ModelActivationSource::piece_kept_estimate(int64_t doc, int64_t piece) const {
  const int64_t ctx = harvester_.options().context_size;
  const bool bos = starts_bos_[size_t(doc)];
  const int64_t body = ntok_[size_t(doc)] - (bos ? 1 : 0), per = ctx - (bos ? 1 : 0);
  return std::min(per, body - piece * per);
}

bool ModelActivationSource::epoch_done(int64_t epoch, int64_t cursor) const {
  return cursor_pos(cursor) >= int64_t(train_.size());
}

at::Tensor ModelActivationSource::validation_rows(int64_t max_rows) {
  std::vector<SequenceRef> seqs;
  int64_t est = 0;
  for (size_t i = 0; i < val_.size() && est < max_rows; ++i)
    for (int64_t p = 0; p < pieces_[size_t(val_[i])]; ++p) {
      seqs.push_back({val_[i], p});
      est += piece_kept_estimate(val_[i], p);
    }
  if (seqs.empty()) return at::empty({0, d_in()}, at::TensorOptions().device(device_));
  at::Tensor all = harvester_.run(seqs).acts[0].to(device_, at::kFloat);
  return all.narrow(0, 0, std::min(max_rows, all.size(0))).contiguous();
}

nlohmann::ordered_json ModelActivationSource::fingerprint() const {
  return {{"mode", "streaming"},
          {"site", site_name_},
          {"d_in", d_in()},
          {"data", corpus_.path()},
          {"data_bytes", corpus_.bytes()},
          {"documents", corpus_.size()},
          {"train_documents", train_.size()},
          {"tokens_per_epoch", tokens_},
          {"context_size", harvester_.options().context_size},
          {"text_batch_size", harvester_.options().text_batch_size},
          {"exclude_special_tokens", harvester_.options().exclude_special}};
}

// ---- BatchStream ----------------------------------------------------------------------------------

BatchStream::BatchStream(ActivationSource& source, int64_t batch_size, int64_t buffer_rows, uint64_t seed)
    : src_(source), batch_(batch_size), buffer_rows_(buffer_rows), seed_(seed) {
  MLXTERP_ASSERT(batch_size > 0 && buffer_rows > 0);
  MLXTERP_CHECK(source.tokens_per_epoch() > 0, "SAE training: the data has no training tokens");
}

void BatchStream::fill() {
  int64_t c = pos_.cursor;
  at::Tensor rows = src_.next_rows(pos_.epoch, c, buffer_rows_);
  next_cursor_ = c;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(mix_seed({seed_, 0xB0FF, uint64_t(pos_.epoch), uint64_t(pos_.cursor)}));
  // The rows stay where the source put them; batches gather through the permutation (a second, permuted
  // copy of the buffer would double its memory at every refill).
  perm_ = at::randperm(rows.size(0), gen, at::TensorOptions().dtype(at::kLong)).to(rows.device());
  buf_ = rows;
  ++fills_;
}

at::Tensor BatchStream::current_buffer() {
  if (!buf_.defined()) fill();
  return buf_.index_select(0, perm_);
}

at::Tensor BatchStream::next() {
  std::vector<at::Tensor> parts;
  int64_t need = batch_;
  int guard = 0;
  while (need > 0) {
    if (!buf_.defined()) fill();
    const int64_t avail = buf_.size(0) - pos_.offset;
    if (avail <= 0) {
      MLXTERP_CHECK(++guard < 1000000, "SAE training: the data source returned no rows");
      if (src_.epoch_done(pos_.epoch, next_cursor_)) pos_ = {pos_.epoch + 1, 0, 0};
      else pos_ = {pos_.epoch, next_cursor_, 0};
      buf_ = perm_ = at::Tensor();
      continue;
    }
    const int64_t take = std::min(need, avail);
    parts.push_back(buf_.index_select(0, perm_.narrow(0, pos_.offset, take)));
    pos_.offset += take;
    need -= take;
  }
  return parts.size() == 1 ? parts[0].contiguous() : at::cat(parts);
}

void BatchStream::restore(const StreamPosition& p) {
  pos_ = p;
  buf_ = perm_ = at::Tensor();
}

}  // namespace mlxterp
