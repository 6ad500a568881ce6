// mlxterp sae eval --sae DIR --model M --data F [--json F] [--holdout F] [--site S] [--max-tokens N] ...
#include <cstdio>
#include <iostream>

#include "cli.hpp"
#include "mlxterp/report.hpp"
#include "mlxterp/sae_eval.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string sae, model, tokenizer, data, json, site, save_tokens;
  double holdout = -1;
  int64_t context_size = 0, batch = 0, max_tokens = 0;
  bool lines = false, no_downstream = false, include_special = false;
};

std::string commas(int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return (v < 0 ? "-" : "") + out;
}

std::string pct(double v) { return report::fmt(100.0 * v, "%.2f") + "%"; }
std::string f4(const nlohmann::ordered_json& v) { return v.is_number() ? report::fmt(v.get<double>(), "%.4f") : "n/a"; }

void print_summary(const nlohmann::ordered_json& r, const std::string& holdout_note) {
  const auto& d = r["data"];
  const auto& rec = r["reconstruction"];
  const auto& sp = r["sparsity"];
  const auto& ds = r["downstream"];
  const auto& orig = r["original_report"];
  std::printf("📊 %s at %s\n", r["sae"]["description"].get<std::string>().c_str(),
              r["sae"]["site"].get<std::string>().c_str());
  std::printf("   data: %s, %lld of %lld documents%s, %s sequences, %s tokens\n", d["path"].get<std::string>().c_str(),
              (long long)d["documents_evaluated"].get<int64_t>(), (long long)d["documents_total"].get<int64_t>(),
              holdout_note.c_str(), commas(d["sequences"].get<int64_t>()).c_str(), commas(d["tokens"].get<int64_t>()).c_str());
  std::printf("Reconstruction\n");
  std::printf("  MSE                 %s  (mean_t Σ_d; per element %s)\n", f4(rec["mse"]).c_str(),
              f4(rec["mse_per_element"]).c_str());
  std::printf("  FVU                 %s  (explained variance %s)\n", f4(rec["fvu"]).c_str(),
              rec["explained_variance"].is_number() ? pct(rec["explained_variance"].get<double>()).c_str() : "n/a");
  std::printf("  cosine              %s\n", f4(rec["cosine"]).c_str());
  std::printf("Sparsity\n");
  std::printf("  L0                  %s ± %s  (min %lld, median %g, max %lld of %lld latents)\n",
              report::fmt(sp["l0"].get<double>(), "%.2f").c_str(), report::fmt(sp["l0_std"].get<double>(), "%.2f").c_str(),
              (long long)sp["l0_min"].get<int64_t>(), sp["l0_quantiles"]["p50"].get<double>(),
              (long long)sp["l0_max"].get<int64_t>(), (long long)r["sae"]["d_sae"].get<int64_t>());
  std::printf("  dead                %lld (%s)  never fired on these tokens\n", (long long)sp["dead_features"].get<int64_t>(),
              pct(sp["dead_fraction"].get<double>()).c_str());
  std::printf("  practically dead    %lld (%s)  fired on fewer than %lld tokens\n",
              (long long)sp["practically_dead_features"].get<int64_t>(),
              pct(sp["practically_dead_fraction"].get<double>()).c_str(), (long long)sp["rare_threshold_tokens"].get<int64_t>());
  std::printf("  dense               %lld (%s)  fired on more than %s of tokens\n", (long long)sp["dense_features"].get<int64_t>(),
              pct(sp["dense_fraction"].get<double>()).c_str(), pct(sp["dense_density"].get<double>()).c_str());
  if (!ds.empty()) {
    std::printf("Downstream (reconstruction spliced into %s)\n", r["sae"]["site"].get<std::string>().c_str());
    std::printf("  CE loss             clean %s, with SAE %s, zero-ablated %s\n", f4(ds["ce_loss_without_sae"]).c_str(),
                f4(ds["ce_loss_with_sae"]).c_str(), f4(ds["ce_loss_with_ablation"]).c_str());
    std::printf("  CE-loss recovered   %s  (delta LM loss %s)\n",
                ds["ce_loss_score"].is_number() ? pct(ds["ce_loss_score"].get<double>()).c_str() : "n/a",
                f4(ds["delta_lm_loss"]).c_str());
    std::printf("  KL                  with SAE %s, zero-ablated %s  (KL score %s)\n", f4(ds["kl_div_with_sae"]).c_str(),
                f4(ds["kl_div_with_ablation"]).c_str(), f4(ds["kl_div_score"]).c_str());
  }
  std::printf("Quality score %.1f / 5  (reconstruction %.1f, sparsity %.1f, interpretability %.1f)\n%s\n",
              orig["quality_score"].get<double>(), orig["score_breakdown"]["reconstruction"].get<double>(),
              orig["score_breakdown"]["sparsity"].get<double>(), orig["score_breakdown"]["interpretability"].get<double>(),
              orig["verdict"].get<std::string>().c_str());
  std::printf("   (%.1f s, %s tokens/s, peak RSS %.0f MB)\n", r["timing"]["seconds"].get<double>(),
              commas(int64_t(r["timing"]["tokens_per_s"].get<double>())).c_str(), r["timing"]["peak_rss_mb"].get<double>());
}

