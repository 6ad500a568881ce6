// Prompt handling and small shared helpers (analysis_common.hpp).
#include "mlxterp/analysis_common.hpp"

#include <cmath>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

std::vector<int32_t> prompt_ids(const InterpretableModel& m, const Prompt& p) {
  std::vector<int32_t> ids = p.is_ids ? p.token_ids : m.encode(p.text);
  MLXTERP_CHECK(!ids.empty(), "prompt ", p.is_ids ? std::string("(ids)") : quote(p.text),
                " has no tokens; expected at least one");
  const int64_t V = m.model().config().d_vocab;
  for (int32_t id : ids)
    MLXTERP_CHECK(id >= 0 && id < V, "prompt: token id ", id, " is out of range; expected 0 .. ", V - 1,
                  " (the model's vocabulary)");
  return ids;
}

at::Tensor ids_tensor(const std::vector<int32_t>& ids) {
  return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).unsqueeze(0);
}

std::string token_string(const InterpretableModel& m, int32_t id) {
  if (m.has_tokenizer() && id >= 0 && id < m.tokenizer().vocab_size()) return m.tokenizer().token_to_str(id);
  return "#" + std::to_string(id);
}

std::vector<std::string> token_strings(const InterpretableModel& m, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int32_t id : ids) out.push_back(token_string(m, id));
  return out;
}

int32_t resolve_token(const InterpretableModel& m, std::string_view spec) {
  const int64_t V = m.model().config().d_vocab;
  int64_t id;
  if (!spec.empty() && spec[0] == '#') {
    id = parse_int(spec.substr(1), "token '" + std::string(spec) + "'");
  } else {
    MLXTERP_CHECK(m.has_tokenizer(), "token ", quote(spec), ": the model has no tokenizer; write the token as #ID (e.g. #338)");
    id = parse_token(m.tokenizer(), spec);
  }
  MLXTERP_CHECK(id >= 0 && id < V, "token ", quote(spec), ": id ", id, " is out of range; expected 0 .. ", V - 1);
  return int32_t(id);
}

std::vector<int> resolve_layers(const std::vector<int>& layers, int n_layers, std::string_view what) {
  std::vector<int> out;
  if (layers.empty()) {
    for (int i = 0; i < n_layers; ++i) out.push_back(i);
    return out;
  }
  for (int l : layers) {
    int a = l < 0 ? n_layers + l : l;
    MLXTERP_CHECK(a >= 0 && a < n_layers, what, ": layer ", l, " is out of range; the model has ", n_layers,
                  " layers (0 .. ", n_layers - 1, ")");
    MLXTERP_CHECK(std::find(out.begin(), out.end(), a) == out.end(), what, ": layer ", a, " is listed twice");
    out.push_back(a);
  }
  return out;
}

int64_t resolve_position(int64_t position, int64_t t) {
  MLXTERP_CHECK(position >= -t && position < t, "Position ", position, " is out of bounds for sequence length ", t,
                ". Valid range: [", -t, ", ", t - 1, "]");
  return position < 0 ? t + position : position;
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  MLXTERP_CHECK(a.size() == b.size(), "pearson: samples of different sizes (", a.size(), " and ", b.size(), ")");
  const size_t n = a.size();
  if (n < 2) return std::nan("");
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) ma += a[i], mb += b[i];
  ma /= double(n);
  mb /= double(n);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  if (saa <= 0 || sbb <= 0) return std::nan("");
  return sab / std::sqrt(saa * sbb);
}

}  // namespace mlxterp
