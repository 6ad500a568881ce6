// Options shared by `mlxterp patch` and `mlxterp attribute` (same inputs, CLI.md).
#pragma once

#include <iostream>

#include "analysis_cli.hpp"
#include "mlxterp/analysis_patching.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli::patch_cli {

struct Opts {
  std::string model, tokenizer, component = "resid_post", layers, positions = "all", position_list, metric,
                                answer, wrong, align = "strict", json, html;
  PromptOption clean, corrupted;
  int batch_size = 32;
  int64_t metric_position = -1;
  bool validate = false;
};

inline void add_common(CLI::App& app, Opts& o) {
  app.add_option("--model", o.model, "HF directory, .gguf or llama2.c .bin")->required();
  app.add_option("--tokenizer", o.tokenizer, "Override the tokenizer found beside the model");
  add_prompt_options(app, o.clean, "clean", "The clean prompt");
  add_prompt_options(app, o.corrupted, "corrupted", "The corrupted prompt");
  app.add_option("--component", o.component,
                 "resid_pre|resid_mid|resid_post|attn|mlp|head|q|k|v|o|gate|up|down, or any site suffix")
      ->capture_default_str();
  app.add_option("--layers", o.layers, "Layers, e.g. 0,2,4 (default all)");
  app.add_option("--positions", o.positions, "all: patch every position at once; each: one position at a time")
      ->check(CLI::IsMember({"all", "each"}))
      ->capture_default_str();
  app.add_option("--position-list", o.position_list, "With --positions each: only these positions, e.g. 3,4,-1");
  app.add_option("--metric", o.metric, "logit-diff|prob|kl|ce|l2|cosine|mse (default logit-diff with --wrong, "
                                       "prob with only --answer, else l2)");
  app.add_option("--answer", o.answer, "The correct next token (\" Mary\" or #ID)");
  app.add_option("--wrong", o.wrong, "The wrong next token, for logit-diff");
  app.add_option("--metric-position", o.metric_position, "Where the metric reads the logits")->capture_default_str();
  app.add_option("--align", o.align, "Prompts of different lengths: strict (error), end or start")
      ->check(CLI::IsMember({"strict", "end", "start"}))
      ->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "Patched runs per forward pass")->capture_default_str();
  app.add_option("--json", o.json, "Write the result as JSON (- for stdout)");
  app.add_option("--html", o.html, "Write a heatmap / bar chart page");
}

inline PatchOptions make_options(const InterpretableModel& m, const Opts& o) {
  PatchOptions po;
  po.component = o.component;
  po.layers = parse_layer_list(o.layers, "--layers");
  po.positions = o.positions == "each" ? PatchPositions::Each : PatchPositions::All;
  if (!o.position_list.empty()) po.position_list = parse_id_list(o.position_list, "--position-list");
  if (!o.answer.empty()) po.metric.answer = resolve_token(m, o.answer);
  if (!o.wrong.empty()) po.metric.wrong = resolve_token(m, o.wrong);
  if (!o.metric.empty()) po.metric.metric = parse_metric(o.metric);
  else po.metric.metric = !o.wrong.empty() ? Metric::LogitDiff : !o.answer.empty() ? Metric::Prob : Metric::L2;
  po.metric.position = o.metric_position;
  po.align = o.align == "end" ? iv::Align::End : o.align == "start" ? iv::Align::Start : iv::Align::Strict;
  MLXTERP_CHECK(o.batch_size >= 1, "--batch-size: expected >= 1, got ", o.batch_size);
  po.batch_size = o.batch_size;
  return po;
}

inline void print_matrix(const at::Tensor& rec, const std::vector<int>& layers, const std::vector<int64_t>& positions,
                  int64_t n_heads, const std::vector<std::string>& tokens) {
  std::cout << "recovery (1 = clean behaviour restored, 0 = no effect)\n";
  const int64_t P = rec.size(1), H = rec.size(2);
  std::cout << "layer";
  if (H > 1) for (int64_t h = 0; h < n_heads; ++h) std::cout << "\tH" << h;
  else for (int64_t p : positions) std::cout << "\t" << (p < 0 ? std::string("all") : std::to_string(p) + ":" + quote(tokens[size_t(p)]));
  std::cout << "\n";
  for (size_t l = 0; l < layers.size(); ++l) {
    for (int64_t pi = 0; pi < (H > 1 ? P : 1); ++pi) {
      std::cout << "L" << layers[l];
      if (H > 1 && positions[size_t(pi)] >= 0) std::cout << "@" << positions[size_t(pi)];
      if (H > 1)
        for (int64_t h = 0; h < H; ++h) std::cout << "\t" << report::fmt(rec[int64_t(l)][pi][h].item<double>(), "%.3f");
      else
        for (int64_t p = 0; p < P; ++p) std::cout << "\t" << report::fmt(rec[int64_t(l)][p][0].item<double>(), "%.3f");
      std::cout << "\n";
    }
  }
}

}  // namespace mlxterp::cli::patch_cli
