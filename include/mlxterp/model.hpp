// mlxterp/model.hpp — transformer models with named sites (hook points) on every module output.
//
//   auto loaded = mlxterp::load_model("stories260K.gguf", {.device = at::kCPU, .dtype = at::kFloat});
//   mlxterp::Model& m = *loaded.model;
//   at::Tensor ids = at::tensor({1, 403, 407}, at::kLong).view({1, 3});     // [batch, seq]
//   mlxterp::Hooks hooks(m.sites());
//   hooks.capture(m.sites().resolve("model.layers.2.mlp"));
//   at::Tensor logits = m.forward(ids, {}, hooks);                           // [batch, seq, d_vocab]
//   at::Tensor mlp2 = hooks.captured(m.sites().resolve("model.layers.2.mlp"));   // [batch, seq, d_model]
//
// Most users want InterpretableModel (trace.hpp), which wraps this with a tokenizer and name handling.
//
// Site naming contract (DESIGN.md §4). Primary names are Hugging Face module paths:
//   model.embed_tokens                                   [b, t, d_model]
//   model.layers.{i}.resid_pre                           [b, t, d_model]  block input (= previous block output)
//   model.layers.{i}.input_layernorm                     [b, t, d_model]
//   model.layers.{i}.self_attn.{q,k,v}_proj              [b, t, n_heads*d_head] / [b, t, n_kv_heads*d_head]
//   model.layers.{i}.self_attn.{q,k}_norm                [b, t, n(_kv)_heads, d_head]   (q/k-norm models)
//   model.layers.{i}.self_attn.attention_weights         [b, n_heads, t, t_total]  (only when requested)
//   model.layers.{i}.self_attn.z                         [b, t, n_heads*d_head]  per-head outputs = o_proj input
//   model.layers.{i}.self_attn.o_proj                    [b, t, d_model]
//   model.layers.{i}.self_attn                           [b, t, d_model]  attention block output
//   model.layers.{i}.resid_mid                           [b, t, d_model]  after the attention residual add
//   model.layers.{i}.post_attention_layernorm            [b, t, d_model]
//   model.layers.{i}.mlp.{gate,up}_proj                  [b, t, d_mlp]
//   model.layers.{i}.mlp.hidden                          [b, t, d_mlp]   down_proj input (act(gate) * up)
//   model.layers.{i}.mlp.down_proj                       [b, t, d_model]
//   model.layers.{i}.mlp                                 [b, t, d_model]  MLP output
//   model.layers.{i}                                     [b, t, d_model]  block output (residual stream)
//   model.norm                                           [b, t, d_model]
//   lm_head                                              [b, t, d_vocab]  logits
// Aliases: an extra or missing "model." prefix, `.attn` for `.self_attn`, `.resid_post` for the block,
// `logits` / `__model_output__` for lm_head, and TransformerLens names (`blocks.{i}.hook_resid_pre`,
// `hook_resid_mid`, `hook_resid_post`, `hook_attn_out`, `hook_mlp_out`, `attn.hook_pattern`,
// `attn.hook_z`, `attn.hook_q/k/v`, `mlp.hook_post`, `ln1.hook_normalized`, `hook_embed`, ...).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "mlxterp/config.hpp"
#include "mlxterp/io.hpp"

namespace mlxterp {

// ---- sites --------------------------------------------------------------------------------------

struct SiteInfo {
  std::string name;       // canonical name
  int layer = -1;         // block index, -1 for embedding / final norm / lm_head
  std::string component;  // name relative to the block ("mlp", "self_attn.q_proj"); "" for the block
  bool on_request = false;  // computed only when someone asks (attention weights)
};

// All sites of one model, in execution order (a site's id is its position in the forward pass).
class SiteTable {
 public:
  int add(std::string name, int layer, std::string component, bool on_request = false);
  void add_alias(std::string alias, int id);
  // Adds the generic aliases (prefix variants, `attn`, `resid_post`, TransformerLens names) for
  // every site added so far. Architectures call this once after adding their sites and own aliases.
  void add_standard_aliases(int n_layers);

