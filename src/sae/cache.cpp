// The on-disk activation cache: writer (resumable, atomic shards) and memory-mapped training source.
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>

#include "mlxterp/error.hpp"
#include "mlxterp/progress.hpp"
#include "mlxterp/sae_data.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

using ojson = nlohmann::ordered_json;
constexpr const char* kCacheFormat = "mlxterp-activation-cache";

ojson read_meta(const std::string& dir) {
  const std::string p = join_path(dir, "meta.json");
  MLXTERP_CHECK(file_exists(p), dir, ": not an activation cache (no meta.json); write one with `mlxterp cache`");
  ojson j;
  try {
    j = ojson::parse(read_file(p));
  } catch (const nlohmann::json::exception& e) {
    MLXTERP_FAIL(p, ": not valid JSON: ", e.what());
  }
  MLXTERP_CHECK(j.value("format", "") == kCacheFormat, p, ": expected \"format\": \"", kCacheFormat, "\", got ",
                j.contains("format") ? j["format"].dump() : "none");
  MLXTERP_CHECK(j.value("version", 0) == 1, p, ": unsupported cache version ", j.value("version", 0), "; expected 1");
  return j;
}

std::string shard_name(size_t i) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard_%05zu.safetensors", i);
  return buf;
}

}  // namespace

