// The SAE's site, the evaluated documents and their padded batches.
#include "stream.hpp"

#include <filesystem>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

std::string meta_string(const SAE& s, const char* key) {
  return s.metadata.contains(key) && s.metadata[key].is_string() ? s.metadata[key].get<std::string>() : "";
}

int64_t per_token_width(const InterpretableModel& model, int site) {
  TraceOptions t;
  t.sites = {model.sites()[site].name};
  t.need_logits = false;
  TraceResult r = model.trace_ids(at::zeros({1, 2}, at::kLong), {}, t);
  at::Tensor a = r.activations.at(model.sites()[site].name);
  MLXTERP_CHECK(a.dim() >= 3 && a.size(0) == 1 && a.size(1) == 2, "site '", model.sites()[site].name,
                "' has shape ", shape_str(a.sizes()), "; an SAE needs a per-token site [batch, seq, d]");
  return a[0][0].numel();
}

}  // namespace

int resolve_sae_site(const SAE& sae, const InterpretableModel& model, const std::string& override_site) {
  const SiteTable& S = model.sites();
  int site = -1;
  std::string from;
  if (!override_site.empty()) {
    site = S.resolve(override_site);  // unknown names list close matches
    from = "--site " + override_site;
  } else {
    std::vector<std::pair<std::string, std::string>> tried;  // (what, name)
    for (const char* key : {"site", "hook_name", "hookpoint"}) {
      std::string n = meta_string(sae, key);
      if (n.empty()) continue;
      tried.push_back({key, n});
      if ((site = S.find(n)) >= 0) {
        from = cat("the SAE's ", key, " '", n, "'");
        break;
      }
    }
    if (site < 0 && sae.metadata.contains("layer") && sae.metadata["layer"].is_number_integer()) {
      int layer = sae.metadata["layer"].get<int>();
      std::string comp = meta_string(sae, "component");
      tried.push_back({"layer/component", cat(layer, "/", comp.empty() ? "resid_post" : comp)});
      try {
        site = S.resolve_component(layer, comp);
        from = cat("the SAE's layer ", layer, " component '", comp, "'");
      } catch (const Error&) {
        site = -1;
      }
    }
    if (site < 0) {
      std::string what;
      for (const auto& [k, n] : tried) {
        auto near = close_matches(n, [&] {
          std::vector<std::string> names;
          for (const auto& s : S.all()) names.push_back(s.name);
          return names;
        }(), 3);
        what += cat(what.empty() ? "" : "; ", k, " '", n, "'",
                    near.empty() ? std::string() : " (closest sites: " + join(near, ", ") + ")");
      }
      MLXTERP_FAIL("SAE: cannot tell which site of the model it reads: ",
                   tried.empty() ? std::string("its files name no site, hook_name, hookpoint or layer") : "tried " + what,
                   "; expected a site of ", model.source(), " (pass --site NAME, e.g. model.layers.2 or "
                   "blocks.2.hook_resid_post; `mlxterp components` lists them)");
    }
  }
  const int64_t w = per_token_width(model, site);
  MLXTERP_CHECK(w == sae.d_in, "SAE: site '", S[site].name, "' (", from, ") has ", w, " values per token; expected the SAE's d_in = ",
                sae.d_in, " (is this SAE for another model or site? pass --site)");
  return site;
}

double sae_training_holdout(const SAE& sae, const std::string& data_path) {
  std::string trained;
  if (sae.metadata.contains("data")) {
    const auto& d = sae.metadata["data"];
    if (d.is_string()) trained = d.get<std::string>();
    else if (d.is_object() && d.contains("data") && d["data"].is_string()) trained = d["data"].get<std::string>();
  }
  if (trained.empty() || !file_exists(trained) || !file_exists(data_path)) return -1;
  std::error_code ec;
  if (!std::filesystem::equivalent(trained, data_path, ec) || ec) return -1;
  if (!sae.metadata.contains("config") || !sae.metadata["config"].is_object()) return -1;
  const auto& c = sae.metadata["config"];
  if (!c.contains("validation_split") || !c["validation_split"].is_number()) return -1;
  return c["validation_split"].get<double>();
}