int run(const Opts& o, const Globals& g) {
  SAE sae = SAE::load(o.sae);
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  TextCorpus corpus = TextCorpus::open(o.data, o.lines);
  SaeEvalOptions eo;
  eo.data.site = o.site;
  eo.data.context_size = o.context_size;
  eo.data.batch_sequences = o.batch;
  eo.data.max_tokens = o.max_tokens;
  eo.data.exclude_special = !o.include_special;
  eo.data.progress = !g.quiet;
  eo.downstream = !o.no_downstream;
  eo.save_tokens = o.save_tokens;
  eo.sae_path = o.sae;
  eo.model_path = o.model;
  std::string note;
  if (o.holdout >= 0) {
    eo.data.holdout = o.holdout;
    if (o.holdout < 1) note = cat(" (the last ", report::fmt(100 * o.holdout, "%g"), "%)");
  } else {
    const double t = sae_training_holdout(sae, o.data);
    if (t > 0) {
      eo.data.holdout = t;
      note = cat(" (the last ", report::fmt(100 * t, "%g"), "%: the documents training held out, validation_split = ",
                 report::fmt(t, "%g"), ")");
    } else if (t == 0) {
      std::fprintf(stderr, "warning: %s is the SAE's training data and training held nothing out "
                           "(validation_split = 0): these numbers are on training text (pass --holdout F to choose)\n",
                   o.data.c_str());
    }
  }
  nlohmann::ordered_json r = evaluate_sae_on_corpus(m, sae, corpus, eo);
  if (!o.json.empty()) report::write_json(o.json, r);
  if (!g.quiet) {
    print_summary(r, note);
    if (!o.json.empty()) std::printf("💾 Saved evaluation to %s\n", o.json.c_str());
  }
  return 0;
}

const bool registered = register_command(
    "sae eval", "Evaluate an SAE on held-out text: reconstruction, sparsity, CE-loss recovered, KL, quality score",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--sae", o->sae, "SAE directory (native, SAELens or sparsify)")->required();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--data", o->data, "Text file (blank-line-separated documents), --lines file, or JSONL (\"text\" or \"ids\")")
          ->required();
      app.add_flag("--lines", o->lines, "One document per line");
      app.add_option("--json", o->json, "Write the full report as JSON");
      app.add_option("--site", o->site, "The site the SAE reads (default: from the SAE's files; TransformerLens names work)");
      app.add_option("--holdout", o->holdout,
                     "Evaluate the last fraction F of the documents (default: the fraction training held out when --data "
                     "is the SAE's training file, else 1 = all)");
      app.add_option("--context-size", o->context_size, "Tokens per sequence (default: the SAE's training context_size)");
      app.add_option("--batch", o->batch, "Sequences per forward pass (default: automatic)");
      app.add_option("--max-tokens", o->max_tokens, "Stop after this many evaluated tokens (0 = all)");
      app.add_flag("--no-downstream", o->no_downstream, "Skip the CE/KL forward passes with the SAE spliced in");
      app.add_flag("--include-special", o->include_special, "Also evaluate BOS/EOS/PAD positions");
      app.add_option("--save-tokens", o->save_tokens,
                     "Write the evaluated sequences as JSONL {\"ids\", \"keep\"} (for reference implementations)");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
