// mlxterp cache --model M --sites S1,S2 --data F --out DIR [--lines] [--context-size N] [--store-dtype f16]
//               [--shard-tokens N] [--max-tokens N] [--text-batch-size N]
// Writes activations to disk for training SAEs without the model (docs/formats.md). Re-running the same
// command after an interruption resumes where the last complete shard ended.
#include <iostream>

#include "cli.hpp"
#include "mlxterp/progress.hpp"
#include "mlxterp/sae_data.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, sites, data, out, store_dtype = "f16";
  bool lines = false, keep_special = false;
  int64_t context_size = 256, text_batch_size = 32, shard_tokens = 0, max_tokens = 0;
};

int run(const Opts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  TextCorpus corpus = TextCorpus::open(o.data, o.lines);
  CacheWriteOptions w;
  MLXTERP_CHECK(o.context_size >= 2, "--context-size must be >= 2, got ", o.context_size);
  MLXTERP_CHECK(o.text_batch_size >= 1, "--text-batch-size must be >= 1, got ", o.text_batch_size);
  MLXTERP_CHECK(o.shard_tokens >= 0, "--shard-tokens must be >= 0 (0 = about 256 MB per shard), got ", o.shard_tokens);
  MLXTERP_CHECK(o.max_tokens >= 0, "--max-tokens must be >= 0 (0 = all), got ", o.max_tokens);
  w.harvest.context_size = std::min<int64_t>(o.context_size, m.model().config().n_ctx);
  w.harvest.text_batch_size = o.text_batch_size;
  w.harvest.exclude_special = !o.keep_special;
  w.store_dtype = parse_dtype(o.store_dtype);
  w.shard_tokens = o.shard_tokens;
  w.max_tokens = o.max_tokens;
  w.quiet = g.quiet;
  Timer t;
  int64_t n = write_activation_cache(m, corpus, parse_name_list(o.sites), o.out, w);
  if (!g.quiet)
    std::cout << "✓ Cached " << n << " tokens to " << o.out << " in " << format_duration(t.seconds()) << "\n";
  return 0;
}

const bool registered = register_command(
    "cache", "Write activations of some sites to disk (for training many SAEs)", [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--sites", o->sites, "Comma-separated site names (any alias), e.g. model.layers.2")->required();
      app.add_option("--data", o->data, "Text file, --lines file or JSONL (\"text\" or \"ids\")")->required();
      app.add_option("--out", o->out, "Cache directory (meta.json + shard_NNNNN.safetensors)")->required();
      app.add_flag("--lines", o->lines, "One document per line");
      app.add_option("--context-size", o->context_size, "Tokens per sequence")->capture_default_str();
      app.add_option("--text-batch-size", o->text_batch_size, "Sequences per forward")->capture_default_str();
      app.add_option("--store-dtype", o->store_dtype, "f16 | bf16 | f32")->capture_default_str();
      app.add_option("--shard-tokens", o->shard_tokens, "Rows per shard (0 = about 256 MB)")->capture_default_str();
      app.add_option("--max-tokens", o->max_tokens, "Stop after this many tokens (0 = all)")->capture_default_str();
      app.add_flag("--keep-special", o->keep_special, "Keep BOS/EOS/PAD positions");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
