// PCRE2 wrapper (see regex.hpp).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.hpp"

#include <pcre2.h>

#include <vector>

#include "mlxterp/error.hpp"
#include "tokenizer/text.hpp"

namespace mlxterp::tok {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
};

namespace {
// One match-data block per thread and pattern size is enough: matches never nest.
struct MatchData {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* ctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchData() {
    md = pcre2_match_data_create(64, nullptr);
    ctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    if (ctx && stack) pcre2_jit_stack_assign(ctx, nullptr, stack);
  }
  ~MatchData() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(ctx);
    pcre2_jit_stack_free(stack);
  }
};
MatchData& thread_match_data() {
  thread_local MatchData d;
  return d;
}
}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where) : impl_(std::make_unique<Impl>()), pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE off = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &off, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    MLXTERP_FAIL(where, ": cannot compile the regex ", pattern, " at offset ", size_t(off), ": ",
                 reinterpret_cast<const char*>(buf), "; expected a regex PCRE2 understands (Oniguruma-only syntax is "
                 "not supported)");
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

void Regex::for_each_match(std::string_view text, const std::function<void(size_t, size_t)>& f) const {
  MatchData& d = thread_match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos <= text.size()) {
    int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, text.size(), pos, 0, d.md, d.ctx)
                        : pcre2_match(impl_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, d.md, d.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof buf);
      MLXTERP_FAIL("pre-tokenizer regex ", pattern_, ": matching failed at byte ", pos, ": ",
                   reinterpret_cast<const char*>(buf));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(d.md);
    size_t s = ov[0], e = ov[1];
    if (e > s) {
      f(s, e);
      pos = e;
    } else {
      if (s >= text.size()) break;
      pos = s + std::min(utf8_len(uint8_t(text[s])), text.size() - s);  // skip the empty match
    }
  }
}

std::string oniguruma_to_pcre2(const std::string& pattern, const std::string& where) {
  static const char* kWordProps = R"(\p{L}\p{M}\p{Nd}\p{Pc})";
  std::string out;
  out.reserve(pattern.size() + 16);
  // Open character classes: where each one's body starts (a ']' there is a literal). Depth 1 is the class
  // PCRE2 sees; Oniguruma's nested classes inside it ([a[bc]] = [abc], BLOOM's " ?[^(\s|[.,!?])]+") are
  // flattened into it: a union, which is what a non-negated nested class means.
  std::vector<size_t> open;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    const bool in_class = !open.empty();
    if (c == '\\' && i + 1 < pattern.size()) {
      const char n = pattern[i + 1];
      if (n == 'Q') {  // quoted up to \E (or the end): copied as is
        const size_t e = pattern.find("\\E", i + 2);
        const size_t stop = e == std::string::npos ? pattern.size() : e + 2;
        out.append(pattern, i, stop - i);
        i = stop - 1;
        continue;
      }
      if (n == 'w') {
        out += in_class ? std::string(kWordProps) : "[" + std::string(kWordProps) + "]";
      } else if (n == 'W') {
        MLXTERP_CHECK(!in_class, where, ": the regex ", pattern, " has \\W inside a character class; expected "
                      "\\W only outside classes (Oniguruma's \\W there has no PCRE2 equivalent, so it is refused "
                      "rather than matched differently)");
        out += "[^" + std::string(kWordProps) + "]";
      } else {
        out += c;
        out += n;
      }
      ++i;
      continue;
    }
    if (c == '[' && in_class && i + 1 < pattern.size() && pattern[i + 1] == ':') {  // POSIX [:alpha:]
      const size_t e = pattern.find(":]", i + 2);
      if (e != std::string::npos) {
        out.append(pattern, i, e + 2 - i);
        i = e + 1;
        continue;
      }
    }
    if (c == '[') {
      const bool negated = i + 1 < pattern.size() && pattern[i + 1] == '^';
      if (!in_class) {
        out += c;
        if (negated) out += pattern[++i];
      } else {
        MLXTERP_CHECK(!negated, where, ": the regex ", pattern, " nests a negated class [^...] inside a class; "
                      "expected only non-negated nested classes (they are flattened into the outer one; a "
                      "negated one has no PCRE2 form and is refused rather than matched differently)");
      }
      open.push_back(i + 1);
      continue;
    }
    if (c == ']' && in_class) {
      if (open.back() == i) {  // first in its class: a literal ']'
        out += "\\]";
        continue;
      }
      open.pop_back();
      if (open.empty()) out += c;  // only the outermost class closes in the output
      continue;
    }
    if (c == '&' && in_class && i + 1 < pattern.size() && pattern[i + 1] == '&')
      MLXTERP_FAIL(where, ": the regex ", pattern, " uses class intersection (&&), which PCRE2 does not have "
                   "(refused rather than matched differently); expected a class without &&");
    out += c;
  }
  return out;
}

}  // namespace mlxterp::tok
