// mlxterp demo [--model M] [--out DIR] [...]
// The tour on the embedded model (models/kjv-llama, trained by scripts/make_demo_model.sh): tokenize and
// trace a prompt, the logit lens, one activation-patching experiment, a TopK SAE trained in streaming mode
// on a residual layer, its metrics and a few features with their top-activating contexts — printed, and
// written as one self-contained HTML report.
#include <cmath>
#include <cstdio>
#include <iostream>

#include "cli.hpp"
#include "demo.hpp"
#include "mlxterp/progress.hpp"
#include "mlxterp/trace.hpp"

#ifndef MLXTERP_SOURCE_DIR
#define MLXTERP_SOURCE_DIR "."
#endif

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, data, out = "mlxterp-demo";
  std::string prompt = "And God said, Let there be light: and there was light.";
  std::string generate_prompt = "And God said";
  // The name decides the next word: " disciples" after Jesus, " people" after Moses.
  std::string clean = "And Jesus said unto his";
  std::string corrupted = "And Moses said unto his";
  std::string answer, wrong;
  int layer = -1;
  int64_t expansion = 8, k = 16, batch = 128, epochs = 2, max_docs = 0, n_features = 6, n_contexts = 5;
  double lr = 1e-3;
  uint64_t seed = 42;
  bool quick = false;
};

// --quick: a run of seconds (for tests and a first look); options given explicitly still win.
void apply_quick(Opts& o, const CLI::App& app) {
  if (!o.quick) return;
  if (!app.count("--max-docs")) o.max_docs = 240;
  if (!app.count("--epochs")) o.epochs = 1;
  if (!app.count("--features")) o.n_features = 4;
  if (!app.count("--contexts")) o.n_contexts = 3;
}

// models/kjv-llama in the current directory or in the source tree this binary was built from.
std::string find_default_model() {
  for (const std::string base : {std::string("."), std::string(MLXTERP_SOURCE_DIR)}) {
    const std::string p = join_path(base, "models/kjv-llama");
    if (file_exists(join_path(p, "config.json"))) return p;
  }
  MLXTERP_FAIL("demo: the embedded model models/kjv-llama was found neither in the current directory nor in ",
               MLXTERP_SOURCE_DIR, "; expected a checkout of mlxterp (or pass --model DIR and --data FILE)");
}

using demo::fixed;
using demo::human_count;

// Pads or cuts a display token to `w` columns (counted in bytes: the demo's tokens are ASCII).
std::string cell(std::string s, size_t w) {
  for (auto& ch : s)
    if (ch == '\n') ch = ' ';
  if (s.size() > w) s = s.substr(0, w - 1) + "~";
  return s + std::string(w - s.size(), ' ');
}

void section(const std::string& title) { std::cout << "\n== " << title << " ==\n" << std::flush; }

