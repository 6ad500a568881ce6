// Internal: the evaluated sequences of a corpus in padded batches (shared by sae eval and sae features).
//
//   SequenceStream s(model, corpus, site, data_options, sae);
//   SeqBatch b;
//   while (s.next(b)) { ... b.ids [B, T], b.keep [B, T] ... }
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mlxterp/progress.hpp"
#include "mlxterp/sae.hpp"
#include "mlxterp/sae_data.hpp"
#include "mlxterp/sae_eval.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp::sae_eval_detail {

struct SeqBatch {
  at::Tensor ids;    // [B, T] int64, CPU; padding = 0
  at::Tensor mask;   // [B, T] int64, 1 = real token
  at::Tensor keep;   // [B, T] bool (uint8), evaluated positions: real and (exclude_special) not special
  std::vector<int64_t> doc, piece, length;  // per row
  int64_t kept = 0;  // evaluated positions in the batch
  bool padded = false;
};

class SequenceStream {
 public:
  SequenceStream(const InterpretableModel& model, const TextCorpus& corpus, int site, const SaeDataOptions& o,
                 const SAE& sae);
  // The next batch (whole sequences, in corpus order); false when the data (or max_tokens) is exhausted.
  bool next(SeqBatch& b);
  int64_t context_size() const { return ctx_; }
  int64_t batch_sequences() const { return batch_; }
  int64_t first_document() const { return first_doc_; }
  int64_t documents() const { return int64_t(corpus_.size()) - first_doc_; }
  int64_t documents_done() const { return doc_ - first_doc_; }
  int64_t sequences() const { return sequences_; }
  int64_t tokens() const { return tokens_; }
  const std::vector<char>& special() const { return special_; }
  void finish_progress();

 private:
  const InterpretableModel& model_;
  const TextCorpus& corpus_;
  SaeDataOptions o_;
  std::unique_ptr<Harvester> harvester_;
  int64_t ctx_ = 256, batch_ = 32, first_doc_ = 0, doc_ = 0, piece_ = 0, n_pieces_ = -1;
  int64_t sequences_ = 0, tokens_ = 0;
  std::vector<char> special_;
  std::unique_ptr<Progress> bar_;
};

// One forward pass over a batch: logits [B, T, V] float32 (undefined with need_logits = false) and the site's
// activation [B, T, d] when `capture`.
struct ForwardOut {
  at::Tensor logits, act;
};
ForwardOut run_batch(const InterpretableModel& model, const SeqBatch& b, int site, bool capture, bool need_logits,
                     InterventionFn edit = nullptr);

// Default context size for an SAE: its training config's context_size, else 256; capped at the model's n_ctx.
int64_t default_context_size(const SAE& sae, const InterpretableModel& model);

}  // namespace mlxterp::sae_eval_detail
