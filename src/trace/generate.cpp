// KV-cached generation: greedy, temperature, top-k, top-p, seeded; interventions active on every pass.
#include <ATen/CPUGeneratorImpl.h>

#include "mlxterp/error.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp {

// Picks the next token from last-position logits [d_vocab] (float32, CPU).
static int32_t sample(at::Tensor logits, const GenerateOptions& o, at::Generator& gen) {
  if (o.temperature <= 0) return int32_t(logits.argmax().item<int64_t>());
  logits = logits / o.temperature;
  if (o.top_k > 0 && o.top_k < logits.size(0)) {
    auto kth = std::get<0>(logits.topk(o.top_k)).min();
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(logits, -1);
  if (o.top_p < 1.0) {
    auto [sorted, idx] = probs.sort(-1, /*descending=*/true);
    at::Tensor cum = sorted.cumsum(-1);
    // Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
    at::Tensor drop = (cum - sorted) >= o.top_p;
    sorted = sorted.masked_fill(drop, 0);
    probs = at::zeros_like(probs).scatter(0, idx, sorted);
    probs = probs / probs.sum();
  }
  return int32_t(at::multinomial(probs, 1, false, gen).item<int64_t>());
}

GenerateResult InterpretableModel::generate(const std::string& prompt, const GenerateOptions& o) const {
  std::vector<int32_t> ids = tokenizer().encode(prompt, {.add_special = o.add_special});
  if (ids.empty()) {
    MLXTERP_CHECK(tokenizer().special().bos >= 0, "generate: empty prompt and the tokenizer has no BOS token; "
                                                  "expected a non-empty prompt");
    ids.push_back(tokenizer().special().bos);
  }
  return generate_ids(ids, o);
}

GenerateResult InterpretableModel::generate_ids(const std::vector<int32_t>& prompt, const GenerateOptions& o) const {
  MLXTERP_CHECK(!prompt.empty(), "generate: the prompt has no tokens");
  MLXTERP_CHECK(o.max_tokens >= 0, "generate: --max-tokens must be >= 0, got ", o.max_tokens);
  MLXTERP_CHECK(o.temperature >= 0, "generate: --temperature must be >= 0, got ", o.temperature);
  MLXTERP_CHECK(o.top_k >= 0, "generate: --top-k must be >= 0, got ", o.top_k);
  MLXTERP_CHECK(o.top_p > 0 && o.top_p <= 1, "generate: --top-p must be in (0, 1], got ", o.top_p);
  at::NoGradGuard no_grad;
  GenerateResult r;
  r.prompt_ids = prompt;
  const SiteTable& S = model_->sites();
  Hooks hooks(S);
  for (const auto& [name, fn] : o.interventions) hooks.intervene(S.resolve(name), fn);
  KVCache cache;
  ForwardArgs args;
  args.cache = &cache;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  const int32_t eos = has_tokenizer() ? tokenizer().special().eos : int32_t(model_->config().eos_token_id);
  at::Tensor input = at::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()), at::kLong).unsqueeze(0);
  for (int64_t step = 0; step < o.max_tokens; ++step) {
    at::Tensor logits = model_->forward(input.to(model_->device()), args, hooks);  // [1, t, V]
    at::Tensor last = logits.select(1, logits.size(1) - 1).squeeze(0).to(at::kCPU, at::kFloat);
    int32_t next = sample(last, o, gen);
    if (o.stop_at_eos && eos >= 0 && next == eos) break;
    r.new_ids.push_back(next);
    if (o.on_token && !o.on_token(next)) break;
    input = at::full({1, 1}, int64_t(next), at::kLong);
  }
  if (has_tokenizer()) r.text = tokenizer().decode(r.new_ids);
  return r;
}

}  // namespace mlxterp
