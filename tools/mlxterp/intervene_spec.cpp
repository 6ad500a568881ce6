// The `--intervene SPEC` forms of CLI.md, shared by trace and generate: the library's parser
// (iv::parse_intervention in interventions.hpp) is the one definition of the forms.
#include "cli.hpp"
#include "mlxterp/interventions.hpp"
#include "mlxterp/trace.hpp"

namespace mlxterp::cli {

std::pair<std::string, InterventionFn> parse_intervention_cli(const std::string& spec, const InterpretableModel& m) {
  return iv::parse_intervention(spec, m.model());
}

}  // namespace mlxterp::cli
