// Helpers shared by the analysis subcommands (logit-lens, tuned-lens, patch, attribute, causal-trace,
// steer, attention, dla): prompt options, layer lists, JSON/HTML outputs.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli.hpp"
#include "mlxterp/analysis_common.hpp"
#include "mlxterp/report.hpp"

namespace mlxterp::cli {

// --prompt S | --ids 1,2,3 | --prompt-file F (exactly one). `name` is the option stem ("prompt",
// "clean", ...) for messages; ids are used verbatim (no BOS).
struct PromptOption {
  std::string text, ids, file;
  bool text_set = false;
};
void add_prompt_options(CLI::App& app, PromptOption& p, const std::string& stem, const std::string& help);
Prompt get_prompt(const PromptOption& p, const std::string& stem);

// "0,5,10" / "all" / "" -> layer list (empty = all). Negative entries count from the end.
std::vector<int> parse_layer_list(const std::string& s, const std::string& option);

// Writes --json F (F = "-" prints to stdout) and --html F; returns true if JSON went to stdout.
bool write_outputs(const std::string& json_path, const std::string& html_path, const nlohmann::json& j,
                   const report::Page* page);

// Reads a prompts file: one prompt per line (blank lines skipped).
std::vector<Prompt> read_prompt_lines(const std::string& path, const std::string& option);
// Reads a text corpus: documents separated by blank lines (or one per line with `lines`).
std::vector<std::string> read_documents(const std::string& path, bool lines);

}  // namespace mlxterp::cli