  size_t size() const { return sites_.size(); }
  const SiteInfo& operator[](int id) const { return sites_.at(id); }
  const std::vector<SiteInfo>& all() const { return sites_; }
  // -1 if `name` is neither a canonical name nor an alias.
  int find(std::string_view name) const;
  // Every other accepted name of a site (sorted).
  std::vector<std::string> aliases(int id) const;
  // Like find, but throws mlxterp::Error listing close matches:
  //   "unknown site 'model.layers.40.mlp': the model has 32 layers (model.layers.0 .. model.layers.31)"
  //   "unknown site 'model.layers.2.mlpp' (did you mean 'model.layers.2.mlp'? run `mlxterp components ...`)"
  int resolve(std::string_view name) const;
  // The site for block `layer`'s component (a suffix such as "mlp", "self_attn", "resid_post",
  // "mlp.down_proj"); throws the seed guide's message
  //   "Could not find activations for layer X, component 'Y'" plus close matches and the components hint.
  int resolve_component(int layer, std::string_view component) const;
  int n_layers() const { return n_layers_; }

 private:
  std::vector<SiteInfo> sites_;
  std::unordered_map<std::string, int> index_;  // canonical names and aliases
  int n_layers_ = 0;
};

// ---- hooks --------------------------------------------------------------------------------------

// Where a site is being called: lets interventions restrict themselves to positions/sequences,
// also during KV-cached generation (positions are absolute: pos_offset + local index).
struct SiteCall {
  int site = -1;
  const SiteInfo* info = nullptr;
  int64_t pos_offset = 0;  // absolute position of index 0 along the seq axis (KV-cache length)
};

// An intervention edits a site's tensor: x -> f(x). It must keep the shape.
using InterventionFn = std::function<at::Tensor(const at::Tensor& x, const SiteCall& call)>;

// Per-forward-pass hook state: what to capture, what to edit, when to stop early.
class Hooks {
 public:
  Hooks() = default;  // inert: no capture, no interventions
  explicit Hooks(const SiteTable& sites);

  void capture(int site);
  void capture_all(bool include_on_request = false);
  void intervene(int site, InterventionFn fn);  // several on one site compose in order
  // Stop the forward pass once this site has run (the model returns an undefined tensor for logits).
  // stop_after(-1) (the default) runs the whole model.
  void stop_after(int site) { stop_after_ = site; }
  // Keep captured tensors attached to the autograd graph (default: detached).
  void keep_graph(bool on) { keep_graph_ = on; }
  // Sets stop_after to the last site that is captured or intervened on, unless logits are needed.
  void stop_after_last_needed();

  // ---- called by the model ----
  // Applies interventions then captures; returns the tensor the forward pass continues with.
  at::Tensor operator()(int site, at::Tensor x) {
    if (site < 0 || (site >= int(wanted_.size()))) return x;
    if (done()) return x;  // past the stop site: the rest of the block runs unobserved
    if (wanted_[site]) x = apply(site, std::move(x));
    passed_ = std::max(passed_, site);
    return x;
  }
  // Whether an optional site (attention weights) has to be computed.
  bool wants(int site) const { return site >= 0 && site < int(wanted_.size()) && wanted_[site]; }
  // True once stop_after's site has run: the model should return early.
  bool done() const { return stop_after_ >= 0 && passed_ >= stop_after_; }
  void set_pos_offset(int64_t p) { pos_offset_ = p; }
  void reset_progress() { passed_ = -1; }

  // ---- results ----
  bool has(int site) const;
  at::Tensor captured(int site) const;  // throws if not captured
  const std::unordered_map<int, at::Tensor>& captures() const { return captured_; }
  void clear_captures() { captured_.clear(); }
  const SiteTable* sites() const { return sites_; }

 private:
  at::Tensor apply(int site, at::Tensor x);
  const SiteTable* sites_ = nullptr;
  std::vector<char> wanted_, capture_;
  std::unordered_map<int, std::vector<InterventionFn>> interventions_;
  std::unordered_map<int, at::Tensor> captured_;
  int stop_after_ = -1, passed_ = -1;
  int64_t pos_offset_ = 0;
  bool keep_graph_ = false;
};

// ---- the model ----------------------------------------------------------------------------------

// Key/value cache for generation: per layer [batch, n_kv_heads, t_cached, d_head].
struct KVCache {
  std::vector<at::Tensor> k, v;
  int64_t length = 0;
  void clear() { k.clear(); v.clear(); length = 0; }
};

struct ForwardArgs {
  // [batch, t_past + t] 1 = real token, 0 = padding. Undefined = all real.
  at::Tensor attention_mask;
  // [batch, t] absolute positions. Undefined = t_past + arange(t) (or, with a mask, the count of
  // real tokens before each one, so left-padded rows start at 0).
  at::Tensor position_ids;
  KVCache* cache = nullptr;  // when set: keys/values are appended and the cache is read
};

class Model {
 public:
  Model(ModelConfig config, TensorMap weights);
  virtual ~Model() = default;

