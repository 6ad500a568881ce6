// Added / special tokens (internal): found in the text before any BPE and never split, with the
// Hugging Face semantics (leftmost-longest match; lstrip / rstrip swallow neighbouring whitespace;
// single_word requires word boundaries; `normalized` tokens are matched after normalization).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlxterp::tok {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, lstrip = false, rstrip = false, normalized = false, single_word = false;
};

// A piece of the input after added-token extraction: either a token id, or text [begin, end).
struct Segment {
  int32_t id = -1;  // >= 0: an added token
  size_t begin = 0, end = 0;
};

class AddedMatcher {
 public:
  AddedMatcher() = default;
  explicit AddedMatcher(std::vector<AddedToken> tokens);
  bool empty() const { return tokens_.empty(); }
  // Splits `text` into added tokens and the text between them (empty text segments are dropped).
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t token = -1;                                   // index into tokens_ if a token ends here
  };
  int32_t child(int32_t node, unsigned char c) const;
  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;
  bool first_byte_[256] = {};
};

}  // namespace mlxterp::tok
