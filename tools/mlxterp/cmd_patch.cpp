// mlxterp patch     --model M --clean S --corrupted S [--component C] [--layers ...] [--positions all|each]
//                   [--metric l2|cosine|mse|logit-diff|prob|kl|ce] [--answer TOKEN --wrong TOKEN] [--json F] [--html F]
#include <iostream>

#include "patch_cli.hpp"

namespace mlxterp::cli {
namespace {

using namespace patch_cli;

int run_patch(const Opts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  Prompt clean = get_prompt(o.clean, "clean"), corrupted = get_prompt(o.corrupted, "corrupted");
  PatchOptions po = make_options(m, o);
  po.progress = !g.quiet;
  PatchResult r = activation_patching(m, clean, corrupted, po);
  report::Page page = patching_page(r);
  if (!write_outputs(o.json, o.html, r.to_json(), &page)) {
    std::cout << "metric " << r.metric << ": clean " << report::fmt(r.clean_value, "%.4f") << ", corrupted "
              << report::fmt(r.corrupt_value, "%.4f") << "\n";
    print_matrix(r.recovery, r.layers, r.positions, r.n_heads, r.corrupt_tokens);
  }
  return 0;
}

const bool reg_patch = register_command(
    "patch", "Activation patching: restore clean activations in the corrupted run, per layer / position / head",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      add_common(app, *o);
      return [o, &g] { return run_patch(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