namespace sae_eval_detail {

int64_t default_context_size(const SAE& sae, const InterpretableModel& model) {
  int64_t ctx = 256;
  if (sae.metadata.contains("config") && sae.metadata["config"].is_object()) {
    const auto& c = sae.metadata["config"];
    if (c.contains("context_size") && c["context_size"].is_number_integer()) ctx = c["context_size"].get<int64_t>();
  }
  return std::max<int64_t>(2, std::min<int64_t>(ctx, model.model().config().n_ctx));
}

SequenceStream::SequenceStream(const InterpretableModel& model, const TextCorpus& corpus, int site,
                               const SaeDataOptions& o, const SAE& sae)
    : model_(model), corpus_(corpus), o_(o) {
  MLXTERP_CHECK(o.holdout > 0 && o.holdout <= 1, "--holdout must be in (0, 1], got ", o.holdout,
                " (the fraction of documents, counted from the end, to evaluate on)");
  MLXTERP_CHECK(o.context_size >= 0, "--context-size must be >= 0, got ", o.context_size);
  MLXTERP_CHECK(o.max_tokens >= 0, "--max-tokens must be >= 0, got ", o.max_tokens);
  MLXTERP_CHECK(o.batch_sequences >= 0, "--batch must be >= 0, got ", o.batch_sequences);
  ctx_ = o.context_size > 0 ? o.context_size : default_context_size(sae, model);
  MLXTERP_CHECK(ctx_ >= 2 && ctx_ <= model.model().config().n_ctx, "--context-size must be in 2 .. ",
                model.model().config().n_ctx, " (the model's context), got ", ctx_);
  HarvestOptions h;
  h.context_size = ctx_;
  h.exclude_special = o.exclude_special;
  harvester_ = std::make_unique<Harvester>(model, corpus, std::vector<int>{site}, h);
  const int64_t n = int64_t(corpus.size());
  // The same cut as ModelActivationSource: the last int(n * fraction) documents (every text document has tokens).
  const int64_t n_used = o.holdout >= 1 ? n : int64_t(double(n) * o.holdout);
  MLXTERP_CHECK(n_used > 0, corpus.path(), ": --holdout ", o.holdout, " of ", n,
                " documents selects none; expected a larger fraction or more documents");
  first_doc_ = doc_ = n - n_used;
  if (o.batch_sequences > 0) {
    batch_ = o.batch_sequences;
  } else {  // logits [B, T, V] float32 stay under ~128 MB
    const int64_t V = std::max<int64_t>(1, model.model().config().d_vocab);
    batch_ = std::clamp<int64_t>((int64_t(1) << 25) / (ctx_ * V), 1, 32);
  }
  if (o.progress) bar_ = std::make_unique<Progress>(o.progress_label, documents());
}

void SequenceStream::finish_progress() {
  if (bar_) bar_->finish();
}

bool SequenceStream::next(SeqBatch& b) {
  const int64_t n = int64_t(corpus_.size());
  std::vector<std::vector<int32_t>> rows;
  std::vector<std::vector<char>> keeps;
  b.doc.clear();
  b.piece.clear();
  b.length.clear();
  b.kept = 0;
  std::vector<int32_t> ids;
  std::vector<char> keep;
  while (int64_t(rows.size()) < batch_ && doc_ < n && !(o_.max_tokens > 0 && tokens_ >= o_.max_tokens)) {
    if (n_pieces_ < 0) n_pieces_ = harvester_->n_pieces(doc_);
    if (piece_ >= n_pieces_) {
      ++doc_;
      piece_ = 0;
      n_pieces_ = -1;
      if (bar_) bar_->update(1);
      continue;
    }
    harvester_->piece(doc_, piece_, ids, keep);
    int64_t k = 0;
    for (char c : keep) k += c;
    if (k > 0 && ids.size() >= 1) {
      rows.push_back(ids);
      keeps.push_back(keep);
      b.doc.push_back(doc_);
      b.piece.push_back(piece_);
      b.length.push_back(int64_t(ids.size()));
      b.kept += k;
      tokens_ += k;
    }
    ++piece_;
  }
  if (rows.empty()) return false;
  sequences_ += int64_t(rows.size());
  const int64_t B = int64_t(rows.size());
  int64_t T = 0;
  for (const auto& r : rows) T = std::max<int64_t>(T, int64_t(r.size()));
  b.ids = at::zeros({B, T}, at::kLong);
  b.mask = at::zeros({B, T}, at::kLong);
  b.keep = at::zeros({B, T}, at::kByte);
  auto ia = b.ids.accessor<int64_t, 2>();
  auto ma = b.mask.accessor<int64_t, 2>();
  auto ka = b.keep.accessor<uint8_t, 2>();
  b.padded = false;
  for (int64_t i = 0; i < B; ++i) {
    b.padded |= int64_t(rows[size_t(i)].size()) != T;
    for (int64_t j = 0; j < int64_t(rows[size_t(i)].size()); ++j) {
      ia[i][j] = rows[size_t(i)][size_t(j)];
      ma[i][j] = 1;
      ka[i][j] = uint8_t(keeps[size_t(i)][size_t(j)]);
    }
  }
  b.keep = b.keep.to(at::kBool);
  return true;
}

ForwardOut run_batch(const InterpretableModel& model, const SeqBatch& b, int site, bool capture, bool need_logits,
                     InterventionFn edit) {
  TraceOptions t;
  const std::string name = model.sites()[site].name;
  if (capture) t.sites = {name};
  else t.capture = false;
  if (edit) t.interventions.push_back({name, std::move(edit)});
  t.need_logits = need_logits;
  TraceResult r = model.trace_ids(b.ids, b.padded ? b.mask : at::Tensor(), t);
  ForwardOut out;
  if (need_logits) out.logits = r.logits.to(at::kFloat);
  if (capture) {
    at::Tensor a = r.activations.at(name);
    out.act = a.reshape({a.size(0), a.size(1), -1});  // per-head sites flattened to [B, T, d]
  }
  return out;
}

}  // namespace sae_eval_detail
}  // namespace mlxterp
