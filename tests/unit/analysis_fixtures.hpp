// Models and prompts shared by the analysis tests (test_analysis_*.cpp).
#pragma once

#include "common.hpp"
#include "mlxterp/analysis_common.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp::test {

// stories260K from its GGUF (tokenizer included when the build has one). Cached per process.
inline const InterpretableModel& stories() {
  static const InterpretableModel m = [] {
    LoadOptions o;
    o.device = test_device();
    try {
      return InterpretableModel::load(data_path("models/stories260K/stories260K.gguf"), o);
    } catch (const Error&) {
      o.load_tokenizer = false;  // ids-only until the tokenizer is available
      return InterpretableModel::load(data_path("models/stories260K/stories260K.gguf"), o);
    }
  }();
  return m;
}

// A golden tiny random-weight HF model (tests/golden/hf/<name>), no tokenizer.
inline InterpretableModel golden(const std::string& name) {
  LoadOptions o;
  o.device = test_device();
  o.load_tokenizer = false;
  return InterpretableModel::load(golden_path("hf/" + name), o);
}

#define MLXTERP_REQUIRE_STORIES() MLXTERP_REQUIRE_DATA("models/stories260K/stories260K.gguf")

// Two stories260K prompts of equal length that differ in one name (ids with BOS; from tok512):
// "Once upon a time, there was a little girl named Lily. Lily" vs the same with another name.
// Ids chosen from the model's own vocabulary so they work without a tokenizer.
struct PromptPair {
  const char* text;  // the clean prompt, for messages
  std::vector<int32_t> clean, corrupt;
  int32_t answer, wrong;  // the clean prompt's answer and the corrupted prompt's
};

// Name-swap pairs (ids from stories260K's tok512 via HF tokenizers; "Lily" = 317, "Tim" = 326 are
// single tokens). The corrupted prompt swaps the second name, which flips the answer.
inline std::vector<PromptPair> name_pairs() {
  return {
      {"Lily and Tim went to the park. Tim gave a ball to",
       {1, 317, 269, 326, 263, 377, 267, 265, 282, 295, 433, 426, 326, 298, 412, 360, 261, 268, 388, 267},
       {1, 317, 269, 326, 263, 377, 267, 265, 282, 295, 433, 426, 317, 298, 412, 360, 261, 268, 388, 267}, 317, 326},
      {"Tim and Lily were playing. Lily said hello to",
       {1, 326, 269, 317, 382, 276, 337, 299, 426, 317, 336, 281, 306, 414, 267},
       {1, 326, 269, 317, 382, 276, 337, 299, 426, 326, 336, 281, 306, 414, 267}, 326, 317},
  };
}

}  // namespace mlxterp::test
