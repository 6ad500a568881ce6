#include "mlxterp/trace.hpp"


#include "mlxterp/error.hpp"

namespace mlxterp {

at::Tensor TraceResult::get(const std::string& name) const {
  MLXTERP_ASSERT(sites);
  int id = sites->resolve(name);
  const std::string& canonical = (*sites)[id].name;
  auto it = activations.find(canonical);
  MLXTERP_CHECK(it != activations.end(), "site '", name, "' (", canonical,
                ") was not captured in this trace; add it to TraceOptions::sites (attention weights are captured only "
                "when requested)");
  return it->second;
}

bool TraceResult::has(const std::string& name) const {
  int id = sites ? sites->find(name) : -1;
  return id >= 0 && activations.count((*sites)[id].name);
}

InterpretableModel::InterpretableModel(LoadedModel loaded)
    : model_(std::move(loaded.model)), tokenizer_(std::move(loaded.tokenizer)), source_(loaded.source) {
  MLXTERP_ASSERT(model_);
}

InterpretableModel InterpretableModel::load(const std::string& path, const LoadOptions& options) {
  return InterpretableModel(load_model(path, options));
}

const Tokenizer& InterpretableModel::tokenizer() const {
  MLXTERP_CHECK(tokenizer_, source_, ": this model has no tokenizer; pass --tokenizer (or use token ids)");
  return *tokenizer_;
}

std::vector<int32_t> InterpretableModel::encode(const std::string& text, bool add_special) const {
  return tokenizer().encode(text, {.add_special = add_special});
}

std::string InterpretableModel::decode(const std::vector<int32_t>& ids) const { return tokenizer().decode(ids); }

std::vector<std::string> InterpretableModel::to_str_tokens(const std::vector<int32_t>& ids) const {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int32_t id : ids) out.push_back(tokenizer().token_to_str(id));
  return out;
}

TraceResult InterpretableModel::trace(const std::string& text, const TraceOptions& options) const {
  return trace(std::vector<std::string>{text}, options);
}

TraceResult InterpretableModel::trace(const std::vector<std::string>& texts, const TraceOptions& options) const {
  MLXTERP_CHECK(!texts.empty(), "trace: no texts given");
  BatchEncoding enc = encode_batch(tokenizer(), texts, {.padding_side = options.padding_side,
                                                        .add_special = options.add_special});
  // Only pass a mask when there is padding: unpadded batches take the cheaper path.
  bool padded = false;
  for (auto n : enc.lengths) padded |= n != enc.ids.size(1);
  return trace_ids(enc.ids, padded ? enc.attention_mask : at::Tensor(), options);
}

TraceResult InterpretableModel::trace_ids(const at::Tensor& ids0, const at::Tensor& mask, const TraceOptions& options) const {
  at::Tensor ids = ids0.dim() == 1 ? ids0.unsqueeze(0) : ids0;
  MLXTERP_CHECK(ids.dim() == 2 && ids.size(1) > 0, "trace: ids must be [batch, seq] with seq > 0, got ",
                shape_str(ids.sizes()));
  ids = ids.to(at::kLong);
  const int64_t V = model_->config().d_vocab;
  if (ids.numel()) {
    int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    MLXTERP_CHECK(lo >= 0 && hi < V, "trace: token id ", lo < 0 ? lo : hi, " is out of range; expected 0 .. ", V - 1,
                  " (the model's vocabulary)");
  }
  const SiteTable& S = model_->sites();
  Hooks hooks(S);
  if (options.capture) {
    if (options.sites.empty()) {
      hooks.capture_all(options.attention_weights);
    } else {
      for (const auto& n : options.sites) hooks.capture(S.resolve(n));
    }
  }
  for (const auto& [name, fn] : options.interventions) hooks.intervene(S.resolve(name), fn);
  if (!options.need_logits) hooks.stop_after_last_needed();
  hooks.keep_graph(options.grad);

  TraceResult r;
  r.sites = &S;
  r.ids = ids;
  r.attention_mask = mask.defined() ? mask.to(at::kLong) : at::ones_like(ids);
  ForwardArgs args;
  args.attention_mask = mask.defined() ? mask.to(model_->device()) : at::Tensor();
  {
    std::optional<at::NoGradGuard> no_grad;
    if (!options.grad) no_grad.emplace();
    r.logits = model_->forward(ids.to(model_->device()), args, hooks);
  }
  for (const auto& [id, t] : hooks.captures()) r.activations[S[id].name] = t;
  return r;
}

std::vector<ComponentInfo> InterpretableModel::components(int layer, const std::string& prompt) const {
  at::Tensor ids;
  if (tokenizer_) {
    auto v = tokenizer_->encode(prompt);
    if (v.empty()) v.push_back(0);
    ids = at::tensor(std::vector<int64_t>(v.begin(), v.end()), at::kLong).unsqueeze(0);
  } else {
    ids = at::zeros({1, 2}, at::kLong);
  }
  TraceOptions o;
  o.attention_weights = true;
  TraceResult r = trace_ids(ids, {}, o);
  std::vector<ComponentInfo> out;
  for (const auto& s : sites().all()) {
    if (layer >= 0 && s.layer != layer) continue;
    auto it = r.activations.find(s.name);
    if (it == r.activations.end()) continue;
    out.push_back({s.name, s.layer, it->second.sizes().vec()});
  }
  return out;
}

}  // namespace mlxterp
