// mlxterp/sae_data.hpp — where SAE training rows come from: documents, the model (streaming) or a disk cache,
// and the shuffled batch stream on top.
//
//   auto corpus = mlxterp::TextCorpus::open("stories.txt");          // blank-line-separated documents
//   mlxterp::HarvestOptions h;  h.context_size = 256;  h.text_batch_size = 32;
//   mlxterp::ModelActivationSource src(model, corpus, model.sites().resolve_component(2, ""), h,
//                                      /*validation_split=*/0.05, /*seed=*/42, at::kCPU);
//   mlxterp::BatchStream stream(src, /*batch=*/256, /*buffer_rows=*/65536, /*seed=*/42);
//   at::Tensor x = stream.next();                                     // [256, d_in] float32, shuffled tokens
//   mlxterp::StreamPosition pos = stream.position();                  // (epoch, cursor, offset): exact resume
//
// Documents: a text file of blank-line-separated paragraphs, one per line (`lines`), or JSONL with a "text"
// string (or pre-tokenised "ids" list) per line. Each document is tokenised (BOS per the tokenizer) and split
// into sequences of at most context_size tokens; a split document repeats BOS at the start of each piece.
// Padding never reaches the SAE, nor (exclude_special) BOS/EOS/PAD positions.
//
// Shuffling: the stream fills a buffer of ~buffer_rows rows from the source (documents in a per-epoch seeded
// order), permutes its rows with a generator seeded by (seed, epoch, cursor), and serves batches from it; a
// batch may span two buffers. Memory is one buffer plus one model forward, whatever the dataset size.
// A position is (epoch, cursor at the start of the current buffer, rows served from it): restoring it
// re-fills that one buffer, so resuming is exact and cheap.
//
// Activation cache (`mlxterp cache`, docs/formats.md): a directory with meta.json and shard_NNNNN.safetensors
// files, each holding "acts.<site>" [n, d] (f16/bf16/f32), "token_ids" [n] i32, "doc_ids" [n] i32,
// "positions" [n] i32 for the kept tokens in document order. Shards are memory-mapped for training, written
// atomically, and meta.json (rewritten atomically after each shard) records where to resume.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "mlxterp/io.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp {

// ---- documents ----------------------------------------------------------------------------------

class TextCorpus {
 public:
  // Format by extension: ".jsonl" -> JSONL ("text" or "ids" per line); otherwise text (blank-line-separated
  // paragraphs, or one document per non-empty line with lines = true). Throws naming the file and line.
  static TextCorpus open(const std::string& path, bool lines = false);
  size_t size() const { return spans_.size(); }
  bool pretokenized() const { return pretokenized_; }
  std::string text(size_t i) const;          // text documents
  std::vector<int32_t> ids(size_t i) const;  // pre-tokenised documents
  const std::string& path() const { return path_; }
  size_t bytes() const { return file_ ? file_->size() : 0; }

 private:
  std::string path_;
  std::shared_ptr<MappedFile> file_;
  std::vector<std::pair<uint64_t, uint32_t>> spans_;  // byte offset, length
  bool jsonl_ = false, pretokenized_ = false;
};

// ---- harvesting activations from the model --------------------------------------------------------

struct HarvestOptions {
  int64_t context_size = 256;
  int64_t text_batch_size = 32;
  bool exclude_special = true;
};

// One sequence: document `doc`, piece `piece` (context_size-token windows of the document).
struct SequenceRef {
  int64_t doc = 0, piece = 0;
};

// Tokenises documents, cuts them into sequences and runs the model (early exit after the last site).
class Harvester {
 public:
  Harvester(const InterpretableModel& model, const TextCorpus& corpus, std::vector<int> sites, HarvestOptions o);
  int64_t d(size_t site_index) const { return dims_.at(site_index); }
  const std::vector<int>& sites() const { return sites_; }
  const HarvestOptions& options() const { return o_; }
  // Token ids of a document (cached: consecutive calls for one document tokenise it once).
  const std::vector<int32_t>& tokens(int64_t doc);
  int64_t n_pieces(int64_t doc);
  // Tokens in a piece, not counting a leading BOS.
  int64_t piece_length(int64_t doc, int64_t piece);
  // Ids of one piece and whether each position is kept (not padding, not excluded).
  void piece(int64_t doc, int64_t piece, std::vector<int32_t>& ids, std::vector<char>& keep);
  // Kept tokens of a document (what the SAE sees of it).
  int64_t kept_tokens(int64_t doc);