  const ModelConfig& config() const { return config_; }
  const SiteTable& sites() const { return sites_; }
  const TensorMap& weights() const { return weights_; }
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  // Moves/casts every weight (norm weights and biases too), then calls bind().
  void to(at::Device device, at::ScalarType dtype);
  // A weight by HF name; throws if missing.
  const at::Tensor& w(const std::string& name) const;
  bool has_weight(const std::string& name) const { return weights_.count(name) != 0; }
  size_t n_params() const;

  // ids: [batch, t] int64 on the model's device. Returns logits [batch, t, d_vocab] (float32 upcast
  // is the caller's business), or an undefined tensor when hooks stopped early.
  virtual at::Tensor forward(const at::Tensor& ids, const ForwardArgs& args, Hooks& hooks) = 0;
  at::Tensor forward(const at::Tensor& ids) {
    Hooks h;
    return forward(ids, {}, h);
  }

  // Pieces for lenses and attribution (same math as the forward pass):
  // [b, t] -> [b, t, d_model]: each token's embedding as it enters the residual stream (incl. any scale,
  // projection or embedding norm), without position embeddings, so any ids (a vocabulary sweep) are valid.
  virtual at::Tensor embed(const at::Tensor& ids) const = 0;
  virtual at::Tensor final_norm(const at::Tensor& h) const = 0;    // [..., d_model]
  virtual at::Tensor unembed(const at::Tensor& h) const = 0;       // [..., d_model] -> [..., d_vocab] (incl. soft-cap)
  // W_U as [d_model, d_vocab] (for DLA / promoted tokens).
  virtual at::Tensor unembedding_matrix() const = 0;
  // Every weight this architecture needs for its config: name -> shape. create_model compares the
  // loaded weights against it (missing, extra, wrong shape) before the first forward pass.
  virtual std::map<std::string, std::vector<int64_t>> expected_weights() const = 0;

 protected:
  // Architectures cache per-layer weight handles here; called after construction and after to().
  virtual void bind() {}
  ModelConfig config_;
  TensorMap weights_;
  SiteTable sites_;
  at::Device device_ = at::kCPU;
  at::ScalarType dtype_ = at::kFloat;
};

// ---- architectures ------------------------------------------------------------------------------

using ModelFactory = std::function<std::unique_ptr<Model>(const ModelConfig&, TensorMap)>;
// Registers an architecture under `arch` (ModelConfig::arch). Architectures self-register from
// their own file: `static const bool reg = register_architecture("llama", ...)`.
bool register_architecture(const std::string& arch, ModelFactory factory);
std::vector<std::string> registered_architectures();
// Builds a model; checks every expected weight is present with the right shape, and no extra ones.
std::unique_ptr<Model> create_model(const ModelConfig& config, TensorMap weights);

// ---- loading ------------------------------------------------------------------------------------

class Tokenizer;

struct LoadOptions {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
  std::string tokenizer_path;  // overrides the tokenizer found beside the model
  bool load_tokenizer = true;
};

struct LoadedModel {
  std::shared_ptr<Model> model;
  std::shared_ptr<Tokenizer> tokenizer;  // null if none was found (ids-only use)
  std::string source;                    // the path loaded, for reports
  std::string format;                    // "hf" | "gguf" | "llama2c"
};

// `path`: a Hugging Face directory (config.json + safetensors [+ tokenizer.json/.model]), a .gguf
// file (weights + vocabulary), or a llama2.c .bin (tokenizer looked up beside it).
LoadedModel load_model(const std::string& path, const LoadOptions& options = {});

// Format-specific loaders returning config + HF-named weights (no model built yet).
struct ModelFiles {
  ModelConfig config;
  TensorMap weights;
  std::string tokenizer_path;  // found beside the model, "" if none
};
ModelFiles read_hf_model(const std::string& dir);
// The same with one specific weights file (e.g. a fine-tuned copy beside the original).
ModelFiles read_hf_model(const std::string& dir, const std::string& weights_file);
ModelFiles read_gguf_model(const std::string& path);      // llama.cpp names mapped to HF, Q/K un-permuted
ModelFiles read_llama2c_model(const std::string& path);   // legacy v0 header; Q/K un-permuted to HF layout

}  // namespace mlxterp
