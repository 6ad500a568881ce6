// mlxterp generate --model M --prompt S [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
//                  [--seed S] [--intervene SPEC]...
#include <iostream>

#include "cli.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, prompt;
  int64_t max_tokens = 64, top_k = 0;
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
  bool ignore_eos = false, stream = false;
  std::vector<std::string> intervene;
};

int run(const Opts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  GenerateOptions go;
  go.max_tokens = o.max_tokens;
  go.temperature = o.temperature;
  go.top_k = o.top_k;
  go.top_p = o.top_p;
  go.seed = o.seed;
  go.stop_at_eos = !o.ignore_eos;
  for (const auto& spec : o.intervene) go.interventions.push_back(parse_intervention_cli(spec, m));
  GenerateResult r = m.generate(o.prompt, go);
  std::cout << r.text << "\n";
  if (!g.quiet)
    std::cerr << "generated " << r.new_ids.size() << " tokens from a " << r.prompt_ids.size() << "-token prompt\n";
  return 0;
}

const bool registered = register_command(
    "generate", "Generate a continuation (KV cache; interventions stay active on every token)",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--prompt", o->prompt, "Prompt text (empty: start from BOS)")->required();
      app.add_option("--max-tokens", o->max_tokens, "New tokens to generate")->capture_default_str();
      app.add_option("--temperature", o->temperature, "0 = greedy")->capture_default_str();
      app.add_option("--top-k", o->top_k, "Sample from the k most likely tokens (0 = off)")->capture_default_str();
      app.add_option("--top-p", o->top_p, "Nucleus sampling mass (1 = off)")->capture_default_str();
      app.add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
      app.add_flag("--ignore-eos", o->ignore_eos, "Keep going past the end-of-sequence token");
      app.add_option("--intervene", o->intervene, "Edit a site on every forward pass (see `trace --help`)");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