  struct Rows {
    std::vector<at::Tensor> acts;  // per site [n, d] (model dtype, model device)
    std::vector<int32_t> token_ids, doc_ids, positions;  // [n] (positions within the document)
  };
  // Runs the model over `seqs` in forwards of text_batch_size sequences (longest first, to pad little);
  // rows come back in the order of `seqs`, positions in order within each.
  Rows run(const std::vector<SequenceRef>& seqs);
  int32_t bos() const { return bos_; }

 private:
  const InterpretableModel& model_;
  const TextCorpus& corpus_;
  std::vector<int> sites_;
  std::vector<int64_t> dims_;
  HarvestOptions o_;
  int32_t bos_ = -1;
  std::vector<char> special_;  // by id
  int64_t cached_doc_ = -1;
  std::vector<int32_t> cached_;
};

// ---- sources of training rows ---------------------------------------------------------------------

class ActivationSource {
 public:
  virtual ~ActivationSource() = default;
  virtual int64_t d_in() const = 0;
  // Training rows per epoch (exact).
  virtual int64_t tokens_per_epoch() const = 0;
  // Rows of epoch `epoch` from `cursor` (0 = start of the epoch) until at least `want` rows or the end of
  // the epoch: [n, d_in] float32 on device(). Advances `cursor`. Deterministic in (epoch, cursor, want).
  virtual at::Tensor next_rows(int64_t epoch, int64_t& cursor, int64_t want) = 0;
  virtual bool epoch_done(int64_t epoch, int64_t cursor) const = 0;
  // Held-out rows (raw), at most max_rows: [n, d_in] float32 on device() (n may be 0).
  virtual at::Tensor validation_rows(int64_t max_rows) = 0;
  virtual at::Device device() const = 0;
  // "streaming mode" / "cache mode"
  virtual std::string mode() const = 0;
  // Whether a buffer of a whole epoch is cheap to fill (memory-mapped rows, no model forward).
  virtual bool cheap_refill() const { return false; }
  // Split sizes for the "✓ Split" line.
  virtual int64_t train_documents() const = 0;
  virtual int64_t validation_documents() const = 0;
  // Identifies the data (checked on --resume): d_in, site, tokens per epoch, file...
  virtual nlohmann::ordered_json fingerprint() const = 0;
};

// Streams from the model. Training documents are the first (1 - validation_split) of the corpus (non-empty
// ones), validation the rest; each epoch visits the training documents in an order seeded by (seed, epoch).
class ModelActivationSource : public ActivationSource {
 public:
  ModelActivationSource(const InterpretableModel& model, const TextCorpus& corpus, int site, HarvestOptions o,
                        double validation_split, uint64_t seed, at::Device device,
                        const std::function<void(int64_t, int64_t)>& on_count = {});
  int64_t d_in() const override { return harvester_.d(0); }
  int64_t tokens_per_epoch() const override { return tokens_; }
  at::Tensor next_rows(int64_t epoch, int64_t& cursor, int64_t want) override;
  bool epoch_done(int64_t epoch, int64_t cursor) const override;
  at::Tensor validation_rows(int64_t max_rows) override;
  at::Device device() const override { return device_; }
  std::string mode() const override { return "streaming mode"; }
  int64_t train_documents() const override { return int64_t(train_.size()); }
  int64_t validation_documents() const override { return int64_t(val_.size()); }
  nlohmann::ordered_json fingerprint() const override;
  // Model forwards run so far (for tokens/s accounting).
  int64_t forwards() const { return forwards_; }

 private:
  const std::vector<int64_t>& order(int64_t epoch);
  int64_t piece_kept_estimate(int64_t doc, int64_t piece) const;
  Harvester harvester_;
  const TextCorpus& corpus_;
  std::vector<int64_t> train_, val_;
  std::vector<int32_t> pieces_, ntok_;  // per corpus document: pieces, tokens
  std::vector<char> starts_bos_;
  int64_t tokens_ = 0;
  uint64_t seed_;
  at::Device device_;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;
  int64_t forwards_ = 0;
  std::string site_name_;
};

