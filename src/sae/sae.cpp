// SAE inference and the native directory format.
#include "mlxterp/sae.hpp"

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

SaeArch parse_sae_arch(const std::string& name) {
  if (name == "topk") return SaeArch::TopK;
  if (name == "batchtopk") return SaeArch::BatchTopK;
  if (name == "jumprelu") return SaeArch::JumpReLU;
  if (name == "relu" || name == "standard") return SaeArch::ReLU;
  MLXTERP_FAIL("sae_type must be one of \"topk\", \"batchtopk\", \"jumprelu\", \"relu\", got ", quote(name));
}

const char* sae_arch_name(SaeArch a) {
  switch (a) {
    case SaeArch::TopK: return "topk";
    case SaeArch::BatchTopK: return "batchtopk";
    case SaeArch::JumpReLU: return "jumprelu";
    case SaeArch::ReLU: return "relu";
  }
  return "?";
}

TensorMap SaeParams::named() const {
  TensorMap m;
  if (W_enc.defined()) m["W_enc"] = W_enc;
  if (b_enc.defined()) m["b_enc"] = b_enc;
  if (W_dec.defined()) m["W_dec"] = W_dec;
  if (b_dec.defined()) m["b_dec"] = b_dec;
  if (threshold.defined()) m["threshold"] = threshold;
  return m;
}

namespace {
at::Tensor clone_or(const at::Tensor& t) { return t.defined() ? t.clone() : t; }
at::Tensor to_or(const at::Tensor& t, at::Device d) { return t.defined() ? t.to(d) : t; }
}  // namespace

SaeParams SaeParams::clone() const {
  SaeParams p{clone_or(W_enc), clone_or(b_enc), clone_or(W_dec), clone_or(b_dec), clone_or(threshold)};
  if (W_dec.defined() && W_dec.is_same(W_enc)) p.W_dec = p.W_enc;
  return p;
}

SaeParams SaeParams::to(at::Device d) const {
  SaeParams p{to_or(W_enc, d), to_or(b_enc, d), to_or(W_dec, d), to_or(b_dec, d), to_or(threshold, d)};
  if (W_dec.defined() && W_dec.is_same(W_enc)) p.W_dec = p.W_enc;
  return p;
}

SAE SAE::to(at::Device d) const {
  SAE s = *this;
  s.params = params.to(d);
  s.input_mean = to_or(input_mean, d);
  s.input_std = to_or(input_std, d);
  return s;
}

at::Tensor SAE::normalize(const at::Tensor& x) const {
  return normalizes() ? (x - input_mean) / input_std : x;
}

at::Tensor SAE::denormalize(const at::Tensor& x_n) const {
  return normalizes() ? x_n * input_std + input_mean : x_n;
}

at::Tensor SAE::pre_activations(const at::Tensor& x0) const {
  at::NoGradGuard ng;
  MLXTERP_CHECK(x0.size(-1) == d_in, "SAE: input has last dimension ", x0.size(-1), "; expected d_in = ", d_in,
                " (is this SAE for another site or model?)");
  at::Tensor x = normalize(x0.to(at::kFloat)) - params.b_dec;
  return at::matmul(x, params.W_enc.t()) + params.b_enc;
}

at::Tensor SAE::encode(const at::Tensor& x) const {
  at::NoGradGuard ng;
  at::Tensor pre = pre_activations(x);
  switch (arch) {
    case SaeArch::TopK: {
      auto [vals, idx] = pre.topk(std::min(k, d_sae), -1);
      return at::zeros_like(pre).scatter(-1, idx, at::relu(vals));
    }
    case SaeArch::BatchTopK:
    case SaeArch::JumpReLU:
      MLXTERP_CHECK(params.threshold.defined(), "SAE: this ", sae_arch_name(arch),
                    " SAE has no inference threshold; expected a 'threshold' tensor (retrain, or finish training so "
                    "the threshold is calibrated)");
      return at::relu(pre) * (pre > params.threshold).to(pre.scalar_type());
    case SaeArch::ReLU:
      return at::relu(pre);
  }
  MLXTERP_ASSERT(false);
}

