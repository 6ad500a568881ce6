// Model base, site table (names + aliases), hooks, and the architecture registry.
#include <regex>

#include "mlxterp/error.hpp"
#include "mlxterp/model.hpp"

namespace mlxterp {

// ---- SiteTable ------------------------------------------------------------------------------------

int SiteTable::add(std::string name, int layer, std::string component, bool on_request) {
  MLXTERP_ASSERT(!index_.count(name));
  int id = int(sites_.size());
  index_[name] = id;
  sites_.push_back({std::move(name), layer, std::move(component), on_request});
  n_layers_ = std::max(n_layers_, layer + 1);
  return id;
}

void SiteTable::add_alias(std::string alias, int id) {
  MLXTERP_ASSERT(id >= 0 && id < int(sites_.size()));
  index_.emplace(std::move(alias), id);  // first definition wins
}

void SiteTable::add_standard_aliases(int n_layers) {
  // TransformerLens names -> our components.
  static const std::pair<const char*, const char*> tl[] = {
      {"hook_resid_pre", "resid_pre"},
      {"hook_resid_mid", "resid_mid"},
      {"hook_resid_post", ""},
      {"hook_attn_out", "self_attn"},
      {"hook_mlp_out", "mlp"},
      {"attn.hook_pattern", "self_attn.attention_weights"},
      {"attn.hook_z", "self_attn.z"},
      {"attn.hook_q", "self_attn.q_proj"},
      {"attn.hook_k", "self_attn.k_proj"},
      {"attn.hook_v", "self_attn.v_proj"},
      {"mlp.hook_pre", "mlp.gate_proj"},
      {"mlp.hook_pre_linear", "mlp.up_proj"},
      {"mlp.hook_post", "mlp.hidden"},
      {"ln1.hook_normalized", "input_layernorm"},
      {"ln2.hook_normalized", "post_attention_layernorm"},
  };
  std::vector<std::pair<std::string, int>> extra;
  for (int id = 0; id < int(sites_.size()); ++id) {
    const SiteInfo& s = sites_[id];
    // "model.x" -> "x" and "model.model.x" (mlx-lm style).
    if (starts_with(s.name, "model.")) {
      extra.emplace_back(s.name.substr(6), id);
      extra.emplace_back("model." + s.name, id);
    } else {
      extra.emplace_back("model." + s.name, id);
    }
    if (s.layer >= 0) {
      std::string block = "model.layers." + std::to_string(s.layer);
      if (s.component.empty()) extra.emplace_back(block + ".resid_post", id);
      if (starts_with(s.component, "self_attn")) {
        std::string alt = block + ".attn" + s.component.substr(9);
        extra.emplace_back(alt, id);
      }
      for (const auto& [tl_name, comp] : tl) {
        if (s.component == comp) extra.emplace_back("blocks." + std::to_string(s.layer) + "." + tl_name, id);
      }
    }
    if (s.name == "model.embed_tokens") extra.emplace_back("hook_embed", id);
    if (s.name == "model.norm") extra.emplace_back("ln_final.hook_normalized", id);
    if (s.name == "lm_head") {
      extra.emplace_back("logits", id);
      extra.emplace_back("__model_output__", id);
      extra.emplace_back("unembed", id);
    }
  }
  // The short and doubled forms of every alias made so far ("layers.3.attn", "model.model.layers.3.attn").
  size_t n = extra.size();
  for (size_t i = 0; i < n; ++i) {
    const auto& [a, id] = extra[i];
    if (starts_with(a, "model.layers.")) {
      extra.emplace_back(a.substr(6), id);
      extra.emplace_back("model." + a, id);
    }
  }
  for (auto& [a, id] : extra) add_alias(a, id);
  (void)n_layers;
}

std::vector<std::string> SiteTable::aliases(int id) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : index_)
    if (v == id && k != sites_[id].name) out.push_back(k);
  std::sort(out.begin(), out.end());
  return out;
}

int SiteTable::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? -1 : it->second;
}

