// mlxterp attention --model M --prompt S [--layer L] [--head H] [--detect] [--json F] [--html F]
#include <iostream>

#include "analysis_cli.hpp"
#include "mlxterp/analysis_attention.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, layers, json, html;
  PromptOption prompt;
  int layer = -1;
  int64_t head = -1;
  bool detect = false, no_copying = false;
  InductionOptions ind;
};

int run(const Opts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  std::vector<int> layers = parse_layer_list(o.layers, "--layers");
  if (o.layer >= 0) {
    MLXTERP_CHECK(layers.empty(), "give --layer or --layers, not both");
    layers = {o.layer};
  }
  AttentionPatterns p = attention_patterns(m, get_prompt(o.prompt, "prompt"), layers);
  const int64_t H = p.weights.size(1);
  MLXTERP_CHECK(o.head < H, "--head: the model has ", H, " heads (0 .. ", H - 1, "), got ", o.head);
  std::unique_ptr<InductionScores> ind;
  std::unique_ptr<HeadScores> hs;
  if (o.detect) {
    InductionOptions io = o.ind;
    io.layers = p.layers;
    ind = std::make_unique<InductionScores>(induction_scores(m, io));
    hs = std::make_unique<HeadScores>(head_scores(m, p, ind.get(), !o.no_copying));
  }
  nlohmann::json j = p.to_json();
  if (hs) j["head_scores"] = hs->to_json();
  report::Page page = attention_page(p, hs.get());
  if (write_outputs(o.json, o.html, j, &page)) return 0;
  if (o.head >= 0) {
    for (size_t li = 0; li < p.layers.size(); ++li) {
      std::cout << "layer " << p.layers[li] << " head " << o.head << " (rows: queries, columns: keys)\n";
      for (size_t q = 0; q < p.tokens.size(); ++q) {
        std::cout << q << ":" << quote(p.tokens[q]);
        for (size_t k = 0; k <= q; ++k) std::cout << "\t" << report::fmt(p.weights[int64_t(li)][o.head][int64_t(q)][int64_t(k)].item<double>(), "%.3f");
        std::cout << "\n";
      }
    }
  }
  if (hs) {
    for (const auto& [name, _] : hs->scores) {
      std::cout << "top " << name << " heads:";
      for (const auto& e : hs->top(name, 5)) std::cout << "  L" << e.layer << "H" << e.head << "=" << report::fmt(e.score, "%.3f");
      std::cout << "\n";
    }
  }
  if (o.head < 0 && !hs) {
    std::cout << "captured attention for " << p.layers.size() << " layers x " << H << " heads over " << p.tokens.size()
              << " tokens; use --head H to print a pattern, --detect for head scores, --html F for the viewer\n";
  }
  return 0;
}

const bool registered = register_command(
    "attention", "Attention patterns from the forward pass, head-type scores (--detect), interactive viewer (--html)",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      add_prompt_options(app, o->prompt, "prompt", "The input");
      app.add_option("--layer", o->layer, "Only this layer");
      app.add_option("--layers", o->layers, "These layers, e.g. 0,2 (default all)");
      app.add_option("--head", o->head, "Print this head's pattern");
      app.add_flag("--detect", o->detect, "Score heads: previous/first/current token, induction, duplicate, copying");
      app.add_option("--induction-length", o->ind.length, "Random tokens per copy for the induction score")->capture_default_str();
      app.add_option("--induction-sequences", o->ind.n_sequences, "Random sequences averaged")->capture_default_str();
      app.add_option("--seed", o->ind.seed, "Seed for the random tokens")->capture_default_str();
      app.add_flag("--no-copying", o->no_copying, "Skip the OV-circuit copying score");
      app.add_option("--json", o->json, "Write patterns (and scores) as JSON (- for stdout)");
      app.add_option("--html", o->html, "Write the interactive viewer");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