at::Tensor SAE::decode(const at::Tensor& z) const {
  at::NoGradGuard ng;
  MLXTERP_CHECK(z.size(-1) == d_sae, "SAE: latents have last dimension ", z.size(-1), "; expected d_sae = ", d_sae);
  return denormalize(at::matmul(z.to(at::kFloat), params.W_dec) + params.b_dec);
}

SAE SAE::folded() const {
  if (!normalizes()) return *this;
  SAE s = *this;
  at::NoGradGuard ng;
  const at::Tensor& mu = input_mean;
  const at::Tensor& sd = input_std;
  // pre = W_enc((x-μ)/σ - b_dec) + b_enc = (W_enc/σ)(x - (σ b_dec + μ)) + b_enc
  s.params.W_enc = params.W_enc / sd;
  s.params.W_dec = params.W_dec * sd;
  s.params.b_dec = params.b_dec * sd + mu;
  s.tied = false;  // the two matrices differ once σ is folded in
  s.input_mean = at::Tensor();
  s.input_std = at::Tensor();
  return s;
}

std::string SAE::describe() const {
  const char* cls = arch == SaeArch::TopK ? "TopKSAE" : arch == SaeArch::BatchTopK ? "BatchTopKSAE"
                    : arch == SaeArch::JumpReLU ? "JumpReLUSAE" : "ReLUSAE";
  std::string s = cat(cls, "(d_in=", d_in, ", d_sae=", d_sae);
  if (arch == SaeArch::TopK || arch == SaeArch::BatchTopK) s += cat(", k=", k);
  if (d_in > 0 && d_sae % d_in == 0) s += cat(", expansion=", d_sae / d_in, "x");
  return s + ")";
}

// ---- native format ----------------------------------------------------------------------------

void SAE::save(const std::string& dir) const {
  make_dirs(dir);
  TensorMap t;
  t["W_enc"] = params.W_enc;
  t["b_enc"] = params.b_enc;
  if (!tied) t["W_dec"] = params.W_dec;
  t["b_dec"] = params.b_dec;
  if (params.threshold.defined()) t["threshold"] = params.threshold;
  if (normalizes()) {
    t["input_mean"] = input_mean;
    t["input_std"] = input_std;
  }
  for (auto& [n, v] : t) v = v.detach().to(at::kCPU, at::kFloat).contiguous();
  save_safetensors(join_path(dir, "weights.safetensors"), t, {{"format", "mlxterp-sae"}});
  nlohmann::ordered_json j;
  j["format"] = "mlxterp-sae";
  j["version"] = 1;
  j["architecture"] = sae_arch_name(arch);
  j["d_in"] = d_in;
  j["d_sae"] = d_sae;
  j["k"] = k;
  j["tied_weights"] = tied;
  j["normalize_input"] = normalizes();
  j["dtype"] = "float32";
  for (auto it = metadata.begin(); it != metadata.end(); ++it)
    if (!j.contains(it.key())) j[it.key()] = it.value();
  write_file_atomic(join_path(dir, "config.json"), j.dump(2) + "\n");
}

namespace {

at::Tensor want(const SafeTensors& st, const std::string& name, std::vector<int64_t> shape) {
  MLXTERP_CHECK(st.contains(name), st.path(), ": tensor '", name, "' is missing; expected shape ", shape_str(shape),
                " (found: ", join(st.names(), ", "), ")");
  at::Tensor t = st.get(name);
  MLXTERP_CHECK(t.sizes().vec() == shape, st.path(), ": tensor '", name, "' has shape ", shape_str(t.sizes()),
                "; expected ", shape_str(shape));
  MLXTERP_CHECK(at::isFloatingType(t.scalar_type()), st.path(), ": tensor '", name, "' has dtype ",
                dtype_str(t.scalar_type()), "; expected a floating-point type");
  return t.to(at::kFloat).clone();
}

}  // namespace