int run_demo(const Opts& o, const Globals& g) {
  Timer total;
  // Every option is checked before any work, so a bad one fails in a second, not after the SAE.
  SAEConfig cfg;
  cfg.sae_type = "topk";
  cfg.expansion_factor = o.expansion;
  cfg.k = o.k;
  cfg.batch_size = o.batch;
  cfg.learning_rate = o.lr;
  cfg.num_epochs = o.epochs;
  cfg.warmup_steps = 50;
  cfg.lr_min_ratio = 0.1;
  cfg.checkpoint_every = 0;
  cfg.seed = int64_t(o.seed);
  cfg.validate();
  MLXTERP_CHECK(o.max_docs >= 0, "--max-docs: expected >= 0 (0 = all), got ", o.max_docs);
  MLXTERP_CHECK(o.n_features >= 1, "--features: expected >= 1, got ", o.n_features);
  MLXTERP_CHECK(o.n_contexts >= 1, "--contexts: expected >= 1, got ", o.n_contexts);
  const std::string model_path = o.model.empty() ? find_default_model() : o.model;
  MLXTERP_CHECK(file_exists(model_path) || is_directory(model_path), "--model: ", model_path,
                " does not exist; expected a model directory (config.json + weights) or a .gguf/.bin file");
  std::string data = o.data;
  if (data.empty()) {
    data = join_path(is_directory(model_path) ? model_path : dirname(model_path), "demo_corpus.txt");
    MLXTERP_CHECK(file_exists(data), "demo: no text to train the SAE on: ", data,
                  " does not exist; expected --data FILE (one document per line)");
  }
  MLXTERP_CHECK(file_exists(data), "--data: ", data, " does not exist; expected a text file, one document per line");
  InterpretableModel m(load_model_for_cli(model_path, "", g));
  MLXTERP_CHECK(m.has_tokenizer(), "demo: ", model_path,
                " has no tokenizer; expected tokenizer.model or tokenizer.json beside it (or a GGUF with a vocabulary)");
  const ModelConfig& c = m.model().config();
  const int layer = o.layer == -1 ? m.n_layers() / 2 : o.layer;
  MLXTERP_CHECK(layer >= 0 && layer < m.n_layers(), "--layer: expected a block of the model, 0 .. ", m.n_layers() - 1,
                ", got ", o.layer);
  const std::vector<int32_t> clean_ids = m.encode(o.clean), corrupt_ids = m.encode(o.corrupted);
  MLXTERP_CHECK(clean_ids.size() == corrupt_ids.size(), "demo: --clean and --corrupted must have the same number of "
                "tokens; expected equal lengths, got ", clean_ids.size(), " (", quote(o.clean), ") and ",
                corrupt_ids.size(), " (", quote(o.corrupted), ")");
  make_dirs(o.out);
  demo::Report rep(model_path, m);

  std::cout << "mlxterp demo: " << model_path << " (" << c.model_type << ", " << c.n_layers << " layers, d_model "
            << c.d_model << ", " << c.n_heads << " heads, vocabulary " << c.d_vocab << ", "
            << human_count(int64_t(m.model().n_params())) << " parameters)\n";

  // ---- 1. tokenize ----
  section("1. Tokenize");
  const std::vector<int32_t> ids = m.encode(o.prompt);
  const std::vector<std::string> toks = m.to_str_tokens(ids);
  std::cout << "prompt: " << quote(o.prompt) << "\n" << ids.size() << " tokens: ";
  for (size_t i = 0; i < toks.size(); ++i) std::cout << (i ? "|" : "") << toks[i];
  std::cout << "\nids:    ";
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
  rep.tokens(o.prompt, ids, toks);

  // ---- 2. trace + generate ----
  section("2. Trace");
  TraceResult tr = m.trace(o.prompt);
  std::cout << tr.activations.size() << " sites captured in one forward pass, e.g.\n";
  const std::string L = "model.layers." + std::to_string(layer);
  std::vector<std::pair<std::string, std::vector<int64_t>>> shown;
  for (const std::string& s : {std::string("model.embed_tokens"), L + ".self_attn.q_proj", L + ".self_attn", L + ".mlp",
                               L, std::string("lm_head")}) {
    if (!tr.has(s)) continue;
    at::Tensor t = tr.get(s);
    shown.emplace_back(s, t.sizes().vec());
    std::cout << "  " << cell(s, 32) << shape_str(t.sizes()) << "\n";
  }
  GenerateOptions go;
  go.max_tokens = 40;
  go.temperature = 0;
  GenerateResult gen = m.generate(o.generate_prompt, go);
  // Decode prompt + continuation together: SentencePiece drops the leading space of a lone continuation.
  std::vector<int32_t> all = gen.prompt_ids;
  all.insert(all.end(), gen.new_ids.begin(), gen.new_ids.end());
  const std::string full = m.tokenizer().decode(all, /*skip_special=*/true);
  const std::string prompt_text = m.tokenizer().decode(gen.prompt_ids, true);
  const std::string continuation = starts_with(full, prompt_text) ? full.substr(prompt_text.size()) : gen.text;
  std::cout << "greedy continuation: " << o.generate_prompt << continuation << "\n";
  rep.trace(int64_t(tr.activations.size()), shown, o.generate_prompt, continuation);

  // ---- 3. logit lens ----
  section("3. Logit lens");
  LensOptions lo;
  lo.top_k = 3;
  LensResult lens = logit_lens(m, o.prompt, lo);
  std::cout << "top-1 next-token prediction of unembed(final_norm(residual)) after each block; the last column is\n"
               "the model's output:\n";
  const size_t w = 11;
  std::cout << cell("position", 16);
  for (int l : lens.layers) std::cout << cell("L" + std::to_string(l), w);
  std::cout << "\n";
  for (size_t p = 0; p < lens.positions.size(); ++p) {
    std::cout << cell(quote(lens.input_tokens[size_t(lens.positions[p])]), 16);
    for (size_t r = 0; r < lens.layers.size(); ++r) std::cout << cell(quote(lens.top[r][p][0].token), w);
    std::cout << "\n";
  }
  rep.lens(lens);

  // ---- 4. activation patching ----
  section("4. Activation patching");
  PatchOptions po;
  po.component = "resid_post";
  po.positions = PatchPositions::Each;
  po.metric.metric = Metric::LogitDiff;
  // Default answer tokens: what the model predicts next for each prompt.
  TraceOptions last;
  last.capture = false;
  auto top1 = [&](const std::vector<int32_t>& v) {
    at::Tensor lg = m.trace_ids(ids_tensor(v), {}, last).logits[0][-1];
    return int32_t(lg.argmax().item<int64_t>());
  };
  po.metric.answer = o.answer.empty() ? top1(clean_ids) : resolve_token(m, o.answer);
  po.metric.wrong = o.wrong.empty() ? top1(corrupt_ids) : resolve_token(m, o.wrong);
  MLXTERP_CHECK(po.metric.answer != po.metric.wrong, "demo: the clean and corrupted prompts lead to the same next token ",
                quote(token_string(m, po.metric.answer)),
                "; expected prompts whose answers differ (or give --answer and --wrong)");
  PatchResult pr = activation_patching(m, Prompt::ids(clean_ids), Prompt::ids(corrupt_ids), po);
  std::cout << "clean:     " << quote(o.clean) << " -> " << quote(pr.answer_token) << "\n"
            << "corrupted: " << quote(o.corrupted) << " -> " << quote(pr.wrong_token) << "\n"
            << "metric: logit(" << quote(pr.answer_token) << ") - logit(" << quote(pr.wrong_token) << "): clean "
            << fixed(pr.clean_value, 2) << ", corrupted " << fixed(pr.corrupt_value, 2) << "\n"
            << "recovery when the residual stream after block L at one position is copied from the clean run\n"
            << "into the corrupted one (1 = the clean answer is fully restored):\n";
  const size_t pw = 10;
  std::cout << cell("", 6);
  for (int64_t p : pr.positions)
    std::cout << cell(quote(p >= 0 && p < int64_t(pr.corrupt_tokens.size()) ? pr.corrupt_tokens[size_t(p)] : "all"), pw);
  std::cout << "\n";
  for (int r = int(pr.layers.size()) - 1; r >= 0; --r) {
    std::cout << cell("L" + std::to_string(pr.layers[size_t(r)]), 6);
    for (size_t p = 0; p < pr.positions.size(); ++p)
      std::cout << cell(fixed(pr.recovery[r][int64_t(p)][0].item<double>(), 2), pw);
    std::cout << "\n";
  }
  rep.patching(pr);

  // ---- 5. SAE ----
  section("5. Sparse autoencoder (TopK, streaming)");
  std::cout << std::flush;
  std::string corpus_path = data;
  if (o.max_docs > 0) corpus_path = demo::first_lines(data, o.max_docs, join_path(o.out, "sae_corpus.txt"));
  TextCorpus corpus = TextCorpus::open(corpus_path, /*lines=*/true);
  cfg.context_size = c.n_ctx;
  cfg.validate();
  SaeTrainOptions so;
  so.out_dir = join_path(o.out, "sae");
  so.quiet = g.quiet;
  std::vector<std::pair<int64_t, std::map<std::string, double>>> curve;
  so.on_sync = [&](int64_t step, const std::map<std::string, double>& mt) { curve.emplace_back(step, mt); };
  SaeTrainResult sr = train_sae(m, layer, "resid_post", corpus, cfg, so);
  std::cout << "SAE metrics on held-out tokens:";
  for (const char* key : {"fvu", "explained_variance", "cosine", "l0", "frac_active", "dead_frac"})
    if (sr.final_metrics.count(key)) std::cout << "  " << key << "=" << fixed(sr.final_metrics.at(key), 3);
  std::cout << "\n";
  rep.sae(cfg, layer, sr, curve, corpus.size());

  // ---- 6. features ----
  section("6. SAE features and their top-activating contexts");
  demo::FeatureOptions fo;
  fo.n_features = o.n_features;
  fo.n_contexts = o.n_contexts;
  fo.progress = !g.quiet;
  std::vector<demo::Feature> feats = demo::top_features(m, sr.sae, layer, corpus, fo);
  for (const auto& f : feats) {
    std::cout << "feature " << f.id << " (" << f.why << "; active on " << fixed(100 * f.density, 2)
              << "% of tokens, max " << fixed(f.contexts.empty() ? 0.0 : f.contexts[0].value, 2) << ")\n";
    for (const auto& cx : f.contexts) std::cout << "  " << fixed(cx.value, 2) << "  " << demo::context_text(cx) << "\n";
  }
  rep.features(feats);

  const std::string path = join_path(o.out, "report.html");
  rep.footer("Made by `mlxterp demo` in " + format_duration(total.seconds()) + "; the SAE is in " + so.out_dir + ".");
  rep.save(path);
  std::cout << "\nreport: " << path << "  (one self-contained HTML file; the SAE is in " << so.out_dir << ")\n"
            << "total time: " << format_duration(total.seconds()) << "\n";
  return 0;
}

