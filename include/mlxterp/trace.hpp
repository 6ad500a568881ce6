// mlxterp/trace.hpp — the user-facing model: load, trace (capture and edit any site by name), generate.
//
//   auto m = mlxterp::InterpretableModel::load("stories260K.gguf");
//   auto tr = m.trace("Once upon a time");                        // captures every site (like mlxterp)
//   at::Tensor mlp2 = tr.get("model.layers.2.mlp");               // [1, t, d_model]; aliases work too:
//   at::Tensor same = tr.get("blocks.2.hook_mlp_out");
//
//   mlxterp::TraceOptions opt;
//   opt.sites = {"model.layers.3"};                                // capture only this; stops after block 3
//   opt.interventions.push_back({"model.layers.1.mlp", mlxterp::iv::zero()});
//   auto edited = m.trace({"a story", "another story"}, opt);     // padded batch with an attention mask
//
//   mlxterp::GenerateOptions g;  g.max_tokens = 50;  g.temperature = 0;   // greedy
//   std::string text = m.generate("Once upon a time", g).text;
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mlxterp/model.hpp"
#include "mlxterp/tokenizer.hpp"

namespace mlxterp {

struct TraceOptions {
  // Sites to capture, by any accepted name. Empty = every site (attention weights only if asked).
  std::vector<std::string> sites;
  bool capture = true;               // false: capture nothing (interventions only)
  bool attention_weights = false;    // with empty `sites`: also capture every layer's attention weights
  // Edits applied during the pass, in order; several on one site compose left to right.
  std::vector<std::pair<std::string, InterventionFn>> interventions;
  // Logits are needed unless the caller says otherwise; without them the pass stops right after the
  // last site anyone needs (harvesting layer 5 of 32 runs 6 blocks).
  bool need_logits = true;
  bool grad = false;  // keep the autograd graph (captures stay attached)
  PaddingSide padding_side = PaddingSide::Right;
  bool add_special = true;  // BOS etc. per the tokenizer's configuration
};

struct TraceResult {
  at::Tensor logits;          // [batch, t, d_vocab] (undefined if the pass stopped early)
  at::Tensor ids;             // [batch, t] int64
  at::Tensor attention_mask;  // [batch, t] int64, 1 = real token
  std::map<std::string, at::Tensor> activations;  // canonical site name -> tensor
  const SiteTable* sites = nullptr;

  // By canonical name or any alias; throws mlxterp::Error listing close matches.
  at::Tensor get(const std::string& name) const;
  bool has(const std::string& name) const;
};

struct GenerateOptions {
  int64_t max_tokens = 64;
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  uint64_t seed = 0;
  bool stop_at_eos = true;
  bool add_special = true;   // BOS per the tokenizer (an empty prompt always starts from BOS)
  // Interventions active on every forward pass, i.e. on the prompt and on every new token.
  std::vector<std::pair<std::string, InterventionFn>> interventions;
  // Called with each new token id (return false to stop).
  std::function<bool(int32_t)> on_token;
};

struct GenerateResult {
  std::vector<int32_t> prompt_ids, new_ids;
  std::string text;  // decoded new tokens only
};

struct ComponentInfo {
  std::string name;
  int layer;
  std::vector<int64_t> shape;
};

class InterpretableModel {
 public:
  explicit InterpretableModel(LoadedModel loaded);
  static InterpretableModel load(const std::string& path, const LoadOptions& options = {});

  TraceResult trace(const std::string& text, const TraceOptions& options = {}) const;
  TraceResult trace(const std::vector<std::string>& texts, const TraceOptions& options = {}) const;
  // ids [batch, t] (int64), optional mask [batch, t]. No BOS is added.
  TraceResult trace_ids(const at::Tensor& ids, const at::Tensor& attention_mask = {},
                        const TraceOptions& options = {}) const;

  GenerateResult generate(const std::string& prompt, const GenerateOptions& options = {}) const;
  GenerateResult generate_ids(const std::vector<int32_t>& prompt_ids, const GenerateOptions& options = {}) const;

  // Every site with its shape for a short prompt (layer >= 0: that block's sites only).
  std::vector<ComponentInfo> components(int layer = -1, const std::string& prompt = "Hello") const;

  Model& model() const { return *model_; }
  std::shared_ptr<Model> model_ptr() const { return model_; }
  bool has_tokenizer() const { return tokenizer_ != nullptr; }
  const Tokenizer& tokenizer() const;  // throws if the model came without one
  std::shared_ptr<Tokenizer> tokenizer_ptr() const { return tokenizer_; }
  const SiteTable& sites() const { return model_->sites(); }
  int n_layers() const { return int(model_->config().n_layers); }
  const std::string& source() const { return source_; }

  std::vector<int32_t> encode(const std::string& text, bool add_special = true) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  // Display form of each token of `text` (what a logit-lens row or a feature context shows).
  std::vector<std::string> to_str_tokens(const std::vector<int32_t>& ids) const;

 private:
  std::shared_ptr<Model> model_;
  std::shared_ptr<Tokenizer> tokenizer_;
  std::string source_;
};

}  // namespace mlxterp
