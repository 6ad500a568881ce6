// The CLI's --intervene SPEC forms (interventions.hpp: parse_intervention).
#include <map>

#include "mlxterp/analysis_steering.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/interventions.hpp"
#include "mlxterp/io.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::iv {

namespace {

// FILE[:TENSOR] where FILE may itself contain ':' (the file part is the longest existing prefix).
std::pair<std::string, std::string> split_file_tensor(const std::string& s, const std::string& spec) {
  if (file_exists(s)) return {s, ""};
  size_t c = s.rfind(':');
  while (c != std::string::npos) {
    std::string file = s.substr(0, c);
    if (file_exists(file)) return {file, s.substr(c + 1)};
    c = c == 0 ? std::string::npos : s.rfind(':', c - 1);
  }
  MLXTERP_FAIL("--intervene ", quote(spec), ": file '", s, "' not found; expected FILE.safetensors[:TENSOR]");
}

// All names a site answers to that a tensor could be stored under.
bool names_site(const SiteTable& S, int site, const std::string& tensor_name) {
  return S.find(tensor_name) == site;
}

at::Tensor pick_tensor(const std::string& file, const std::string& tensor, const SiteTable& S, int site,
                       const std::string& spec) {
  SafeTensors st = SafeTensors::open(file);
  std::vector<std::string> names = st.names();
  if (!tensor.empty()) {
    MLXTERP_CHECK(st.contains(tensor), "--intervene ", quote(spec), ": ", file, " has no tensor '", tensor,
                  "'; it holds: ", join(names, ", "));
    return st.get(tensor).to(at::kFloat).clone();
  }
  if (names.size() == 1) return st.get(names[0]).to(at::kFloat).clone();
  std::vector<std::string> matching;
  for (const auto& n : names)
    if (names_site(S, site, n)) matching.push_back(n);
  MLXTERP_CHECK(matching.size() == 1, "--intervene ", quote(spec), ": ", file, " holds ", names.size(),
                " tensors and ", matching.empty() ? "none" : "several", " named like site '", S[site].name,
                "'; pick one with FILE:TENSOR (tensors: ", join(names, ", "), ")");
  return st.get(matching[0]).to(at::kFloat).clone();
}

double parse_number(const std::string& s, const std::string& what, const std::string& spec) {
  try {
    return parse_float(trim(s), what);
  } catch (const Error&) {
    MLXTERP_FAIL("--intervene ", quote(spec), ": ", what, " must be a number, got '", s, "'");
  }
}

struct ExtraForm {
  std::string usage;
  InterventionFormParser parser;
};
std::map<std::string, ExtraForm>& extra_forms() {
  static std::map<std::string, ExtraForm> m;
  return m;
}
std::string extra_usage() {
  std::string u;
  for (const auto& [verb, f] : extra_forms()) u += " | " + f.usage;
  return u;
}

}  // namespace

bool register_intervention_form(const std::string& verb, const std::string& usage, InterventionFormParser parser) {
  extra_forms()[verb] = {usage, std::move(parser)};
  return true;
}

