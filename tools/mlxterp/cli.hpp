// The mlxterp command-line tool: each subcommand lives in its own file and registers itself.
//
//   // tools/mlxterp/cmd_components.cpp
//   static const bool registered = mlxterp::cli::register_command(
//       "components", "List every capturable site with its shape",
//       [](CLI::App& app, mlxterp::cli::Globals& g) {
//         auto opts = std::make_shared<Opts>();
//         app.add_option("--model", opts->model, "...")->required();
//         return [opts, &g] { ...; return 0; };      // runs after parsing; returns the exit code
//       });
//
// A path with a space ("sae train") nests under a parent command created on first use.
// Errors: throw mlxterp::Error (exit 1, "error: ..." on stderr) or mlxterp::UsageError (exit 2).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "mlxterp/error.hpp"
#include "mlxterp/model.hpp"

namespace mlxterp {
class InterpretableModel;
}

namespace mlxterp::cli {

// Options every subcommand accepts (CLI.md): --device, --dtype, --threads, --quiet.
struct Globals {
  std::string device = "cpu";
  std::string dtype;  // "" = f32 on CPU, bf16 on CUDA
  int threads = 0;    // 0 = libtorch default
  bool quiet = false;

  at::Device torch_device() const;
  at::ScalarType torch_dtype() const;
  LoadOptions load_options() const;
};

using Runner = std::function<int()>;
using Setup = std::function<Runner(CLI::App& app, Globals& globals)>;

bool register_command(const std::string& path, const std::string& help, Setup setup);

// Shared helpers for subcommands.
// Loads --model with the global device/dtype, printing nothing. Throws mlxterp::Error.
LoadedModel load_model_for_cli(const std::string& model, const std::string& tokenizer, const Globals& g);
// Parses "1,2,3" into ids; throws mlxterp::Error naming the option.
std::vector<int64_t> parse_id_list(const std::string& s, const std::string& option);
std::vector<std::string> parse_name_list(const std::string& s);

// Parses one `--intervene SPEC` (CLI.md): SITE=zero | SITE=scale:F | SITE=clamp:LO:HI |
// SITE=noise:STD[:SEED] | SITE=add:FILE.safetensors[:TENSOR][*STRENGTH] | SITE=replace:FILE.safetensors[:TENSOR].
// Returns (site name as written, intervention). Throws mlxterp::Error naming the spec.
std::pair<std::string, InterventionFn> parse_intervention_cli(const std::string& spec, const InterpretableModel& m);

}  // namespace mlxterp::cli
