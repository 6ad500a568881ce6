// mlxterp sae export --sae DIR --format native|saelens|sparsify --out DIR
// mlxterp sae import --sae DIR [--format auto|saelens|sparsify|native] --out DIR   (writes the native format)
#include <iostream>

#include "cli.hpp"
#include "mlxterp/sae.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string sae, format, out;
};

int run_export(const Opts& o, const Globals& g) {
  SAE s = SAE::load(o.sae);
  export_sae(s, o.format, o.out);
  if (!g.quiet) std::cout << "✓ Exported " << s.describe() << " as " << o.format << " to " << o.out << "\n";
  return 0;
}

int run_import(const Opts& o, const Globals& g) {
  SAE s = import_sae(o.sae, o.format);
  s.save(o.out);
  if (!g.quiet) std::cout << "✓ Imported " << s.describe() << " from " << o.sae << " to " << o.out << "\n";
  return 0;
}

const bool export_registered = register_command(
    "sae export", "Write an SAE as native, SAELens or sparsify files (normalisation folded in)",
    [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      app.add_option("--sae", o->sae, "SAE directory (native, SAELens or sparsify)")->required();
      app.add_option("--format", o->format, "native | saelens | sparsify")
          ->required()
          ->check(CLI::IsMember({"native", "saelens", "sparsify"}));
      app.add_option("--out", o->out, "Output directory")->required();
      return [o, &g] { return run_export(*o, g); };
    });

const bool import_registered = register_command(
    "sae import", "Read an SAELens or sparsify SAE into the native format", [](CLI::App& app, Globals& g) {
      auto o = std::make_shared<Opts>();
      o->format = "auto";
      app.add_option("--sae", o->sae, "SAELens directory (cfg.json + sae_weights.safetensors) or sparsify directory")
          ->required();
      app.add_option("--format", o->format, "auto | saelens | sparsify | native")
          ->capture_default_str()
          ->check(CLI::IsMember({"auto", "native", "saelens", "sparsify"}));
      app.add_option("--out", o->out, "Output directory (native format)")->required();
      return [o, &g] { return run_import(*o, g); };
    });

}  // namespace
}  // namespace mlxterp::cli