int SiteTable::resolve(std::string_view name) const {
  int id = find(name);
  if (id >= 0) return id;
  std::string n(name);
  // A layer index out of range gets its own message.
  static const std::regex layer_re(R"((?:^|\.)(?:layers|blocks|h)\.(\d+)(?:\.|$))");
  std::smatch m;
  if (std::regex_search(n, m, layer_re)) {
    long layer = std::stol(m[1].str());
    if (layer >= n_layers_)
      MLXTERP_FAIL("unknown site '", n, "': the model has ", n_layers_, " layers (model.layers.0 .. model.layers.",
                   n_layers_ - 1, ")");
  }
  // Compare against aliases too (a typo in a TransformerLens or native name), reporting canonical names.
  std::vector<std::string> all;
  all.reserve(index_.size());
  for (const auto& [k, id] : index_) all.push_back(k);
  std::sort(all.begin(), all.end());
  std::vector<std::string> near;
  for (const auto& c : close_matches(n, all, 20)) {
    const std::string& canon = sites_[index_.at(c)].name;
    if (std::find(near.begin(), near.end(), canon) == near.end()) near.push_back(canon);
    if (near.size() == 5) break;
  }
  std::string hint;
  if (!near.empty()) hint = " (did you mean '" + join(near, "', '") + "'?)";
  MLXTERP_FAIL("unknown site '", n, "'", hint, "; run `mlxterp components --model MODEL` to list every site");
}

int SiteTable::resolve_component(int layer, std::string_view component) const {
  std::string comp(component);
  if (layer >= 0 && layer < n_layers_) {
    int id = find("model.layers." + std::to_string(layer) + (comp.empty() ? "" : "." + comp));
    if (id >= 0) return id;
  }
  std::vector<std::string> comps;
  for (const auto& s : sites_)
    if (s.layer == std::max(0, std::min(layer, n_layers_ - 1)) && !s.component.empty()) comps.push_back(s.component);
  comps.push_back("resid_post");
  std::string msg = cat("Could not find activations for layer ", layer, ", component '", comp, "'");
  if (layer < 0 || layer >= n_layers_) msg += cat(": the model has ", n_layers_, " layers (0 .. ", n_layers_ - 1, ")");
  auto near = close_matches(comp, comps);
  if (!near.empty()) msg += " (did you mean '" + join(near, "', '") + "'?)";
  msg += cat("; run `mlxterp components --model MODEL --layer ", std::max(0, std::min(layer, n_layers_ - 1)),
             "` to list the available components");
  throw Error(msg);
}

// ---- Hooks ----------------------------------------------------------------------------------------

Hooks::Hooks(const SiteTable& sites) : sites_(&sites), wanted_(sites.size(), 0), capture_(sites.size(), 0) {}

void Hooks::capture(int site) {
  MLXTERP_ASSERT(sites_ && site >= 0 && site < int(wanted_.size()));
  capture_[site] = 1;
  wanted_[site] = 1;
}

void Hooks::capture_all(bool include_on_request) {
  MLXTERP_ASSERT(sites_);
  for (int i = 0; i < int(wanted_.size()); ++i)
    if (include_on_request || !(*sites_)[i].on_request) capture(i);
}

void Hooks::intervene(int site, InterventionFn fn) {
  MLXTERP_ASSERT(sites_ && site >= 0 && site < int(wanted_.size()));
  interventions_[site].push_back(std::move(fn));
  wanted_[site] = 1;
}

void Hooks::stop_after_last_needed() {
  int last = -1;
  for (int i = 0; i < int(wanted_.size()); ++i)
    if (wanted_[i]) last = i;
  stop_after_ = last;
}

at::Tensor Hooks::apply(int site, at::Tensor x) {
  auto it = interventions_.find(site);
  if (it != interventions_.end()) {
    SiteCall call{site, &(*sites_)[site], pos_offset_};
    for (const auto& fn : it->second) {
      at::Tensor y = fn(x, call);
      MLXTERP_CHECK(y.defined() && y.sizes() == x.sizes(), "intervention on '", (*sites_)[site].name,
                    "' must return a tensor of shape ", shape_str(x.sizes()), ", got ",
                    y.defined() ? shape_str(y.sizes()) : std::string("an undefined tensor"));
      x = y.to(x.scalar_type());
    }
  }
  if (capture_[site]) {
    at::Tensor c = keep_graph_ ? x : x.detach();
    auto prev = captured_.find(site);
    if (prev != captured_.end() && prev->second.defined() && prev->second.dim() >= 2 && c.dim() >= 2 &&
        prev->second.size(0) == c.size(0) && !keep_graph_ && (*sites_)[site].name.find("attention_weights") == std::string::npos) {
      // A second call in the same trace (KV-cached generation): append along the sequence axis.
      prev->second = at::cat({prev->second, c}, 1);
    } else {
      captured_[site] = c;
    }
  }
  return x;
}

