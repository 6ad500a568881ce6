// mlxterp attribute --model M --clean S --corrupted S [same options as patch] [--validate]
//   Gradient attribution patching; --validate also runs real activation patching and reports the correlation.
#include "patch_cli.hpp"

namespace mlxterp::cli {
namespace {

using namespace patch_cli;

int run_attribute(const Opts& o, const Globals& g) {
  InterpretableModel m(load_model_for_cli(o.model, o.tokenizer, g));
  Prompt clean = get_prompt(o.clean, "clean"), corrupted = get_prompt(o.corrupted, "corrupted");
  PatchOptions po = make_options(m, o);
  AttributionResult a = attribution_patching(m, clean, corrupted, po);
  if (o.validate) {
    po.progress = !g.quiet;
    validate_attribution(m, clean, corrupted, po, a);
  }
  report::Page page = attribution_page(a);
  if (!write_outputs(o.json, o.html, a.to_json(), &page)) {
    std::cout << "metric " << a.metric << ": clean " << report::fmt(a.clean_value, "%.4f") << ", corrupted "
              << report::fmt(a.corrupt_value, "%.4f") << "\nestimated ";
    print_matrix(a.recovery, a.layers, a.positions, a.n_heads, a.corrupt_tokens);
    if (o.validate)
      std::cout << "validation: Pearson r between attribution estimates and real patching = " << report::fmt(a.pearson_r, "%.4f")
                << " over " << a.estimate.numel() << " patches\n";
  }
  return 0;
}

const bool reg_attr = register_command(
    "attribute", "Attribution patching: gradient x activation-difference estimate of activation patching",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      add_common(app, *o);
      app.add_flag("--validate", o->validate, "Also run real activation patching and report the Pearson correlation");
      return [o, &g] { return run_attribute(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
