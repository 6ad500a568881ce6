// SAELens and sparsify directories, both ways (sae-state-of-the-art.md §3.1, §3.2).
#include <filesystem>

#include "mlxterp/error.hpp"
#include "mlxterp/sae.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

SAE load_native_sae(const std::string& dir);  // sae.cpp

namespace {

using ojson = nlohmann::ordered_json;

ojson read_json(const std::string& path) {
  try {
    return ojson::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    MLXTERP_FAIL(path, ": not valid JSON: ", e.what());
  }
}

at::Tensor tensor_checked(const SafeTensors& st, const std::string& name, std::vector<int64_t> shape) {
  MLXTERP_CHECK(st.contains(name), st.path(), ": tensor '", name, "' is missing; expected shape ", shape_str(shape),
                " (found: ", join(st.names(), ", "), ")");
  at::Tensor t = st.get(name);
  MLXTERP_CHECK(t.sizes().vec() == shape, st.path(), ": tensor '", name, "' has shape ", shape_str(t.sizes()),
                "; expected ", shape_str(shape));
  MLXTERP_CHECK(at::isFloatingType(t.scalar_type()), st.path(), ": tensor '", name, "' has dtype ",
                dtype_str(t.scalar_type()), "; expected a floating-point type");
  return t.to(at::kFloat).clone();
}

int64_t cfg_int(const ojson& j, const char* key, const std::string& where) {
  MLXTERP_CHECK(j.contains(key) && j[key].is_number_integer(), where, ": '", key, "' must be an integer; got ",
                j.contains(key) ? j[key].dump() : "nothing");
  return j[key].get<int64_t>();
}

// "model.layers.2.mlp" -> "layers.2.mlp" (sparsify names hookpoints by module path without the root).
std::string sparsify_hookpoint(const SAE& s) {
  std::string site = s.metadata.contains("site") && s.metadata["site"].is_string() ? s.metadata["site"].get<std::string>() : "";
  if (site.empty()) return "sae";
  if (starts_with(site, "model.")) site = site.substr(6);
  return site;
}

std::string model_name(const SAE& s) {
  return s.metadata.contains("model") && s.metadata["model"].is_string() ? s.metadata["model"].get<std::string>() : "";
}

void export_saelens(const SAE& s0, const std::string& out) {
  SAE s = s0.folded();
  make_dirs(out);
  const char* arch = s.arch == SaeArch::TopK ? "topk" : s.arch == SaeArch::ReLU ? "standard" : "jumprelu";
  TensorMap t;
  t["W_enc"] = s.params.W_enc.t().contiguous();  // [d_in, d_sae]
  t["b_enc"] = s.params.b_enc;
  t["W_dec"] = s.params.W_dec;                   // [d_sae, d_in]
  t["b_dec"] = s.params.b_dec;
  if (s.arch == SaeArch::JumpReLU || s.arch == SaeArch::BatchTopK) {
    MLXTERP_CHECK(s.params.threshold.defined(), "sae export: this ", sae_arch_name(s.arch),
                  " SAE has no threshold; expected one to export it as SAELens jumprelu");
    t["threshold"] = s.params.threshold;
  }
  for (auto& [n, v] : t) v = v.detach().to(at::kCPU, at::kFloat).contiguous();
  save_safetensors(join_path(out, "sae_weights.safetensors"), t);

  int layer = s.metadata.contains("layer") && s.metadata["layer"].is_number_integer() ? s.metadata["layer"].get<int>() : -1;
  std::string component = s.metadata.contains("component") && s.metadata["component"].is_string()
                              ? s.metadata["component"].get<std::string>() : "";
  std::string hook = transformer_lens_hook_name(layer, component);
  if (hook.empty() && s.metadata.contains("site") && s.metadata["site"].is_string()) hook = s.metadata["site"].get<std::string>();
  ojson cfg;
  cfg["architecture"] = arch;
  cfg["d_in"] = s.d_in;
  cfg["d_sae"] = s.d_sae;
  cfg["dtype"] = "float32";
  cfg["device"] = "cpu";
  cfg["apply_b_dec_to_input"] = true;
  cfg["normalize_activations"] = "none";
  cfg["reshape_activations"] = "none";
  if (s.arch == SaeArch::TopK) {
    cfg["k"] = s.k;
    cfg["rescale_acts_by_decoder_norm"] = false;
  }
  ojson meta;
  meta["model_name"] = model_name(s);
  meta["hook_name"] = hook;
  meta["hook_head_index"] = nullptr;
  int64_t ctx = 0;
  if (s.metadata.contains("config") && s.metadata["config"].contains("context_size"))
    ctx = s.metadata["config"]["context_size"].get<int64_t>();
  meta["context_size"] = ctx > 0 ? ojson(ctx) : ojson(nullptr);
  meta["prepend_bos"] = true;
  meta["exclude_special_tokens"] = true;
  meta["training_architecture"] = sae_arch_name(s0.arch);
  meta["mlxterp"] = {{"architecture", sae_arch_name(s0.arch)}, {"k", s0.k}, {"layer", layer},
                     {"component", component}, {"site", s.metadata.value("site", "")},
                     {"normalization_folded", s0.normalizes()}};
  cfg["metadata"] = meta;
  write_file_atomic(join_path(out, "cfg.json"), cfg.dump(2) + "\n");
}

void export_sparsify(const SAE& s0, const std::string& out) {
  MLXTERP_CHECK(s0.arch == SaeArch::TopK, "sae export: the sparsify format holds TopK SAEs only; got sae_type \"",
                sae_arch_name(s0.arch), "\" (export it as saelens or native instead)");
  SAE s = s0.folded();
  std::string dir = join_path(out, sparsify_hookpoint(s));
  make_dirs(dir);
  TensorMap t;
  t["encoder.weight"] = s.params.W_enc;  // [d_sae, d_in]
  t["encoder.bias"] = s.params.b_enc;
  t["W_dec"] = s.params.W_dec;           // [d_sae, d_in]
  t["b_dec"] = s.params.b_dec;
  for (auto& [n, v] : t) v = v.detach().to(at::kCPU, at::kFloat).contiguous();
  save_safetensors(join_path(dir, "sae.safetensors"), t);
  ojson cfg;
  cfg["activation"] = "topk";
  cfg["expansion_factor"] = s.d_sae % s.d_in == 0 ? s.d_sae / s.d_in : 0;
  cfg["normalize_decoder"] = true;
  cfg["num_latents"] = s.d_sae;
  cfg["k"] = s.k;
  cfg["multi_topk"] = false;
  cfg["skip_connection"] = false;
  cfg["transcode"] = false;
  cfg["d_in"] = s.d_in;
  write_file_atomic(join_path(dir, "cfg.json"), cfg.dump(2) + "\n");
}

SAE import_saelens(const std::string& dir) {
  const std::string cfg_path = join_path(dir, "cfg.json");
  ojson cfg = read_json(cfg_path);
  SAE s;
  s.d_in = cfg_int(cfg, "d_in", cfg_path);
  s.d_sae = cfg_int(cfg, "d_sae", cfg_path);
  MLXTERP_CHECK(s.d_in > 0 && s.d_sae > 0, cfg_path, ": d_in and d_sae must be > 0");
  std::string arch;
  if (cfg.contains("architecture") && cfg["architecture"].is_string()) {
    arch = cfg["architecture"].get<std::string>();
  } else {  // legacy (<= v5) flat runner config
    std::string fn = cfg.value("activation_fn_str", "relu");
    arch = fn == "topk" ? "topk" : fn == "relu" ? "standard" : fn;
    if (arch == "topk" && cfg.contains("activation_fn_kwargs") && cfg["activation_fn_kwargs"].contains("k"))
      cfg["k"] = cfg["activation_fn_kwargs"]["k"];
  }
  if (arch == "topk") s.arch = SaeArch::TopK;
  else if (arch == "jumprelu") s.arch = SaeArch::JumpReLU;
  else if (arch == "standard" || arch == "relu") s.arch = SaeArch::ReLU;
  else
    MLXTERP_FAIL(cfg_path, ": architecture \"", arch,
                 "\" is not supported; expected topk, jumprelu, standard (or batchtopk exported as jumprelu)");
  if (s.arch == SaeArch::TopK) s.k = cfg_int(cfg, "k", cfg_path);
  std::string norm = cfg.value("normalize_activations", "none");
  MLXTERP_CHECK(norm == "none", cfg_path, ": normalize_activations \"", norm,
                "\" is not supported; expected \"none\" (fold the normalisation into the weights first)");
  std::string reshape = cfg.value("reshape_activations", "none");
  MLXTERP_CHECK(reshape == "none", cfg_path, ": reshape_activations \"", reshape, "\" is not supported; expected \"none\"");

  SafeTensors st = SafeTensors::open(join_path(dir, "sae_weights.safetensors"));
  s.params.W_enc = tensor_checked(st, "W_enc", {s.d_in, s.d_sae}).t().contiguous();
  s.params.b_enc = tensor_checked(st, "b_enc", {s.d_sae});
  s.params.W_dec = tensor_checked(st, "W_dec", {s.d_sae, s.d_in});
  s.params.b_dec = tensor_checked(st, "b_dec", {s.d_in});
  if (s.arch == SaeArch::JumpReLU) {
    if (st.contains("threshold")) s.params.threshold = tensor_checked(st, "threshold", {s.d_sae});
    else if (st.contains("log_threshold")) s.params.threshold = tensor_checked(st, "log_threshold", {s.d_sae}).exp();
    else MLXTERP_FAIL(st.path(), ": a jumprelu SAE needs 'threshold' (or 'log_threshold') [", s.d_sae, "]; neither is present");
  }
  // Gemma Scope style: the input is not shifted by b_dec. Fold: W(x) + b = W(x - b_dec) + (b + W b_dec).
  if (cfg.contains("apply_b_dec_to_input") && cfg["apply_b_dec_to_input"].is_boolean() &&
      !cfg["apply_b_dec_to_input"].get<bool>())
    s.params.b_enc = s.params.b_enc + at::matmul(s.params.W_enc, s.params.b_dec);
  // TopK trained with rescale_acts_by_decoder_norm: fold the decoder norms in (SAELens _fold_norm_topk).
  if (s.arch == SaeArch::TopK && cfg.value("rescale_acts_by_decoder_norm", false)) {
    at::Tensor n = s.params.W_dec.norm(2, 1).clamp_min(1e-8);  // [d_sae]
    s.params.W_enc = s.params.W_enc * n.unsqueeze(1);
    s.params.b_enc = s.params.b_enc * n;
    s.params.W_dec = s.params.W_dec / n.unsqueeze(1);
  }
  const ojson meta = cfg.contains("metadata") && cfg["metadata"].is_object() ? cfg["metadata"] : ojson::object();
  // Our own batchtopk exports come back as batchtopk (same function: ReLU(pre)·[pre > θ]).
  if (meta.contains("mlxterp") && meta["mlxterp"].value("architecture", "") == "batchtopk" && s.arch == SaeArch::JumpReLU) {
    s.arch = SaeArch::BatchTopK;
    s.k = meta["mlxterp"].value("k", int64_t(0));
  }
  s.metadata["imported_from"] = "saelens";
  if (meta.contains("model_name")) s.metadata["model"] = meta["model_name"];
  if (meta.contains("hook_name")) s.metadata["hook_name"] = meta["hook_name"];
  if (meta.contains("mlxterp")) {
    const auto& m = meta["mlxterp"];
    if (m.contains("layer") && m["layer"].get<int>() >= 0) s.metadata["layer"] = m["layer"];
    if (m.contains("component")) s.metadata["component"] = m["component"];
    if (m.contains("site") && !m["site"].get<std::string>().empty()) s.metadata["site"] = m["site"];
  }
  return s;
}

bool is_sparsify_dir(const std::string& d) {
  return file_exists(join_path(d, "cfg.json")) && file_exists(join_path(d, "sae.safetensors"));
}

SAE import_sparsify(const std::string& path) {
  std::string dir = path;
  if (!is_sparsify_dir(dir)) {  // a run directory: one hookpoint folder inside
    std::vector<std::string> hooks;
    for (const auto& e : std::filesystem::directory_iterator(path))
      if (e.is_directory() && is_sparsify_dir(e.path().string())) hooks.push_back(e.path().string());
    MLXTERP_CHECK(hooks.size() == 1, path, ": expected a sparsify SAE directory (cfg.json + sae.safetensors) or a run ",
                  "directory with exactly one hookpoint folder; found ", hooks.size(),
                  hooks.size() > 1 ? " (pass the hookpoint folder, e.g. " + hooks[0] + ")" : std::string());
    dir = hooks[0];
  }
  const std::string cfg_path = join_path(dir, "cfg.json");
  ojson cfg = read_json(cfg_path);
  std::string act = cfg.value("activation", "topk");
  MLXTERP_CHECK(act == "topk", cfg_path, ": activation \"", act, "\" is not supported; expected \"topk\"");
  MLXTERP_CHECK(!cfg.value("transcode", false), cfg_path, ": transcoders are not supported (transcode = true)");
  MLXTERP_CHECK(!cfg.value("skip_connection", false), cfg_path, ": skip connections (W_skip) are not supported");
  SAE s;
  s.arch = SaeArch::TopK;
  s.d_in = cfg_int(cfg, "d_in", cfg_path);
  s.k = cfg_int(cfg, "k", cfg_path);
  int64_t n = cfg.value("num_latents", int64_t(0));
  s.d_sae = n > 0 ? n : s.d_in * cfg.value("expansion_factor", int64_t(32));
  MLXTERP_CHECK(s.d_in > 0 && s.d_sae > 0 && s.k > 0, cfg_path, ": d_in, num_latents/expansion_factor and k must be > 0");
  SafeTensors st = SafeTensors::open(join_path(dir, "sae.safetensors"));
  MLXTERP_CHECK(st.contains("W_dec"), st.path(), ": 'W_dec' is missing (an encoder-only save); expected [", s.d_sae,
                ", ", s.d_in, "]");
  s.params.W_enc = tensor_checked(st, "encoder.weight", {s.d_sae, s.d_in});
  s.params.b_enc = tensor_checked(st, "encoder.bias", {s.d_sae});
  s.params.W_dec = tensor_checked(st, "W_dec", {s.d_sae, s.d_in});
  s.params.b_dec = tensor_checked(st, "b_dec", {s.d_in});
  s.metadata["imported_from"] = "sparsify";
  s.metadata["hookpoint"] = basename(dir);
  return s;
}

std::string detect_format(const std::string& path) {
  MLXTERP_CHECK(is_directory(path), "SAE directory not found: ", path);
  if (file_exists(join_path(path, "config.json")) && file_exists(join_path(path, "weights.safetensors"))) return "native";
  if (file_exists(join_path(path, "cfg.json")) && file_exists(join_path(path, "sae_weights.safetensors"))) return "saelens";
  if (is_sparsify_dir(path)) return "sparsify";
  for (const auto& e : std::filesystem::directory_iterator(path))
    if (e.is_directory() && is_sparsify_dir(e.path().string())) return "sparsify";
  MLXTERP_FAIL(path, ": not an SAE directory; expected config.json + weights.safetensors (native), cfg.json + ",
               "sae_weights.safetensors (SAELens) or cfg.json + sae.safetensors (sparsify)");
}

}  // namespace

SAE import_sae(const std::string& path, const std::string& format) {
  std::string f = format == "auto" ? detect_format(path) : format;
  MLXTERP_CHECK(is_directory(path), "SAE directory not found: ", path);
  if (f == "native") return load_native_sae(path);
  if (f == "saelens") return import_saelens(path);
  if (f == "sparsify") return import_sparsify(path);
  MLXTERP_FAIL("--format: expected native, saelens, sparsify or auto, got ", quote(format));
}

SAE SAE::load(const std::string& path) { return import_sae(path, "auto"); }

void export_sae(const SAE& sae, const std::string& format, const std::string& out) {
  if (format == "native") return sae.save(out);
  if (format == "saelens") return export_saelens(sae, out);
  if (format == "sparsify") return export_sparsify(sae, out);
  MLXTERP_FAIL("--format: expected native, saelens or sparsify, got ", quote(format));
}

}  // namespace mlxterp