bool Hooks::has(int site) const { return captured_.count(site) != 0; }

at::Tensor Hooks::captured(int site) const {
  auto it = captured_.find(site);
  MLXTERP_CHECK(it != captured_.end(), "site '", sites_ ? (*sites_)[site].name : std::to_string(site),
                "' was not captured in this forward pass (was it requested? did the pass stop before it?)");
  return it->second;
}

// ---- Model ----------------------------------------------------------------------------------------

Model::Model(ModelConfig config, TensorMap weights) : config_(std::move(config)), weights_(std::move(weights)) {
  if (!weights_.empty()) {
    const at::Tensor& any = weights_.begin()->second;
    device_ = any.device();
    dtype_ = any.scalar_type();
  }
}

void Model::to(at::Device device, at::ScalarType dtype) {
  for (auto& [name, t] : weights_) {
    // Weights already in place stay zero-copy views of the (read-only) mmap: never edit them in place.
    t = t.to(device, dtype);
  }
  device_ = device;
  dtype_ = dtype;
  bind();
}

const at::Tensor& Model::w(const std::string& name) const {
  auto it = weights_.find(name);
  MLXTERP_CHECK(it != weights_.end(), "model: missing weight '", name, "'");
  return it->second;
}

size_t Model::n_params() const {
  size_t n = 0;
  for (const auto& [k, t] : weights_) n += t.numel();
  return n;
}

// ---- registry -------------------------------------------------------------------------------------

static std::map<std::string, ModelFactory>& arch_registry() {
  static std::map<std::string, ModelFactory> r;
  return r;
}

bool register_architecture(const std::string& arch, ModelFactory factory) {
  arch_registry()[arch] = std::move(factory);
  return true;
}

std::vector<std::string> registered_architectures() {
  std::vector<std::string> out;
  for (const auto& [k, v] : arch_registry()) out.push_back(k);
  return out;
}

std::unique_ptr<Model> create_model(const ModelConfig& config, TensorMap weights) {
  auto it = arch_registry().find(config.arch);
  MLXTERP_CHECK(it != arch_registry().end(), "model: unsupported architecture '", config.arch, "'; supported: ",
                join(registered_architectures(), ", "));
  // Buffers some checkpoints carry that hold no information.
  for (auto w = weights.begin(); w != weights.end();) {
    const std::string& n = w->first;
    if (ends_with(n, "rotary_emb.inv_freq") || ends_with(n, ".attn.bias") || ends_with(n, ".attn.masked_bias"))
      w = weights.erase(w);
    else
      ++w;
  }
  // Every layer has weights: a layer count above the number of tensors cannot match (and must not build
  // millions of sites before the shape check below says so).
  MLXTERP_CHECK(config.n_layers <= int64_t(weights.size()), "model: the config has ", config.n_layers,
                " layers but the checkpoint only ", weights.size(), " tensors; expected at least one tensor per layer "
                "(a config that disagrees with the weights?)");
  // Check the weights against what the architecture needs before anything runs: the weights as the model
  // holds them, after any load-time conversion (gpt-oss's MXFP4 experts become dense ones).
  std::unique_ptr<Model> model = it->second(config, std::move(weights));
  std::map<std::string, std::vector<int64_t>> have;
  for (const auto& [k, t] : model->weights()) have[k] = t.sizes().vec();
  auto expected = model->expected_weights();
  for (const auto& [name, shape] : expected) {
    auto h = have.find(name);
    MLXTERP_CHECK(h != have.end(), "model: missing weight '", name, "' (shape ", shape_str(shape), ") for ",
                  config.arch, " with ", config.n_layers, " layers (incomplete or mismatched checkpoint?)");
    MLXTERP_CHECK(h->second == shape, "model: weight '", name, "' has shape ", shape_str(h->second),
                  "; the config implies ", shape_str(shape), " (d_model=", config.d_model, ", n_heads=", config.n_heads,
                  ", n_kv_heads=", config.n_kv_heads, ", d_head=", config.d_head, ", d_mlp=", config.d_mlp,
                  ", d_vocab=", config.d_vocab, "). Is config.json from another checkpoint?");
  }
  for (const auto& [name, shape] : have) {
    MLXTERP_CHECK(expected.count(name), "model: unexpected weight '", name, "' (shape ", shape_str(shape),
                  ") not used by ", config.arch, " with this config (a config that disagrees with the weights?)");
  }
  return model;
}

}  // namespace mlxterp