int64_t write_activation_cache(const InterpretableModel& model, const TextCorpus& corpus,
                               const std::vector<std::string>& site_names, const std::string& out_dir,
                               const CacheWriteOptions& o) {
  MLXTERP_CHECK(!site_names.empty(), "cache: --sites is empty; expected at least one site name");
  std::vector<int> sites;
  std::vector<std::string> canon;
  for (const auto& n : site_names) {
    int id = model.sites().resolve(n);
    sites.push_back(id);
    canon.push_back(model.sites()[id].name);
  }
  Harvester h(model, corpus, sites, o.harvest);
  const size_t elem = at::elementSize(o.store_dtype);
  int64_t row_bytes = 0;
  for (size_t s = 0; s < sites.size(); ++s) row_bytes += h.d(s) * int64_t(elem);
  const int64_t shard_rows = o.shard_tokens > 0 ? o.shard_tokens : std::max<int64_t>(1024, (int64_t(256) << 20) / row_bytes);

  ojson settings = {{"model", model.source()},
                    {"sites", ojson::array()},
                    {"dtype", dtype_str(o.store_dtype)},
                    {"context_size", o.harvest.context_size},
                    {"exclude_special_tokens", o.harvest.exclude_special},
                    {"data", {{"path", corpus.path()}, {"bytes", corpus.bytes()}, {"documents", corpus.size()}}},
                    {"max_tokens", o.max_tokens}};
  for (size_t s = 0; s < sites.size(); ++s) {
    const SiteInfo& si = model.sites()[sites[s]];
    settings["sites"].push_back({{"name", si.name}, {"layer", si.layer}, {"component", si.component}, {"d", h.d(s)}});
  }

  make_dirs(out_dir);
  ojson meta;
  const std::string meta_path = join_path(out_dir, "meta.json");
  if (file_exists(meta_path)) {
    meta = read_meta(out_dir);
    for (const char* key : {"model", "sites", "dtype", "context_size", "exclude_special_tokens", "data", "max_tokens"})
      MLXTERP_CHECK(meta[key] == settings[key], out_dir, ": already holds a cache made with a different '", key,
                    "' (", meta[key].dump(), " vs now ", settings[key].dump(),
                    "); use another --out or delete the directory");
    if (meta.value("complete", false)) {
      if (!o.quiet) std::printf("✓ Cache already complete: %s (%lld tokens)\n", out_dir.c_str(), (long long)meta["n_tokens"].get<int64_t>());
      return meta["n_tokens"].get<int64_t>();
    }
    if (!o.quiet) std::printf("↻ Resuming cache at document %lld of %zu\n", (long long)meta["cursor"]["doc"].get<int64_t>(), corpus.size());
  } else {
    meta = {{"format", kCacheFormat}, {"version", 1}};
    for (auto it = settings.begin(); it != settings.end(); ++it) meta[it.key()] = it.value();
    meta["n_tokens"] = 0;
    meta["n_documents_with_tokens"] = 0;
    meta["complete"] = false;
    meta["cursor"] = {{"doc", 0}, {"piece", 0}};
    meta["shards"] = ojson::array();
  }

  int64_t doc = meta["cursor"]["doc"].get<int64_t>(), piece = meta["cursor"]["piece"].get<int64_t>();
  int64_t n_tokens = meta["n_tokens"].get<int64_t>();
  int64_t docs_with = meta["n_documents_with_tokens"].get<int64_t>();
  int64_t last_doc_seen = -1;  // documents with tokens: counted when their first row is written
  const int64_t n_docs = int64_t(corpus.size());
  Progress bar("Caching activations", n_docs, stderr, o.quiet);
  bar.update(doc);

  std::vector<std::vector<at::Tensor>> pend(sites.size());
  std::vector<int32_t> tok, dids, pos;
  int64_t pend_rows = 0;
  auto flush = [&](bool done) {
    if (pend_rows > 0) {
      int64_t keep = pend_rows;
      if (o.max_tokens > 0 && n_tokens + keep > o.max_tokens) keep = o.max_tokens - n_tokens;
      TensorMap t;
      for (size_t s = 0; s < sites.size(); ++s) t["acts." + canon[s]] = at::cat(pend[s]).narrow(0, 0, keep);
      auto i32 = [&](const std::vector<int32_t>& v) {
        return at::tensor(at::ArrayRef<int32_t>(v.data(), size_t(keep)), at::kInt);
      };
      t["token_ids"] = i32(tok);
      t["doc_ids"] = i32(dids);
      t["positions"] = i32(pos);
      const size_t idx = meta["shards"].size();
      save_safetensors(join_path(out_dir, shard_name(idx)), t, {{"format", kCacheFormat}});
      for (int64_t i = 0; i < keep; ++i)
        if (dids[size_t(i)] != last_doc_seen) {
          ++docs_with;
          last_doc_seen = dids[size_t(i)];
        }
      meta["shards"].push_back({{"file", shard_name(idx)}, {"n_tokens", keep}, {"doc_begin", dids.front()},
                                {"doc_end", dids[size_t(keep - 1)]}});
      n_tokens += keep;
      for (auto& p : pend) p.clear();
      tok.clear();
      dids.clear();
      pos.clear();
      pend_rows = 0;
    }
    meta["n_tokens"] = n_tokens;
    meta["n_documents_with_tokens"] = docs_with;
    meta["cursor"] = {{"doc", doc}, {"piece", piece}};
    meta["complete"] = done;
    write_file_atomic(meta_path, meta.dump(2) + "\n");
  };

  // Resuming: the last shard's last document may continue in the next shard.
  if (!meta["shards"].empty()) last_doc_seen = meta["shards"].back()["doc_end"].get<int64_t>();
  const int64_t tbs = o.harvest.text_batch_size;
  while (doc < n_docs && !(o.max_tokens > 0 && n_tokens + pend_rows >= o.max_tokens)) {
    // Up to 8 forwards per run (sorted by length inside), never much past the shard size.
    std::vector<SequenceRef> seqs;
    const int64_t doc0 = doc;
    int64_t est = 0;
    while (int64_t(seqs.size()) < 8 * tbs && pend_rows + est < shard_rows && doc < n_docs) {
      if (piece >= h.n_pieces(doc)) {
        ++doc;
        piece = 0;
        continue;
      }
      est += h.piece_length(doc, piece);
      seqs.push_back({doc, piece++});
    }
    if (seqs.empty()) break;
    Harvester::Rows r = h.run(seqs);
    for (size_t s = 0; s < sites.size(); ++s) pend[s].push_back(r.acts[s].to(at::kCPU, o.store_dtype));
    tok.insert(tok.end(), r.token_ids.begin(), r.token_ids.end());
    dids.insert(dids.end(), r.doc_ids.begin(), r.doc_ids.end());
    pos.insert(pos.end(), r.positions.begin(), r.positions.end());
    pend_rows += int64_t(r.token_ids.size());
    bar.update(doc - doc0);
    if (pend_rows >= shard_rows) {
      flush(false);
      if (o.stop_after_shards > 0 && int64_t(meta["shards"].size()) >= o.stop_after_shards) {
        bar.finish();
        return n_tokens;
      }
    }
  }
  while (doc < n_docs && piece >= h.n_pieces(doc)) {  // step past finished documents
    ++doc;
    piece = 0;
  }
  flush(true);
  bar.finish();
  return n_tokens;
}

// ---- CacheActivationSource ------------------------------------------------------------------------

std::vector<std::string> CacheActivationSource::cached_sites(const std::string& dir) {
  ojson m = read_meta(dir);
  std::vector<std::string> out;
  for (const auto& s : m["sites"]) out.push_back(s["name"].get<std::string>());
  return out;
}

