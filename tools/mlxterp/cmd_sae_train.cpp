// mlxterp sae train --model M --layer N --component C --data F --out DIR [--config F.json] [--set key=value]...
//                   [--resume DIR] [--log-dir DIR]
#include <iostream>

#include "cli.hpp"
#include "mlxterp/sae_train.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, component = "mlp", data, out, config, resume, log_dir;
  int layer = -1;
  bool lines = false, help_config = false, plain_progress = false;
  std::vector<std::string> sets;
  int64_t stop_after = -1;
};

void print_config_help() {
  size_t w = 0;
  for (const auto& f : SAEConfig::fields()) w = std::max(w, f.name.size());
  std::cout << "SAEConfig fields (--set key=value, or a JSON object in --config):\n";
  for (const auto& f : SAEConfig::fields())
    std::cout << "  " << f.name << std::string(w + 2 - f.name.size(), ' ') << f.type << " = " << f.default_value
              << "\n      " << f.doc << "\n";
}

bool is_cache_dir(const std::string& p) { return is_directory(p) && file_exists(join_path(p, "meta.json")); }

// Canonical site name for (layer, component) without a model (cache mode): model.layers.N[.component].
std::string canonical_site(int layer, std::string comp) {
  if (comp == "resid_post") comp = "";
  if (starts_with(comp, "attn")) comp = "self_attn" + comp.substr(4);
  return cat("model.layers.", layer, comp.empty() ? "" : "." + comp);
}

int run(const Opts& o, const Globals& g) {
  if (o.help_config) {
    print_config_help();
    return 0;
  }
  if (o.data.empty()) throw UsageError("sae train: --data is required (a text/JSONL file or a cache directory)");
  if (o.layer < 0) throw UsageError("sae train: --layer is required (a block index >= 0)");
  std::string out = o.out.empty() ? o.resume : o.out;
  if (out.empty()) throw UsageError("sae train: --out DIR is required");

  SAEConfig cfg;
  if (!o.resume.empty() && o.config.empty()) {
    // Resuming without a config: take the checkpoint's (--set then changes what may change, e.g.
    // optimizer_state_dtype or log_every).
    std::string ck = join_path(o.resume, "checkpoint.safetensors");
    MLXTERP_CHECK(file_exists(ck), "--resume ", o.resume, ": no checkpoint.safetensors there; expected the --out ",
                  "directory of an interrupted `sae train` run");
    SafeTensors st = SafeTensors::open(ck);
    MLXTERP_CHECK(st.metadata().count("mlxterp_checkpoint"), ck, ": not an mlxterp SAE checkpoint");
    cfg.apply_json(nlohmann::json::parse(st.metadata().at("mlxterp_checkpoint"))["config"], ck);
  }
  if (!o.config.empty()) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(o.config));
    } catch (const nlohmann::json::exception& e) {
      MLXTERP_FAIL(o.config, ": not valid JSON: ", e.what());
    }
    // An SAE's own config.json works too: take its "config" object.
    if (j.is_object() && j.value("format", "") == "mlxterp-sae" && j.contains("config")) j = j["config"];
    cfg.apply_json(j, o.config);
  }
  for (const auto& s : o.sets) cfg.set_assignment(s);
  if (cfg.device == "auto" && g.device != "cpu") cfg.device = g.device;
  cfg.validate();

  SaeTrainOptions topt;
  topt.out_dir = out;
  topt.log_dir = o.log_dir;
  topt.resume_dir = o.resume;
  topt.quiet = g.quiet;
  topt.plain_progress = o.plain_progress;
  topt.stop_after_steps = o.stop_after;

  if (is_cache_dir(o.data)) {
    std::string site;
    if (!o.model.empty()) {
      InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
      site = m.sites()[m.sites().resolve_component(o.layer, o.component)].name;
    } else {
      site = canonical_site(o.layer, o.component);
    }
    if (!g.quiet) {
      std::printf("🎯 Training SAE on Layer %d %s\n📊 Config: %lldx expansion, k=%lld (%s)\n", o.layer,
                  o.component.c_str(), (long long)cfg.expansion_factor, (long long)cfg.k, cfg.sae_type.c_str());
    }
    at::Device dev = cfg.device == "auto" ? g.torch_device() : parse_device(cfg.device);
    CacheActivationSource src(o.data, site, cfg.validation_split, uint64_t(cfg.seed), dev);
    nlohmann::ordered_json meta = {{"model", src.meta().value("model", "")},
                                   {"site", site},
                                   {"layer", o.layer},
                                   {"component", o.component},
                                   {"data", o.data}};
    train_sae(src, cfg, meta, topt);
    return 0;
  }
  if (o.model.empty()) throw UsageError("sae train: --model is required (unless --data is an activation cache)");
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  TextCorpus corpus = TextCorpus::open(o.data, o.lines);
  train_sae(m, o.layer, o.component, corpus, cfg, topt);
  return 0;
}

const bool registered = register_command(
    "sae train", "Train a sparse autoencoder on one site's activations", [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin");
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--layer", o->layer, "Block index");
      app.add_option("--component", o->component, "Site within the block: mlp, self_attn, resid_post, mlp.down_proj, ...")
          ->capture_default_str();
      app.add_option("--data", o->data,
                     "Text file (blank-line-separated documents), --lines file, JSONL with \"text\" (or \"ids\"), "
                     "or an activation cache directory");
      app.add_flag("--lines", o->lines, "One document per line");
      app.add_option("--out", o->out, "Output directory (weights.safetensors, config.json, checkpoint.safetensors)");
      app.add_option("--config", o->config, "JSON file of SAEConfig fields");
      app.add_option("--set", o->sets, "key=value for one SAEConfig field (repeatable)");
      app.add_option("--resume", o->resume, "Continue from DIR/checkpoint.safetensors (exactly)");
      app.add_option("--log-dir", o->log_dir, "metrics.jsonl, TensorBoard events, training_curves.html");
      app.add_flag("--help-config", o->help_config, "List every SAEConfig field with its default and meaning");
      app.add_flag("--plain-progress", o->plain_progress, "Plain progress lines even on a terminal");
      app.add_option("--stop-after", o->stop_after, "Checkpoint and stop at this step (for testing resume)");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
