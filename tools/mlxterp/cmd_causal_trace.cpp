// mlxterp causal-trace --model M --prompt S --subject S --target TOKEN [...] [--json F] [--html F]
// mlxterp causal-trace --model M --facts known_1000.json [--limit N] [--min-drop P] [...]
#include <iostream>

#include "analysis_cli.hpp"
#include "mlxterp/analysis_causal.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, subject, subject_positions, target, facts, layers, json, html;
  PromptOption prompt;
  CausalTraceOptions c;
  int64_t limit = 0;
  double min_drop = 0.05;
};

int run(const Opts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  CausalTraceOptions c = o.c;
  c.layers = parse_layer_list(o.layers, "--layers");
  c.progress = !g.quiet;
  if (!o.facts.empty()) {
    if (!o.prompt.text.empty() || !o.prompt.ids.empty() || !o.prompt.file.empty() || !o.subject.empty())
      throw UsageError("--facts runs over a facts file; do not combine it with --prompt/--ids/--subject");
    auto facts = load_facts(o.facts);
    CausalTraceSummary s = causal_trace_facts(m, facts, c, o.min_drop, o.limit);
    report::Page page = causal_trace_summary_page(s);
    if (!write_outputs(o.json, o.html, s.to_json(), &page)) {
      std::cout << s.n_used << " of " << s.n_facts << " facts used (" << s.n_skipped << " skipped; mean P(target) clean "
                << report::fmt(s.mean_p_clean, "%.4f") << ", corrupted " << report::fmt(s.mean_p_corrupt, "%.4f") << ")\n";
      std::cout << "average indirect effect per layer:\ngroup";
      for (int l : s.layers) std::cout << "\tL" << l;
      std::cout << "\n";
      for (int gi = 0; gi < CausalTraceSummary::kGroups; ++gi) {
        std::cout << CausalTraceSummary::group_name(gi);
        for (size_t l = 0; l < s.layers.size(); ++l) std::cout << "\t" << report::fmt(s.indirect_effect[gi][int64_t(l)].item<double>(), "%.4f");
        std::cout << "\n";
      }
    }
    return 0;
  }
  Prompt p = get_prompt(o.prompt, "prompt");
  if (o.target.empty()) throw UsageError("--target is required (the correct next token: text such as \" Paris\", or #ID)");
  CausalTraceResult r;
  if (!o.subject_positions.empty()) {
    auto parts = split(o.subject_positions, ':');
    MLXTERP_CHECK(parts.size() == 2, "--subject-positions: expected START:END (token span, END exclusive), got '",
                  o.subject_positions, "'");
    int64_t s0 = parse_int(trim(parts[0]), "--subject-positions START"), s1 = parse_int(trim(parts[1]), "--subject-positions END");
    MLXTERP_CHECK(o.target[0] == '#' || !p.is_ids, "--target: with --ids give the target as #ID");
    int32_t tgt = o.target[0] == '#' ? resolve_token(m, o.target) : continuation_token(m, p.text, o.target);
    r = causal_trace(m, p, s0, s1, tgt, c);
  } else {
    if (o.subject.empty()) throw UsageError("give --subject TEXT (or --subject-positions START:END)");
    MLXTERP_CHECK(!p.is_ids, "--subject: with --ids give the subject as --subject-positions START:END");
    r = causal_trace(m, p.text, o.subject, o.target, c);
  }
  report::Page page = causal_trace_page(r);
  if (!write_outputs(o.json, o.html, r.to_json(), &page)) {
    std::cout << "P(" << quote(r.target_token) << "): clean " << report::fmt(r.p_clean, "%.4f") << ", corrupted "
              << report::fmt(r.p_corrupt, "%.4f") << " (noise std " << report::fmt(r.noise_std, "%.4f") << ", subject tokens ["
              << r.subject_start << ", " << r.subject_end << "))\nP(target) after restoring " << r.component
              << " (rows: positions, columns: layers)\n";
    std::cout << "position";
    for (int l : r.layers) std::cout << "\tL" << l;
    std::cout << "\n";
    for (size_t p2 = 0; p2 < r.tokens.size(); ++p2) {
      bool subj = int64_t(p2) >= r.subject_start && int64_t(p2) < r.subject_end;
      std::cout << p2 << ":" << quote(r.tokens[p2]) << (subj ? "*" : "");
      for (size_t l = 0; l < r.layers.size(); ++l) std::cout << "\t" << report::fmt(r.prob[int64_t(l)][int64_t(p2)].item<double>(), "%.4f");
      std::cout << "\n";
    }
  }
  return 0;
}

const bool registered = register_command(
    "causal-trace", "Causal tracing (ROME): noise the subject, restore clean states, measure P(target) recovery",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      add_prompt_options(app, o->prompt, "prompt", "The factual prompt");
      app.add_option("--subject", o->subject, "The subject as it appears in the prompt");
      app.add_option("--subject-positions", o->subject_positions, "The subject's token span START:END (END exclusive)");
      app.add_option("--target", o->target, "The correct next token (text continuing the prompt, or #ID)");
      app.add_option("--facts", o->facts, "Batch mode: ROME's known_1000.json (or JSON/JSONL facts)");
      app.add_option("--limit", o->limit, "Batch mode: only the first N facts");
      app.add_option("--min-drop", o->min_drop, "Batch mode: skip facts whose corruption lowers P(target) less than this")
          ->capture_default_str();
      app.add_option("--layers", o->layers, "Layers (default all)");
      app.add_option("--component", o->c.component, "What is restored: resid_post, mlp, attn")->capture_default_str();
      app.add_option("--noise-std", o->c.noise_std, "Noise standard deviation (0 = multiplier x std of the embeddings)");
      app.add_option("--noise-multiplier", o->c.noise_multiplier, "Multiplier of the embedding std")->capture_default_str();
      app.add_option("--samples", o->c.samples, "Noise samples averaged")->capture_default_str();
      app.add_option("--seed", o->c.seed, "Noise seed")->capture_default_str();
      app.add_option("--window", o->c.window, "Restore this many consecutive layers (ROME uses 10 for mlp/attn)")
          ->capture_default_str();
      app.add_option("--batch-size", o->c.batch_size, "Restored runs per forward pass")->capture_default_str();
      app.add_option("--json", o->json, "Write the result as JSON (- for stdout)");
      app.add_option("--html", o->html, "Write the heatmap page");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
