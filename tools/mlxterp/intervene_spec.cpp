// The `--intervene SPEC` forms of CLI.md, shared by trace and generate.
#include "cli.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp::cli {

namespace {

at::Tensor load_vector(const std::string& spec, std::string arg, double* strength) {
  *strength = 1.0;
  size_t star = arg.rfind('*');
  if (star != std::string::npos) {
    *strength = parse_float(arg.substr(star + 1), "--intervene " + spec + ": strength");
    arg = arg.substr(0, star);
  }
  std::string file = arg, tensor;
  size_t ext = arg.find(".safetensors");
  MLXTERP_CHECK(ext != std::string::npos, "--intervene ", spec, ": expected FILE.safetensors[:TENSOR], got '", arg, "'");
  file = arg.substr(0, ext + 12);
  if (arg.size() > ext + 12) {
    MLXTERP_CHECK(arg[ext + 12] == ':', "--intervene ", spec, ": expected FILE.safetensors[:TENSOR], got '", arg, "'");
    tensor = arg.substr(ext + 13);
  }
  SafeTensors st = SafeTensors::open(file);
  if (tensor.empty()) {
    MLXTERP_CHECK(st.infos().size() == 1, "--intervene ", spec, ": ", file, " holds ", st.infos().size(),
                  " tensors; name one as FILE.safetensors:TENSOR (it has: ", join(st.names(), ", "), ")");
    tensor = st.names()[0];
  }
  return st.get(tensor).to(at::kFloat).clone();
}

}  // namespace

std::pair<std::string, InterventionFn> parse_intervention_cli(const std::string& spec, const InterpretableModel& m) {
  size_t eq = spec.find('=');
  MLXTERP_CHECK(eq != std::string::npos && eq > 0, "--intervene '", spec,
                "': expected SITE=ACTION (zero, scale:F, clamp:LO:HI, noise:STD[:SEED], add:FILE[:T][*S], replace:FILE[:T])");
  std::string site = spec.substr(0, eq), action = spec.substr(eq + 1);
  m.sites().resolve(site);  // unknown sites fail here with close matches
  std::vector<std::string> parts = split(action, ':');
  const std::string& op = parts[0];
  auto nargs = [&](size_t lo, size_t hi) {
    MLXTERP_CHECK(parts.size() - 1 >= lo && parts.size() - 1 <= hi, "--intervene '", spec, "': '", op, "' takes ",
                  lo == hi ? std::to_string(lo) : std::to_string(lo) + ".." + std::to_string(hi), " argument(s), got ",
                  parts.size() - 1);
  };
  if (op == "zero") {
    nargs(0, 0);
    return {site, [](const at::Tensor& x, const SiteCall&) { return at::zeros_like(x); }};
  }
  if (op == "scale") {
    nargs(1, 1);
    double f = parse_float(parts[1], "--intervene " + spec + ": scale factor");
    return {site, [f](const at::Tensor& x, const SiteCall&) { return x * f; }};
  }
  if (op == "clamp") {
    nargs(2, 2);
    double lo = parse_float(parts[1], "--intervene " + spec + ": LO"), hi = parse_float(parts[2], "--intervene " + spec + ": HI");
    MLXTERP_CHECK(lo <= hi, "--intervene '", spec, "': LO must be <= HI, got ", lo, " > ", hi);
    return {site, [lo, hi](const at::Tensor& x, const SiteCall&) { return x.clamp(lo, hi); }};
  }
  if (op == "noise") {
    nargs(1, 2);
    double std = parse_float(parts[1], "--intervene " + spec + ": STD");
    MLXTERP_CHECK(std >= 0, "--intervene '", spec, "': STD must be >= 0, got ", std);
    uint64_t seed = parts.size() > 2 ? uint64_t(parse_int(parts[2], "--intervene " + spec + ": SEED")) : 0;
    auto gen = std::make_shared<at::Generator>(at::detail::createCPUGenerator(seed));
    return {site, [std, gen](const at::Tensor& x, const SiteCall&) {
              at::Tensor n = at::randn(x.sizes(), *gen, at::TensorOptions().dtype(at::kFloat));
              return x + (n * std).to(x.device(), x.scalar_type());
            }};
  }
  if (op == "add" || op == "replace") {
    std::string rest = action.substr(op.size() + 1 <= action.size() ? op.size() + 1 : action.size());
    MLXTERP_CHECK(!rest.empty(), "--intervene '", spec, "': expected ", op, ":FILE.safetensors[:TENSOR]");
    double strength = 1.0;
    at::Tensor v = load_vector(spec, rest, &strength);
    if (op == "replace") {
      MLXTERP_CHECK(strength == 1.0, "--intervene '", spec, "': replace takes no *STRENGTH");
      return {site, [v, spec](const at::Tensor& x, const SiteCall&) {
                at::Tensor r = v.dim() < x.dim() ? v.unsqueeze(0) : v;
                MLXTERP_CHECK(r.dim() == x.dim() && r.size(-1) == x.size(-1) && r.size(-2) >= x.size(-2),
                              "--intervene '", spec, "': replacement has shape ", shape_str(v.sizes()),
                              "; expected one broadcastable to the site's ", shape_str(x.sizes()));
                return r.narrow(-2, 0, x.size(-2)).expand(x.sizes()).to(x.device(), x.scalar_type()).clone();
              }};
    }
    return {site, [v, strength, spec](const at::Tensor& x, const SiteCall&) {
              MLXTERP_CHECK(v.size(-1) == x.size(-1), "--intervene '", spec, "': vector has shape ",
                            shape_str(v.sizes()), "; its last dimension must match the site's ", shape_str(x.sizes()));
              return x + (v * strength).to(x.device(), x.scalar_type());
            }};
  }
  MLXTERP_FAIL("--intervene '", spec, "': unknown action '", op,
               "'; expected zero, scale:F, clamp:LO:HI, noise:STD[:SEED], add:FILE[:TENSOR][*S] or replace:FILE[:TENSOR]");
}

}  // namespace mlxterp::cli
