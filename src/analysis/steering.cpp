// Steering vectors: contrastive mean difference and sign-calibrated PCA (analysis_steering.hpp).
#include "mlxterp/analysis_steering.hpp"

#include "mlxterp/error.hpp"
#include "mlxterp/interventions.hpp"
#include "mlxterp/io.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

SteerMethod parse_steer_method(std::string_view s) {
  if (s == "mean" || s == "mean-diff") return SteerMethod::MeanDiff;
  if (s == "pca-diff") return SteerMethod::PcaDiff;
  if (s == "pca-center" || s == "pca") return SteerMethod::PcaCenter;
  MLXTERP_FAIL("steering method '", s, "' is unknown; expected mean | pca-diff | pca-center");
}

std::string steer_method_name(SteerMethod m) {
  switch (m) {
    case SteerMethod::MeanDiff: return "mean";
    case SteerMethod::PcaDiff: return "pca-diff";
    case SteerMethod::PcaCenter: return "pca-center";
  }
  return "?";
}

std::string SteeringVectors::site(int layer) const {
  return component == "resid_post" || component.empty() ? "model.layers." + std::to_string(layer)
                                                        : "model.layers." + std::to_string(layer) + "." + component;
}

const at::Tensor& SteeringVectors::vector(int layer) const {
  for (size_t i = 0; i < layers.size(); ++i)
    if (layers[i] == layer) return vectors[i];
  MLXTERP_FAIL("steering vectors: no vector for layer ", layer, " (have ", layers.size(), " layers)");
}

nlohmann::json SteeringVectors::to_json() const {
  nlohmann::ordered_json j;
  j["method"] = method;
  j["component"] = component;
  nlohmann::json per = nlohmann::json::array();
  for (size_t i = 0; i < layers.size(); ++i) {
    per.push_back({{"layer", layers[i]},
                   {"site", site(layers[i])},
                   {"norm", vectors[i].norm().item<double>()},
                   {"pos_projection", i < pos_projection.size() ? pos_projection[i] : 0.0},
                   {"neg_projection", i < neg_projection.size() ? neg_projection[i] : 0.0},
                   {"separation", i < separation.size() ? separation[i] : 0.0}});
  }
  j["layers"] = per;
  return j;
}

namespace {

// One row per prompt: the site's activation at the last real token, or the mean over real tokens.
std::map<int, at::Tensor> prompt_activations(const InterpretableModel& m, const std::vector<Prompt>& prompts,
                                             const std::vector<int>& sites, Reduce reduce, int batch_size) {
  std::map<int, std::vector<at::Tensor>> parts;
  const SiteTable& S = m.sites();
  for (size_t b0 = 0; b0 < prompts.size(); b0 += size_t(batch_size)) {
    size_t b1 = std::min(prompts.size(), b0 + size_t(batch_size));
    std::vector<std::vector<int32_t>> ids;
    int64_t T = 0;
    for (size_t i = b0; i < b1; ++i) {
      ids.push_back(prompt_ids(m, prompts[i]));
      T = std::max<int64_t>(T, int64_t(ids.back().size()));
    }
    const int64_t B = int64_t(ids.size());
    at::Tensor tok = at::zeros({B, T}, at::kLong), mask = at::zeros({B, T}, at::kLong);
    bool padded = false;
    for (int64_t r = 0; r < B; ++r) {
      for (size_t c = 0; c < ids[size_t(r)].size(); ++c) tok[r][int64_t(c)] = ids[size_t(r)][c];
      mask[r].narrow(0, 0, int64_t(ids[size_t(r)].size())).fill_(1);
      padded |= int64_t(ids[size_t(r)].size()) != T;
    }
    TraceOptions o;
    for (int s : sites) o.sites.push_back(S[s].name);
    o.need_logits = false;
    TraceResult tr = m.trace_ids(tok, padded ? mask : at::Tensor(), o);
    at::Tensor maskf = mask.to(at::kFloat).unsqueeze(-1);  // [B, T, 1]
    at::Tensor last = (mask.sum(1) - 1);                    // [B]
    for (int s : sites) {
      at::Tensor a = tr.get(S[s].name).to(at::kCPU, at::kFloat);  // [B, T, d]
      at::Tensor row;
      if (reduce == Reduce::Last) {
        row = a.gather(1, last.view({B, 1, 1}).expand({B, 1, a.size(2)})).squeeze(1);
      } else {
        row = (a * maskf).sum(1) / maskf.sum(1);
      }
      parts[s].push_back(row);
    }
  }
  std::map<int, at::Tensor> out;
  for (auto& [s, v] : parts) out[s] = at::cat(v, 0);  // [n_prompts, d]
  return out;
}

}  // namespace