SAE load_native_sae(const std::string& dir) {
  std::string cfg_path = join_path(dir, "config.json");
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    MLXTERP_FAIL(cfg_path, ": not valid JSON: ", e.what());
  }
  auto get_int = [&](const char* key) -> int64_t {
    MLXTERP_CHECK(j.contains(key) && j[key].is_number_integer(), cfg_path, ": '", key,
                  "' must be an integer; got ", j.contains(key) ? j[key].dump() : "nothing");
    return j[key].get<int64_t>();
  };
  MLXTERP_CHECK(j.value("format", "") == "mlxterp-sae", cfg_path, ": expected \"format\": \"mlxterp-sae\", got ",
                j.contains("format") ? j["format"].dump() : "no format field");
  MLXTERP_CHECK(j.value("version", 0) == 1, cfg_path, ": unsupported version ", j.value("version", 0), "; expected 1");
  SAE s;
  MLXTERP_CHECK(j.contains("architecture") && j["architecture"].is_string(), cfg_path, ": 'architecture' missing");
  try {
    s.arch = parse_sae_arch(j["architecture"].get<std::string>());
  } catch (const Error& e) {
    MLXTERP_FAIL(cfg_path, ": ", e.what());
  }
  s.d_in = get_int("d_in");
  s.d_sae = get_int("d_sae");
  s.k = get_int("k");
  MLXTERP_CHECK(s.d_in > 0 && s.d_sae > 0, cfg_path, ": d_in and d_sae must be > 0, got ", s.d_in, " and ", s.d_sae);
  s.tied = j.value("tied_weights", false);
  bool norm = j.value("normalize_input", false);
  SafeTensors st = SafeTensors::open(join_path(dir, "weights.safetensors"));
  s.params.W_enc = want(st, "W_enc", {s.d_sae, s.d_in});
  s.params.b_enc = want(st, "b_enc", {s.d_sae});
  s.params.W_dec = s.tied ? s.params.W_enc : want(st, "W_dec", {s.d_sae, s.d_in});
  s.params.b_dec = want(st, "b_dec", {s.d_in});
  if (st.contains("threshold")) s.params.threshold = want(st, "threshold", {s.d_sae});
  if (s.arch == SaeArch::JumpReLU || s.arch == SaeArch::BatchTopK)
    MLXTERP_CHECK(s.params.threshold.defined(), st.path(), ": a ", sae_arch_name(s.arch),
                  " SAE needs a 'threshold' tensor [", s.d_sae, "]; it is missing");
  if (norm) {
    s.input_mean = want(st, "input_mean", {s.d_in});
    s.input_std = want(st, "input_std", {s.d_in});
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    static const std::set<std::string> own = {"format", "version", "architecture", "d_in", "d_sae", "k",
                                              "tied_weights", "normalize_input", "dtype"};
    if (!own.count(it.key())) s.metadata[it.key()] = it.value();
  }
  return s;
}

std::string transformer_lens_hook_name(int layer, const std::string& component) {
  static const std::map<std::string, std::string> m = {
      {"", "hook_resid_post"},          {"resid_post", "hook_resid_post"},
      {"resid_pre", "hook_resid_pre"},  {"resid_mid", "hook_resid_mid"},
      {"self_attn", "hook_attn_out"},   {"attn", "hook_attn_out"},
      {"mlp", "hook_mlp_out"},          {"self_attn.z", "attn.hook_z"},
      {"mlp.hidden", "mlp.hook_post"},  {"input_layernorm", "ln1.hook_normalized"},
      {"post_attention_layernorm", "ln2.hook_normalized"}};
  auto it = m.find(component);
  if (layer < 0 || it == m.end()) return "";
  return cat("blocks.", layer, ".", it->second);
}

}  // namespace mlxterp
