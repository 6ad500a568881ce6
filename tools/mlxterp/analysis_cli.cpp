// Helpers shared by the analysis subcommands.
#include "analysis_cli.hpp"

#include <iostream>

#include "mlxterp/util.hpp"

namespace mlxterp::cli {

void add_prompt_options(CLI::App& app, PromptOption& p, const std::string& stem, const std::string& help) {
  app.add_option("--" + stem, p.text, help + " (text; needs the model's tokenizer)");
  std::string ids_opt = stem == "prompt" ? "--ids" : "--" + stem + "-ids";
  app.add_option(ids_opt, p.ids, help + " as token ids 1,2,3 (used verbatim, no BOS added)");
  if (stem == "prompt") app.add_option("--prompt-file", p.file, help + " read from a file (bytes verbatim)");
}

Prompt get_prompt(const PromptOption& p, const std::string& stem) {
  const std::string ids_opt = stem == "prompt" ? "--ids" : "--" + stem + "-ids";
  int n = int(!p.text.empty()) + int(!p.ids.empty()) + int(!p.file.empty());
  if (n != 1)
    throw UsageError("give exactly one of --" + stem + ", " + ids_opt + (stem == "prompt" ? ", --prompt-file" : "") +
                     (n ? " (got several)" : ""));
  if (!p.ids.empty()) {
    std::vector<int32_t> ids;
    for (int64_t v : parse_id_list(p.ids, ids_opt)) {
      MLXTERP_CHECK(v >= 0 && v <= INT32_MAX, ids_opt, ": token id ", v, " is out of range");
      ids.push_back(int32_t(v));
    }
    MLXTERP_CHECK(!ids.empty(), ids_opt, ": expected at least one token id");
    return Prompt::ids(ids);
  }
  if (!p.file.empty()) return Prompt(read_file(p.file));
  return Prompt(p.text);
}

std::vector<int> parse_layer_list(const std::string& s, const std::string& option) {
  std::vector<int> out;
  if (trim(s).empty() || trim(s) == "all") return out;
  for (int64_t v : parse_id_list(s, option)) out.push_back(int(v));
  return out;
}

bool write_outputs(const std::string& json_path, const std::string& html_path, const nlohmann::json& j,
                   const report::Page* page) {
  bool to_stdout = json_path == "-";
  if (!html_path.empty() && page) page->save(html_path);
  if (to_stdout) std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  else if (!json_path.empty()) report::write_json(json_path, j);
  return to_stdout;
}

std::vector<Prompt> read_prompt_lines(const std::string& path, const std::string& option) {
  std::vector<Prompt> out;
  for (const auto& line : split(read_file(path), '\n')) {
    std::string l = line;
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (trim(l).empty()) continue;
    out.push_back(Prompt(l));
  }
  MLXTERP_CHECK(!out.empty(), option, " ", path, ": no prompts (expected one per line)");
  return out;
}

std::vector<std::string> read_documents(const std::string& path, bool lines) {
  std::string text = read_file(path);
  std::vector<std::string> docs;
  if (lines) {
    for (const auto& l : split(text, '\n'))
      if (!trim(l).empty()) docs.push_back(l);
    return docs;
  }
  std::string cur;
  for (const auto& l0 : split(text, '\n')) {
    std::string l = l0;
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (trim(l).empty()) {
      if (!trim(cur).empty()) docs.push_back(cur);
      cur.clear();
    } else {
      cur += cur.empty() ? l : "\n" + l;
    }
  }
  if (!trim(cur).empty()) docs.push_back(cur);
  return docs;
}

}  // namespace mlxterp::cli