SteeringVectors compute_steering_vectors(const InterpretableModel& m, const std::vector<Prompt>& positive,
                                         const std::vector<Prompt>& negative, const SteeringOptions& o) {
  MLXTERP_CHECK(!positive.empty() && !negative.empty(), "steering: need at least one positive and one negative prompt; got ",
                positive.size(), " positive and ", negative.size(), " negative");
  const bool pca = o.method != SteerMethod::MeanDiff;
  MLXTERP_CHECK(!pca || positive.size() == negative.size(), "steering: the PCA methods pair prompts line by line; expected "
                "as many negative as positive prompts, got ", positive.size(), " positive and ", negative.size(), " negative");
  MLXTERP_CHECK(!pca || positive.size() >= 2, "steering: the PCA methods need at least 2 prompt pairs, got ",
                positive.size());
  MLXTERP_CHECK(o.batch_size > 0, "steering: batch_size must be > 0, got ", o.batch_size);
  SteeringVectors sv;
  sv.layers = resolve_layers(o.layers, m.n_layers(), "steering");
  sv.component = o.component.empty() ? "resid_post" : o.component;
  sv.method = steer_method_name(o.method);
  std::vector<int> sites;
  for (int l : sv.layers) sites.push_back(m.sites().resolve_component(l, sv.component));
  auto P = prompt_activations(m, positive, sites, o.reduce, o.batch_size);
  auto N = prompt_activations(m, negative, sites, o.reduce, o.batch_size);
  for (size_t li = 0; li < sites.size(); ++li) {
    at::Tensor pos = P[sites[li]].to(at::kDouble), neg = N[sites[li]].to(at::kDouble);  // [n, d]
    at::Tensor v;
    if (o.method == SteerMethod::MeanDiff) {
      v = pos.mean(0) - neg.mean(0);
    } else {
      at::Tensor diff = pos - neg;  // [n, d]
      at::Tensor data;
      if (o.method == SteerMethod::PcaDiff) {
        data = diff;
      } else {
        at::Tensor center = (pos + neg) / 2;
        data = at::cat({pos - center, neg - center}, 0);
      }
      at::Tensor u = std::get<2>(at::linalg_svd(data, /*full_matrices=*/false))[0];  // [d], unit norm
      double gap = (diff.matmul(u)).mean().item<double>();
      // Sign: positives above negatives; scale: the mean pair gap along u.
      v = u * gap;
    }
    double norm = v.norm().item<double>();
    at::Tensor unit = norm > 0 ? v / norm : v;
    at::Tensor pp = pos.matmul(unit), np = neg.matmul(unit);
    double sep;
    if (pca) {
      sep = (pp > np).to(at::kDouble).mean().item<double>();
    } else {
      sep = (pp.unsqueeze(1) > np.unsqueeze(0)).to(at::kDouble).mean().item<double>();
    }
    sv.vectors.push_back(v.to(at::kFloat).contiguous());
    sv.pos_projection.push_back(pp.mean().item<double>());
    sv.neg_projection.push_back(np.mean().item<double>());
    sv.separation.push_back(sep);
  }
  return sv;
}

std::vector<std::pair<std::string, InterventionFn>> steering_interventions(const SteeringVectors& sv, double strength) {
  std::vector<std::pair<std::string, InterventionFn>> out;
  for (size_t i = 0; i < sv.layers.size(); ++i) out.emplace_back(sv.site(sv.layers[i]), iv::add_vector(sv.vectors[i] * strength));
  return out;
}

void save_steering_vectors(const std::string& path, const SteeringVectors& sv) {
  TensorMap t;
  std::vector<std::string> ls;
  for (size_t i = 0; i < sv.layers.size(); ++i) {
    t[sv.site(sv.layers[i])] = sv.vectors[i].to(at::kFloat).contiguous();
    ls.push_back(std::to_string(sv.layers[i]));
  }
  save_safetensors(path, t,
                   {{"mlxterp.kind", "steering_vectors"}, {"method", sv.method}, {"component", sv.component},
                    {"layers", join(ls, ",")}, {"diagnostics", sv.to_json().dump()}});
}

SteeringVectors load_steering_vectors(const std::string& path) {
  SafeTensors st = SafeTensors::open(path);
  SteeringVectors sv;
  auto md = st.metadata();
  sv.method = md.count("method") ? md["method"] : "unknown";
  sv.component = md.count("component") ? md["component"] : "resid_post";
  MLXTERP_CHECK(md.count("layers"), path, ": not a steering-vector file (no 'layers' metadata); expected what "
                "`mlxterp steer compute` writes");
  for (const auto& s : split(md["layers"], ',')) {
    if (trim(s).empty()) continue;
    int l = int(parse_int(trim(s), path + ": layers metadata"));
    sv.layers.push_back(l);
    std::string name = sv.site(l);
    MLXTERP_CHECK(st.contains(name), path, ": missing tensor '", name, "' for layer ", l);
    sv.vectors.push_back(st.get(name).to(at::kFloat).clone());
  }
  return sv;
}

// ---- control vectors ------------------------------------------------------------------------------

int64_t ControlVector::n_embd() const { return directions.empty() ? 0 : directions.begin()->second.size(0); }