std::pair<std::string, InterventionFn> parse_intervention(std::string_view spec_view, const Model& model) {
  const std::string spec(spec_view);
  const size_t eq = spec.find('=');
  MLXTERP_CHECK(eq != std::string::npos && eq > 0, "--intervene ", quote(spec),
                ": expected SITE=ACTION (ACTION: zero | scale:F | clamp:LO:HI | noise:STD[:SEED] | "
                "add:FILE.safetensors[:TENSOR][*STRENGTH] | replace:FILE.safetensors[:TENSOR])");
  const std::string site_name = trim(spec.substr(0, eq)), action = trim(spec.substr(eq + 1));
  const SiteTable& S = model.sites();
  const int site = S.resolve(site_name);
  const std::string canonical = S[site].name;
  const size_t colon = action.find(':');
  const std::string verb = action.substr(0, colon), arg = colon == std::string::npos ? "" : action.substr(colon + 1);

  if (verb == "zero") {
    MLXTERP_CHECK(arg.empty(), "--intervene ", quote(spec), ": 'zero' takes no argument");
    return {canonical, zero()};
  }
  if (verb == "scale") {
    MLXTERP_CHECK(!arg.empty(), "--intervene ", quote(spec), ": expected scale:F (e.g. scale:0.5)");
    return {canonical, scale(parse_number(arg, "the scale factor", spec))};
  }
  if (verb == "clamp") {
    auto parts = split(arg, ':');
    MLXTERP_CHECK(parts.size() == 2, "--intervene ", quote(spec),
                  ": expected clamp:LO:HI (either may be empty, e.g. clamp::5)");
    std::optional<double> lo, hi;
    if (!trim(parts[0]).empty()) lo = parse_number(parts[0], "the lower bound", spec);
    if (!trim(parts[1]).empty()) hi = parse_number(parts[1], "the upper bound", spec);
    MLXTERP_CHECK(lo || hi, "--intervene ", quote(spec), ": clamp needs at least one bound");
    MLXTERP_CHECK(!(lo && hi) || *lo <= *hi, "--intervene ", quote(spec), ": the lower bound ", *lo,
                  " is above the upper bound ", *hi);
    return {canonical, clamp(lo, hi)};
  }
  if (verb == "noise") {
    auto parts = split(arg, ':');
    MLXTERP_CHECK(!arg.empty() && parts.size() <= 2, "--intervene ", quote(spec), ": expected noise:STD[:SEED]");
    double std = parse_number(parts[0], "the noise standard deviation", spec);
    MLXTERP_CHECK(std >= 0, "--intervene ", quote(spec), ": the noise standard deviation must be >= 0, got ", std);
    uint64_t seed = 0;
    if (parts.size() == 2) {
      int64_t s = parse_int(trim(parts[1]), "--intervene " + quote(spec) + ": the seed");
      MLXTERP_CHECK(s >= 0, "--intervene ", quote(spec), ": the seed must be >= 0, got ", s);
      seed = uint64_t(s);
    }
    return {canonical, noise(std, seed)};
  }
  if (verb == "add") {
    MLXTERP_CHECK(!arg.empty(), "--intervene ", quote(spec), ": expected add:FILE.safetensors[:TENSOR][*STRENGTH]");
    std::string body = arg;
    double strength = 1.0;
    size_t star = body.rfind('*');
    if (star != std::string::npos && !file_exists(body)) {
      strength = parse_number(body.substr(star + 1), "the strength", spec);
      body = body.substr(0, star);
    }
    auto [file, tensor] = split_file_tensor(body, spec);
    at::Tensor v;
    if (ends_with(to_lower(file), ".gguf")) {
      MLXTERP_CHECK(tensor.empty(), "--intervene ", quote(spec), ": a control vector picks direction.N from the site; "
                                    "drop ':", tensor, "'");
      const SiteInfo& info = S[site];
      MLXTERP_CHECK(info.layer >= 0 && info.component.empty(), "--intervene ", quote(spec),
                    ": a GGUF control vector applies to block outputs (model.layers.N), got site '", info.name, "'");
      ControlVector cv = load_control_vector(file);
      auto it = cv.directions.find(info.layer);
      MLXTERP_CHECK(it != cv.directions.end(), "--intervene ", quote(spec), ": ", file, " has no direction.",
                    info.layer, " (it has directions for blocks ", [&] {
                      std::vector<std::string> ks;
                      for (const auto& [k, _] : cv.directions) ks.push_back(std::to_string(k));
                      return join(ks, ", ");
                    }(), ")");
      v = it->second;
    } else {
      v = pick_tensor(file, tensor, S, site, spec);
    }
    // Drop a leading batch axis of 1 so [1, d] works as [d].
    while (v.dim() > 1 && v.size(0) == 1 && v.dim() != 3) v = v.squeeze(0);
    MLXTERP_CHECK(v.dim() >= 1 && v.dim() <= 3, "--intervene ", quote(spec), ": the vector has shape ",
                  shape_str(v.sizes()), "; expected [d], [t, d] or [b, t, d]");
    return {canonical, add_vector(v * strength)};
  }
  if (verb == "replace") {
    MLXTERP_CHECK(!arg.empty(), "--intervene ", quote(spec), ": expected replace:FILE.safetensors[:TENSOR]");
    auto [file, tensor] = split_file_tensor(arg, spec);
    at::Tensor v = pick_tensor(file, tensor, S, site, spec);
    return {canonical, replace_with(v, Align::Start)};
  }
  if (auto it = extra_forms().find(verb); it != extra_forms().end()) return {canonical, it->second.parser(arg, site, model, spec)};
  MLXTERP_FAIL("--intervene ", quote(spec), ": unknown action '", verb,
               "'; expected zero | scale:F | clamp:LO:HI | noise:STD[:SEED] | add:FILE.safetensors[:TENSOR][*STRENGTH] | "
               "replace:FILE.safetensors[:TENSOR]", extra_usage());
}

}  // namespace mlxterp::iv
