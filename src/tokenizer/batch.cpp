// Batch encoding with padding and an attention mask (any Tokenizer).
#include "mlxterp/error.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

BatchEncoding encode_batch(const Tokenizer& tok, const std::vector<std::string>& texts, const BatchOptions& o) {
  std::vector<std::vector<int32_t>> all;
  all.reserve(texts.size());
  size_t longest = 0;
  for (const auto& t : texts) {
    auto ids = tok.encode(t, {.add_special = o.add_special});
    if (o.max_length > 0 && int64_t(ids.size()) > o.max_length) ids.resize(size_t(o.max_length));
    MLXTERP_CHECK(!ids.empty(), "encode_batch: text ", quote(t.substr(0, 40)),
                  " encodes to no tokens (an empty text without BOS); expected at least one");
    longest = std::max(longest, ids.size());
    all.push_back(std::move(ids));
  }
  const int64_t b = int64_t(all.size()), T = int64_t(longest);
  const int64_t pad = tok.special().pad >= 0 ? tok.special().pad : 0;
  BatchEncoding out;
  out.ids = at::full({b, T}, pad, at::kLong);
  out.attention_mask = at::zeros({b, T}, at::kLong);
  auto ids = out.ids.accessor<int64_t, 2>();
  auto mask = out.attention_mask.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const auto& v = all[i];
    const int64_t n = int64_t(v.size());
    const int64_t start = o.padding_side == PaddingSide::Left ? T - n : 0;
    for (int64_t j = 0; j < n; ++j) {
      ids[i][start + j] = v[j];
      mask[i][start + j] = 1;
    }
    out.lengths.push_back(n);
  }
  return out;
}

}  // namespace mlxterp