CacheActivationSource::CacheActivationSource(const std::string& dir, const std::string& site, double validation_split,
                                             uint64_t seed, at::Device device, int64_t chunk_rows)
    : dir_(dir), site_(site), chunk_rows_(chunk_rows), seed_(seed), device_(device) {
  meta_ = read_meta(dir);
  std::vector<std::string> names;
  for (const auto& s : meta_["sites"]) {
    names.push_back(s["name"].get<std::string>());
    if (names.back() == site) d_ = s["d"].get<int64_t>();
  }
  MLXTERP_CHECK(d_ > 0, dir, ": the cache holds no site '", site, "'; it has: ", join(names, ", "));
  MLXTERP_CHECK(meta_.value("complete", false), dir, ": the cache is incomplete (", meta_["n_tokens"].get<int64_t>(),
                " tokens written); finish it by running the same `mlxterp cache` command again (it resumes)");
  const std::string tname = "acts." + site;
  int64_t begin = 0;
  for (const auto& sh : meta_["shards"]) {
    const std::string path = join_path(dir, sh["file"].get<std::string>());
    SafeTensors st = SafeTensors::open(path);
    const int64_t n = sh["n_tokens"].get<int64_t>();
    MLXTERP_CHECK(st.contains(tname) && st.infos().at(tname).shape == std::vector<int64_t>({n, d_}), path,
                  ": expected tensor '", tname, "' of shape [", n, ", ", d_, "] as meta.json says");
    MLXTERP_CHECK(st.contains("doc_ids") && st.infos().at("doc_ids").shape == std::vector<int64_t>({n}), path,
                  ": expected tensor 'doc_ids' of shape [", n, "]");
    shard_begin_.push_back(begin);
    begin += n;
    shards_.push_back(std::move(st));
  }
  shard_begin_.push_back(begin);
  total_rows_ = begin;
  MLXTERP_CHECK(total_rows_ > 0, dir, ": the cache holds no tokens");
  // Validation: the last documents. Walk back from the end counting distinct documents.
  const int64_t n_docs = meta_["n_documents_with_tokens"].get<int64_t>();
  const int64_t n_val = int64_t(double(n_docs) * validation_split);
  val_docs_ = n_val;
  train_docs_ = n_docs - n_val;
  train_rows_ = total_rows_;
  if (n_val > 0) {
    int64_t seen = 0, last = -1;
    for (int64_t s = int64_t(shards_.size()) - 1; s >= 0 && seen <= n_val; --s) {
      at::Tensor ids = shards_[size_t(s)].get("doc_ids").to(at::kLong);
      const int64_t* p = ids.data_ptr<int64_t>();
      for (int64_t i = ids.size(0) - 1; i >= 0; --i) {
        if (p[i] != last) {
          if (seen == n_val) break;  // p[i] is the last training document
          ++seen;
          last = p[i];
        }
        train_rows_ = shard_begin_[size_t(s)] + i;
      }
    }
  }
  MLXTERP_CHECK(train_rows_ > 0, dir, ": no training tokens left after holding out ", n_val, " validation documents");
}

at::Tensor CacheActivationSource::rows(int64_t b, int64_t e) {
  std::vector<at::Tensor> parts;
  const std::string tname = "acts." + site_;
  for (size_t s = 0; s < shards_.size() && b < e; ++s) {
    const int64_t s0 = shard_begin_[s], s1 = shard_begin_[s + 1];
    if (b >= s1) continue;
    const int64_t lo = b - s0, hi = std::min(e, s1) - s0;
    parts.push_back(shards_[s].get(tname).narrow(0, lo, hi - lo).to(at::kFloat));
    b = s0 + hi;
  }
  if (parts.empty()) return at::empty({0, d_}, at::TensorOptions().device(device_));
  at::Tensor r = parts.size() == 1 ? parts[0] : at::cat(parts);
  return r.to(device_).contiguous();
}

at::Tensor CacheActivationSource::next_rows(int64_t epoch, int64_t& cursor, int64_t want) {
  const int64_t n_chunks = (train_rows_ + chunk_rows_ - 1) / chunk_rows_;
  if (epoch != order_epoch_) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(mix_seed({seed_, 0xCAC4E, uint64_t(epoch)}));
    at::Tensor p = at::randperm(n_chunks, gen, at::TensorOptions().dtype(at::kLong));
    order_.assign(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + n_chunks);
    order_epoch_ = epoch;
  }
  std::vector<at::Tensor> parts;
  int64_t got = 0;
  while (got < want && cursor < n_chunks) {
    const int64_t c = order_[size_t(cursor++)];
    at::Tensor r = rows(c * chunk_rows_, std::min(train_rows_, (c + 1) * chunk_rows_));
    got += r.size(0);
    parts.push_back(r);
  }
  return parts.empty() ? at::empty({0, d_}, at::TensorOptions().device(device_)) : at::cat(parts);
}

bool CacheActivationSource::epoch_done(int64_t, int64_t cursor) const {
  return cursor >= (train_rows_ + chunk_rows_ - 1) / chunk_rows_;
}

at::Tensor CacheActivationSource::validation_rows(int64_t max_rows) {
  return rows(train_rows_, std::min(total_rows_, train_rows_ + max_rows));
}

nlohmann::ordered_json CacheActivationSource::fingerprint() const {
  return {{"mode", "cache"},       {"site", site_},       {"d_in", d_},
          {"cache", dir_},         {"total_rows", total_rows_}, {"tokens_per_epoch", train_rows_},
          {"chunk_rows", chunk_rows_}, {"model", meta_.value("model", "")}};
}

}  // namespace mlxterp
