// mlxterp components --model M [--layer N] [--json]
#include <iostream>

#include "cli.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, prompt = "Hello";
  int layer = -1;
  bool json = false;
};

int run(const Opts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  MLXTERP_CHECK(o.layer < m.n_layers(), "--layer: the model has ", m.n_layers(), " layers (0 .. ", m.n_layers() - 1,
                "), got ", o.layer);
  auto comps = m.components(o.layer);
  if (o.json) {
    nlohmann::ordered_json j = nlohmann::ordered_json::array();
    for (const auto& c : comps) {
      nlohmann::ordered_json e;
      e["name"] = c.name;
      e["shape"] = c.shape;
      e["layer"] = c.layer;
      e["aliases"] = m.sites().aliases(m.sites().find(c.name));
      j.push_back(e);
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  size_t w = 0;
  for (const auto& c : comps) w = std::max(w, c.name.size());
  for (const auto& c : comps) {
    std::cout << c.name << std::string(w + 2 - c.name.size(), ' ') << shape_str(c.shape) << "\n";
  }
  return 0;
}

const bool registered = register_command(
    "components", "List every capturable site with its shape (for a short prompt)", [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "HF directory, .gguf or llama2.c .bin")->required();
      app.add_option("--tokenizer", o->tokenizer, "Override the tokenizer found beside the model");
      app.add_option("--layer", o->layer, "Only this block's sites");
      app.add_option("--prompt", o->prompt, "Prompt used to measure shapes")->capture_default_str();
      app.add_flag("--json", o->json, "JSON output");
      return [o, &g] { return run(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
