// mlxterp dla --model M --prompt S --answer TOKEN [--wrong TOKEN] [--position P] [--no-heads] [--json F] [--html F]
#include <iostream>

#include "analysis_cli.hpp"
#include "mlxterp/analysis_attention.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, answer, wrong, json, html;
  PromptOption prompt;
  int64_t position = -1;
  bool no_heads = false;
};

int run(const Opts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  DlaOptions d;
  d.answer = resolve_token(m, o.answer);
  if (!o.wrong.empty()) d.wrong = resolve_token(m, o.wrong);
  d.position = o.position;
  d.per_head = !o.no_heads;
  DlaResult r = direct_logit_attribution(m, get_prompt(o.prompt, "prompt"), d);
  report::Page page = dla_page(r);
  if (!write_outputs(o.json, o.html, r.to_json(), &page)) {
    std::cout << "direct logit attribution of logit[" << quote(r.answer_token) << "]"
              << (r.wrong_token.empty() ? "" : " - logit[" + quote(r.wrong_token) + "]") << " at position " << r.position << "\n";
    std::cout << "embed\t" << report::fmt(r.embed, "%.4f") << "\n";
    for (int64_t l = 0; l < r.attn.size(0); ++l) {
      std::cout << "L" << l << " attn\t" << report::fmt(r.attn[l].item<double>(), "%.4f");
      if (r.per_head.defined()) {
        std::cout << "\t(heads:";
        for (int64_t h = 0; h < r.per_head.size(1); ++h) std::cout << " " << report::fmt(r.per_head[l][h].item<double>(), "%.3f");
        std::cout << ")";
      }
      std::cout << "\nL" << l << " mlp\t" << report::fmt(r.mlp[l].item<double>(), "%.4f") << "\n";
    }
    if (std::abs(r.bias) > 1e-9) std::cout << "norm bias\t" << report::fmt(r.bias, "%.4f") << "\n";
    if (std::abs(r.other) > 1e-9) std::cout << "other\t" << report::fmt(r.other, "%.4f") << "\n";
    std::cout << "total\t" << report::fmt(r.total, "%.4f") << "  (model: " << report::fmt(r.model_value, "%.4f") << ")\n";
  }
  return 0;
}

const bool registered = register_command(
    "dla", "Direct logit attribution: each layer's and head's contribution to a token's logit",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      add_prompt_options(app, o->prompt, "prompt", "The input");
      app.add_option("--answer", o->answer, "The token whose logit is explained (\" cat\" or #ID)")->required();
      app.add_option("--wrong", o->wrong, "Explain logit[answer] - logit[wrong] instead");
      app.add_option("--position", o->position, "Position whose next-token logit is explained")->capture_default_str();
      app.add_flag("--no-heads", o->no_heads, "Skip the per-head split");
      app.add_option("--json", o->json, "Write the result as JSON (- for stdout)");
      app.add_option("--html", o->html, "Write the bar chart / per-head heatmap page");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
