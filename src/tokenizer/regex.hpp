// PCRE2 (UTF + UCP, JIT-compiled) for the BPE pre-tokenizers (internal).
//
//   tok::Regex re(tok::kGpt2Pattern, "gpt2 pre-tokenizer");
//   re.for_each_match(text, [&](size_t start, size_t end) { ... });   // non-overlapping, left to right
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace mlxterp::tok {

// GPT-2's pre-tokenizer (HF ByteLevel use_regex=true).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama-3 (tiktoken cl100k-style, digits in groups of up to three).
inline constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2 (single digits).
inline constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// An Oniguruma pattern (tokenizer.json's Split / Replace "Regex") in PCRE2 terms. The two agree on the
// syntax these files use, but not on \w: Oniguruma's is letters, marks, decimal digits and connector
// punctuation, PCRE2's (10.42, UCP) letters, all numbers and '_'. So \w becomes [\p{L}\p{M}\p{Nd}\p{Pc}]
// (inside a class, its four properties), \W outside a class its complement; and Oniguruma's nested classes
// ([a[bc]], which BLOOM's pre-tokenizer uses) are flattened into their outer class (PCRE2 reads '[' inside a
// class as a literal). Everything else is copied, including escaped backslashes and \Q...\E quotes. What has
// no PCRE2 form (\W inside a class, a negated nested class, class intersection &&) is refused with a clear
// error rather than matched differently.
std::string oniguruma_to_pcre2(const std::string& pattern, const std::string& where);

class Regex {
 public:
  // Compiles with PCRE2_UTF | PCRE2_UCP and JIT; throws mlxterp::Error naming `where` and the offset.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  const std::string& pattern() const { return pattern_; }
  // Calls f(start, end) for every match (byte offsets), non-overlapping, left to right. An empty
  // match advances by one character (as Oniguruma's and Rust's find_iter do). `text` must be valid UTF-8.
  void for_each_match(std::string_view text, const std::function<void(size_t, size_t)>& f) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string pattern_;
};

}  // namespace mlxterp::tok
