// mlxterp tuned-lens train --model M --data F --out DIR [--steps N] [--lr X] [--seq-len T] [--batch-size B] ...
// mlxterp tuned-lens apply --model M --lens DIR --prompt S [--layers ...] [--top-k K] [--json F] [--html F]
#include <iostream>

#include "analysis_cli.hpp"
#include "mlxterp/analysis_lens.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli {
namespace {

struct TrainOpts {
  std::string model, tokenizer, data, out, json;
  bool lines = false;
  int64_t max_docs = 0;
  TunedLensTrainOptions t;
};

void print_eval(const TunedLensEval& ev) {
  std::cout << "held-out KL(final || lens) per layer, nats (" << ev.n_tokens << " tokens)\n";
  std::cout << "layer  logit-lens  tuned-lens\n";
  for (size_t i = 0; i < ev.layers.size(); ++i)
    std::cout << ev.layers[i] << "      " << report::fmt(ev.logit_kl[i], "%.4f") << "      " << report::fmt(ev.tuned_kl[i], "%.4f")
              << "\n";
}

int run_train(const TrainOpts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  std::vector<std::string> docs = read_documents(o.data, o.lines);
  MLXTERP_CHECK(!docs.empty(), "--data ", o.data, ": Dataset contains only empty or whitespace strings. Provide text strings "
                "with actual content.");
  if (o.max_docs > 0 && int64_t(docs.size()) > o.max_docs) docs.resize(size_t(o.max_docs));
  std::vector<std::vector<int32_t>> seqs;
  for (const auto& d : docs) seqs.push_back(m.encode(d));
  TunedLensTrainOptions t = o.t;
  t.progress = !g.quiet;
  TunedLensEval ev;
  TunedLens lens = train_tuned_lens_ids(m, seqs, t, &ev);
  lens.info()["data"] = o.data;
  lens.info()["model"] = o.model;
  lens.save(o.out);
  if (!o.json.empty()) write_outputs(o.json, "", lens.info(), nullptr);
  if (o.json != "-") {
    std::cout << "saved tuned lens to " << o.out << " (final training loss " << report::fmt(lens.info().value("final_loss", 0.0), "%.4f")
              << ")\n";
    if (ev.n_tokens) print_eval(ev);
  }
  return 0;
}

struct ApplyOpts {
  std::string model, tokenizer, lens, layers, target, json, html;
  PromptOption prompt;
  int top_k = 5;
  int64_t position = 0;
  bool has_position = false;
};

int run_apply(const ApplyOpts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  TunedLens lens = TunedLens::load(o.lens);
  Prompt p = get_prompt(o.prompt, "prompt");
  LensOptions lo;
  lo.layers = parse_layer_list(o.layers, "--layers");
  MLXTERP_CHECK(o.top_k >= 1, "--top-k: expected >= 1, got ", o.top_k);
  lo.top_k = o.top_k;
  if (o.has_position) lo.position = o.position;
  if (!o.target.empty()) lo.target = resolve_token(m, o.target);
  LensResult tuned = tuned_lens(m, lens, p, lo);
  LensResult logit = logit_lens(m, p, lo);
  report::Page page = lens_comparison_page(logit, tuned);
  nlohmann::json j = {{"tuned", tuned.to_json()}, {"logit", logit.to_json()}};
  if (!write_outputs(o.json, o.html, j, &page)) {
    std::cout << "layer  mean KL logit-lens  mean KL tuned-lens   top-1 at last position (logit | tuned)\n";
    for (size_t i = 0; i < tuned.layers.size(); ++i)
      std::cout << tuned.layers[i] << "      " << report::fmt(logit.kl_to_final[int64_t(i)].mean().item<double>(), "%.4f")
                << "              " << report::fmt(tuned.kl_to_final[int64_t(i)].mean().item<double>(), "%.4f") << "              "
                << quote(logit.top[i].back()[0].token) << " | " << quote(tuned.top[i].back()[0].token) << "\n";
  }
  return 0;
}

const bool reg_train = register_command(
    "tuned-lens train", "Train a tuned lens (per-layer affine translators, KL to the final layer) on a text file",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<TrainOpts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--data", o->data, "Text file: documents separated by blank lines (--lines: one per line)")->required();
      app.add_flag("--lines", o->lines, "One document per line");
      app.add_option("--out", o->out, "Output directory (config.json + translators.safetensors)")->required();
      app.add_option("--steps", o->t.steps, "SGD steps")->capture_default_str();
      app.add_option("--lr", o->t.lr, "Learning rate (linearly decayed to 0)")->capture_default_str();
      app.add_option("--momentum", o->t.momentum, "Nesterov momentum")->capture_default_str();
      app.add_option("--weight-decay", o->t.weight_decay, "Weight decay")->capture_default_str();
      app.add_option("--grad-clip", o->t.grad_clip, "Global gradient-norm clip (0 = off)")->capture_default_str();
      app.add_option("--seq-len", o->t.seq_len, "Tokens per training sequence")->capture_default_str();
      app.add_option("--batch-size", o->t.batch_size, "Sequences per step")->capture_default_str();
      app.add_option("--holdout", o->t.holdout_fraction, "Fraction of sequences held out for evaluation")->capture_default_str();
      app.add_option("--seed", o->t.seed, "Shuffling seed")->capture_default_str();
      app.add_option("--max-docs", o->max_docs, "Use only the first N documents (0 = all)");
      app.add_option("--json", o->json, "Write the training record (loss curve, held-out KL) as JSON (- for stdout)");
      return [o, &g] { return run_train(*o, g); };
    });

const bool reg_apply = register_command(
    "tuned-lens apply", "Read a prompt through a trained tuned lens, beside the logit lens", [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<ApplyOpts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--lens", o->lens, "Directory written by `tuned-lens train`")->required();
      add_prompt_options(app, o->prompt, "prompt", "The input");
      app.add_option("--layers", o->layers, "Layers to read (default all)");
      app.add_option("--top-k", o->top_k, "Predictions per cell")->capture_default_str();
      app.add_option("--position", o->position, "Only this position")->each([o](const std::string&) { o->has_position = true; });
      app.add_option("--target", o->target, "Track this token's probability and rank");
      app.add_option("--json", o->json, "Write both lenses as JSON (- for stdout)");
      app.add_option("--html", o->html, "Write logit and tuned lens side by side as HTML");
      return [o, &g] { return run_apply(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