const bool registered = register_command(
    "demo", "The tour on the embedded model: tokenize, trace, logit lens, patching, an SAE and its features, an HTML report",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "Model (default: models/kjv-llama of this checkout)");
      app.add_option("--data", o->data, "Text for the SAE, one document per line (default: demo_corpus.txt beside the model)");
      app.add_option("--out", o->out, "Output directory (report.html, sae/)")->capture_default_str();
      app.add_option("--prompt", o->prompt, "Prompt to tokenize, trace and lens")->capture_default_str();
      app.add_option("--generate-prompt", o->generate_prompt, "Prompt for the greedy continuation")->capture_default_str();
      app.add_option("--clean", o->clean, "Clean prompt for patching")->capture_default_str();
      app.add_option("--corrupted", o->corrupted, "Corrupted prompt (same number of tokens)")->capture_default_str();
      app.add_option("--answer", o->answer, "Answer token (default: the clean prompt's top-1)");
      app.add_option("--wrong", o->wrong, "Wrong token (default: the corrupted prompt's top-1)");
      app.add_option("--layer", o->layer, "Residual layer for the SAE (default: n_layers / 2)");
      app.add_option("--expansion", o->expansion, "SAE expansion factor")->capture_default_str();
      app.add_option("--k", o->k, "TopK: active latents per token")->capture_default_str();
      app.add_option("--batch", o->batch, "SAE batch (tokens per step)")->capture_default_str();
      app.add_option("--epochs", o->epochs, "SAE epochs over the text")->capture_default_str();
      app.add_option("--lr", o->lr, "SAE learning rate")->capture_default_str();
      app.add_option("--max-docs", o->max_docs, "Use only the first N documents of the text (0 = all)")->capture_default_str();
      app.add_option("--features", o->n_features, "Features to show")->capture_default_str();
      app.add_option("--contexts", o->n_contexts, "Contexts per feature")->capture_default_str();
      app.add_option("--seed", o->seed, "Seed of the SAE")->capture_default_str();
      app.add_flag("--quick", o->quick,
                   "A short run (seconds): the first 240 documents, 1 epoch, 4 features, 3 contexts each");
      return [o, &g, &app] {
        apply_quick(*o, app);
        return run_demo(*o, g);
      };
    });

}  // namespace
}  // namespace mlxterp::cli