void save_control_vector(const std::string& path, const ControlVector& cv) {
  MLXTERP_CHECK(!cv.directions.empty(), path, ": a control vector needs at least one direction");
  TensorMap t;
  int max_n = 0;
  for (const auto& [n, d] : cv.directions) {
    MLXTERP_CHECK(n >= 1, path, ": direction.", n, " cannot be written; llama.cpp numbers directions from 1 "
                  "(block 0's output is never steered)");
    MLXTERP_CHECK(d.dim() == 1 && d.size(0) == cv.n_embd(), path, ": direction.", n, " has shape ", shape_str(d.sizes()),
                  "; expected [", cv.n_embd(), "]");
    t["direction." + std::to_string(n)] = d.to(at::kCPU, at::kFloat).contiguous();
    max_n = std::max(max_n, n);
  }
  std::map<std::string, GGUFValue> md;
  md["general.architecture"] = GGUFValue{std::string("controlvector"), 8};
  md["controlvector.model_hint"] = GGUFValue{cv.model_hint, 8};
  md["controlvector.layer_count"] = GGUFValue{int64_t(cv.layer_count ? cv.layer_count : max_n), 5};  // int32
  save_gguf(path, md, t);
}

ControlVector load_control_vector(const std::string& path) {
  GGUFFile g = GGUFFile::open(path);
  ControlVector cv;
  MLXTERP_CHECK(g.has("general.architecture") && g.get_string("general.architecture") == "controlvector", path,
                ": not a control vector; expected general.architecture = \"controlvector\", got ",
                g.has("general.architecture") ? quote(g.get_string("general.architecture")) : std::string("none"));
  cv.model_hint = g.has("controlvector.model_hint") ? g.get_string("controlvector.model_hint") : "";
  cv.layer_count = g.get_int("controlvector.layer_count", 0);
  for (const auto& info : g.tensor_infos()) {
    const std::string& name = info.name;
    MLXTERP_CHECK(starts_with(name, "direction."), path, ": tensor '", name, "' is not a direction; expected direction.N");
    int64_t n = -1;
    try {
      n = parse_int(name.substr(10), "direction index");
    } catch (const Error&) {
      MLXTERP_FAIL(path, ": invalid/unparsable direction tensor layer index in '", name, "'");
    }
    MLXTERP_CHECK(n != 0, path, ": invalid (zero) direction tensor layer index (direction.0); llama.cpp numbers from 1");
    MLXTERP_CHECK(n > 0, path, ": negative direction tensor layer index in '", name, "'");
    MLXTERP_CHECK(info.type == GGMLType::F32, path, ": ", name, " is ", ggml_type_name(info.type),
                  "; expected F32 (llama.cpp's loader rejects other types)");
    MLXTERP_CHECK(info.shape.size() == 1, path, ": ", name, " has shape ", shape_str(info.shape), "; expected 1-D [n_embd]");
    at::Tensor d = g.tensor(name).to(at::kFloat).clone();
    MLXTERP_CHECK(cv.directions.empty() || d.size(0) == cv.n_embd(), path, ": ", name, " has ", d.size(0),
                  " elements; the other directions have ", cv.n_embd());
    auto it = cv.directions.find(int(n));
    if (it == cv.directions.end()) cv.directions[int(n)] = d;
    else it->second = it->second + d;  // several tensors for one layer add up, as in llama.cpp
  }
  MLXTERP_CHECK(!cv.directions.empty(), path, ": the control vector has no direction.N tensors");
  return cv;
}

ControlVector to_control_vector(const SteeringVectors& sv, const std::string& model_hint, int64_t n_layers) {
  MLXTERP_CHECK(sv.component == "resid_post", "control vector: llama.cpp adds directions to block outputs (resid_post); "
                "these steering vectors are for '", sv.component, "'");
  ControlVector cv;
  cv.model_hint = model_hint;
  cv.layer_count = n_layers - 1;
  for (size_t i = 0; i < sv.layers.size(); ++i) {
    MLXTERP_CHECK(sv.layers[i] >= 1, "control vector: layer 0's output cannot be steered by llama.cpp (there is no "
                  "direction.0); compute the vectors for layers >= 1");
    cv.directions[sv.layers[i]] = sv.vectors[i].to(at::kFloat).contiguous();
  }
  return cv;
}

std::vector<std::pair<std::string, InterventionFn>> control_vector_interventions(const ControlVector& cv, const Model& model,
                                                                                 double strength, int layer_start,
                                                                                 int layer_end) {
  const int64_t n_layers = model.config().n_layers, d = model.config().d_model;
  MLXTERP_CHECK(cv.n_embd() == d, "control vector: directions have ", cv.n_embd(), " elements; the model's d_model is ", d,
                " (a control vector for another model?)");
  std::vector<std::pair<std::string, InterventionFn>> out;
  for (const auto& [n, dir] : cv.directions) {
    if (layer_start >= 0 && n < layer_start) continue;
    if (layer_end >= 0 && n > layer_end) continue;
    // llama.cpp only has tensors for blocks 1 .. n_layers-1; a larger N is ignored there too.
    if (n >= n_layers) continue;
    out.emplace_back("model.layers." + std::to_string(n), iv::add_vector(dir * strength));
  }
  return out;
}

}  // namespace mlxterp
