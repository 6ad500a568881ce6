// mlxterp/analysis_common.hpp — inputs shared by every analysis: prompts as text or ids, token
// display strings, answer tokens, layer lists.
//
//   mlxterp::Prompt p = "Once upon a time";                 // text: encoded with the model's tokenizer
//   mlxterp::Prompt q = mlxterp::Prompt::ids({1, 403, 407});  // ids: used verbatim (no BOS added)
//   std::vector<int32_t> ids = mlxterp::prompt_ids(m, p);
//   std::vector<std::string> shown = mlxterp::token_strings(m, ids);   // " upon" (or "#403" without a tokenizer)
//   int32_t she = mlxterp::resolve_token(m, " She");                    // or "#338"
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mlxterp/trace.hpp"

namespace mlxterp {

// A prompt: text (tokenized with the model's tokenizer, BOS per its configuration) or token ids.
struct Prompt {
  std::string text;
  std::vector<int32_t> token_ids;
  bool is_ids = false;

  Prompt() = default;
  Prompt(std::string t) : text(std::move(t)) {}  // NOLINT: implicit on purpose
  Prompt(const char* t) : text(t) {}             // NOLINT
  static Prompt ids(std::vector<int32_t> v) {
    Prompt p;
    p.token_ids = std::move(v);
    p.is_ids = true;
    return p;
  }
};

// The prompt's ids (text encoded with add_special per the tokenizer). Throws if empty or out of vocabulary.
std::vector<int32_t> prompt_ids(const InterpretableModel& m, const Prompt& p);
// ids -> [1, t] int64 tensor (CPU).
at::Tensor ids_tensor(const std::vector<int32_t>& ids);
// Display strings for ids: the tokenizer's token_to_str, or "#ID" when the model has no tokenizer.
std::vector<std::string> token_strings(const InterpretableModel& m, const std::vector<int32_t>& ids);
std::string token_string(const InterpretableModel& m, int32_t id);
// A single token: "#ID", or a vocabulary entry as `tokenize --json` decodes it (" She"). Needs the
// tokenizer unless "#ID". Checked against the model's vocabulary size.
int32_t resolve_token(const InterpretableModel& m, std::string_view spec);
// Empty -> 0..n_layers-1; negative entries count from the end; duplicates and out-of-range are errors.
std::vector<int> resolve_layers(const std::vector<int>& layers, int n_layers, std::string_view what = "layers");
// A position index into a sequence of length t (negative counts from the end); throws if out of range
// with the original's message "Position P is out of bounds for sequence length T. Valid range: [-T, T-1]".
int64_t resolve_position(int64_t position, int64_t t);

// Pearson correlation of two equally long samples (NaN if either is constant or fewer than 2 values).
double pearson(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace mlxterp
