// mlxterp logit-lens --model M --prompt S [--layers 0,5,10] [--top-k K] [--position P] [--target TOKEN]
//                    [--no-norm] [--json F] [--html F]
#include <iostream>

#include "analysis_cli.hpp"
#include "mlxterp/analysis_lens.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, layers, target, json, html;
  PromptOption prompt;
  int top_k = 5;
  int64_t position = 0;
  bool has_position = false, no_norm = false;
};

// A text grid: one row per layer (last on top), top-1 token per position.
void print_grid(const LensResult& r) {
  std::cout << "lens: " << r.lens << "  (rows: layers, columns: positions; each cell = top-1 next token and its probability)\n";
  for (size_t c = 0; c < r.positions.size(); ++c)
    std::cout << "  pos " << r.positions[c] << " " << quote(r.input_tokens[size_t(r.positions[c])]) << "\n";
  for (size_t i = r.layers.size(); i-- > 0;) {
    std::cout << "L" << r.layers[i] << ":";
    for (size_t c = 0; c < r.positions.size(); ++c) {
      const auto& p = r.top[i][c][0];
      std::cout << "  " << quote(p.token) << " " << report::fmt(p.prob, "%.2f");
    }
    if (r.target) std::cout << "   | target rank at last column: " << r.target_rank[int64_t(i)][-1].item<int64_t>();
    std::cout << "\n";
  }
}

int run(const Opts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  Prompt p = get_prompt(o.prompt, "prompt");
  LensOptions lo;
  lo.layers = parse_layer_list(o.layers, "--layers");
  MLXTERP_CHECK(o.top_k >= 1, "--top-k: expected >= 1, got ", o.top_k);
  lo.top_k = o.top_k;
  if (o.has_position) lo.position = o.position;
  if (!o.target.empty()) lo.target = resolve_token(m, o.target);
  lo.apply_norm = !o.no_norm;
  LensResult r = logit_lens(m, p, lo);
  report::Page page = lens_page(r);
  if (!write_outputs(o.json, o.html, r.to_json(), &page)) print_grid(r);
  return 0;
}

const bool registered = register_command(
    "logit-lens", "Top-k next-token predictions of every layer's residual stream (final norm + unembedding)",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      add_prompt_options(app, o->prompt, "prompt", "The input");
      app.add_option("--layers", o->layers, "Layers to read, e.g. 0,5,10 (default all; negative from the end)");
      app.add_option("--top-k", o->top_k, "Predictions per cell")->capture_default_str();
      app.add_option("--position", o->position, "Only this position (negative from the end)")
          ->each([o](const std::string&) { o->has_position = true; });
      app.add_option("--target", o->target, "Track this token's probability and rank (\" She\" or #ID)");
      app.add_flag("--no-norm", o->no_norm, "Skip the final norm (the original's skip_norm)");
      app.add_option("--json", o->json, "Write the result as JSON to this file (- for stdout)");
      app.add_option("--html", o->html, "Write the lens grid as a self-contained HTML page");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