// ---- activation cache ---------------------------------------------------------------------------

struct CacheWriteOptions {
  HarvestOptions harvest;
  at::ScalarType store_dtype = at::kHalf;
  int64_t shard_tokens = 1 << 18;  // rows per shard
  int64_t max_tokens = 0;          // stop after this many rows (0 = the whole corpus)
  int64_t stop_after_shards = 0;   // return after writing this many shards, leaving the cache resumable (tests)
  bool quiet = false;
};

// Writes (or resumes) a cache of `sites` for every document of `corpus`. Returns the rows written in total.
int64_t write_activation_cache(const InterpretableModel& model, const TextCorpus& corpus,
                               const std::vector<std::string>& sites, const std::string& out_dir,
                               const CacheWriteOptions& o);

// Reads a cache for one site: training rows are the documents before the validation cut, in chunks that
// each epoch visits in a seeded order.
class CacheActivationSource : public ActivationSource {
 public:
  CacheActivationSource(const std::string& dir, const std::string& site, double validation_split, uint64_t seed,
                        at::Device device, int64_t chunk_rows = 2048);
  int64_t d_in() const override { return d_; }
  int64_t tokens_per_epoch() const override { return train_rows_; }
  at::Tensor next_rows(int64_t epoch, int64_t& cursor, int64_t want) override;
  bool epoch_done(int64_t epoch, int64_t cursor) const override;
  at::Tensor validation_rows(int64_t max_rows) override;
  at::Device device() const override { return device_; }
  std::string mode() const override { return "cache mode"; }
  bool cheap_refill() const override { return true; }
  int64_t train_documents() const override { return train_docs_; }
  int64_t validation_documents() const override { return val_docs_; }
  nlohmann::ordered_json fingerprint() const override;
  const nlohmann::ordered_json& meta() const { return meta_; }
  // Canonical site names stored in the cache directory.
  static std::vector<std::string> cached_sites(const std::string& dir);

 private:
  at::Tensor rows(int64_t begin, int64_t end);  // global row range -> float32 on device
  std::string dir_, site_;
  nlohmann::ordered_json meta_;
  std::vector<SafeTensors> shards_;
  std::vector<int64_t> shard_begin_;  // global row index of each shard's first row (+ total at the end)
  int64_t d_ = 0, total_rows_ = 0, train_rows_ = 0, train_docs_ = 0, val_docs_ = 0, chunk_rows_;
  uint64_t seed_;
  at::Device device_;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;
};

// ---- the shuffled batch stream --------------------------------------------------------------------

struct StreamPosition {
  int64_t epoch = 0;
  int64_t cursor = 0;  // source cursor at the start of the current buffer
  int64_t offset = 0;  // rows of the current buffer already served
};

class BatchStream {
 public:
  BatchStream(ActivationSource& source, int64_t batch_size, int64_t buffer_rows, uint64_t seed);
  // The next batch [batch_size, d_in] float32; epochs roll over (the caller counts steps).
  at::Tensor next();
  // The rows of the current (first, before any next()) buffer in their shuffled order (a copy): for initialisation.
  at::Tensor current_buffer();
  StreamPosition position() const { return pos_; }
  // Moves to `p`, refilling that buffer.
  void restore(const StreamPosition& p);
  int64_t buffer_fills() const { return fills_; }

 private:
  void fill();
  ActivationSource& src_;
  int64_t batch_, buffer_rows_;
  uint64_t seed_;
  StreamPosition pos_;
  int64_t next_cursor_ = 0;
  at::Tensor buf_;   // rows of the current buffer, as the source returned them [n, d_in]
  at::Tensor perm_;  // the buffer's shuffle: batch rows are buf_[perm_[offset ..]] [n] int64
  int64_t fills_ = 0;
};

// Mixes integers into one 64-bit seed (splitmix64), for per-purpose generators.
uint64_t mix_seed(std::initializer_list<uint64_t> parts);

}  // namespace mlxterp
