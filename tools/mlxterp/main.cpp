// mlxterp — the command-line entry point. Subcommands register themselves (see cli.hpp).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <iostream>
#include <map>

#include "cli.hpp"
#include "mlxterp/tokenizer.hpp"

namespace mlxterp::cli {

namespace {
struct Entry {
  std::string path, help;
  Setup setup;
};
std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}
}  // namespace

bool register_command(const std::string& path, const std::string& help, Setup setup) {
  registry().push_back({path, help, std::move(setup)});
  return true;
}

at::Device Globals::torch_device() const { return parse_device(device); }

at::ScalarType Globals::torch_dtype() const {
  if (!dtype.empty()) return parse_dtype(dtype);
  return torch_device().is_cuda() ? at::kBFloat16 : at::kFloat;
}

LoadOptions Globals::load_options() const {
  LoadOptions o;
  o.device = torch_device();
  o.dtype = torch_dtype();
  return o;
}

LoadedModel load_model_for_cli(const std::string& model, const std::string& tokenizer, const Globals& g) {
  LoadOptions o = g.load_options();
  o.tokenizer_path = tokenizer;
  return load_model(model, o);
}

std::vector<int64_t> parse_id_list(const std::string& s, const std::string& option) {
  std::vector<int64_t> out;
  for (const auto& part : split(s, ',')) {
    std::string t = trim(part);
    if (t.empty()) continue;
    out.push_back(parse_int(t, option));
  }
  return out;
}

std::vector<std::string> parse_name_list(const std::string& s) {
  std::vector<std::string> out;
  for (const auto& part : split(s, ',')) {
    std::string t = trim(part);
    if (!t.empty()) out.push_back(t);
  }
  return out;
}

}  // namespace mlxterp::cli

int main(int argc, char** argv) {
  using namespace mlxterp;
  using namespace mlxterp::cli;
  CLI::App app{"mlxterp — mechanistic interpretability for transformer language models (C++/libtorch)"};
  app.set_version_flag("--version", std::string("mlxterp ") + MLXTERP_VERSION);
  app.require_subcommand(1);
  Globals g;
  app.add_option("--device", g.device, "cpu | cuda | cuda:N")->capture_default_str();
  app.add_option("--dtype", g.dtype, "f32 | bf16 | f16 (default f32 on CPU, bf16 on CUDA)");
  app.add_option("--threads", g.threads, "CPU threads for libtorch (default: all cores)");
  app.add_flag("--quiet", g.quiet, "Only results and errors on the terminal");

  std::map<std::string, CLI::App*> parents;
  Runner runner;
  std::vector<std::pair<CLI::App*, Runner>> runners;
  for (auto& e : registry()) {
    CLI::App* parent = &app;
    std::vector<std::string> parts = split(e.path, ' ');
    std::string prefix;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      prefix += (prefix.empty() ? "" : " ") + parts[i];
      auto it = parents.find(prefix);
      if (it == parents.end()) {
        CLI::App* sub = parent->add_subcommand(parts[i], parts[i] + " commands (see --help)");
        sub->require_subcommand(1);
        sub->fallthrough();
        it = parents.emplace(prefix, sub).first;
      }
      parent = it->second;
    }
    CLI::App* sub = parent->add_subcommand(parts.back(), e.help);
    sub->fallthrough();
    parents.emplace(e.path, sub);
    runners.emplace_back(sub, e.setup(*sub, g));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "error: " << e.what() << " (see --help)\n";
    return 2;
  }

  try {
    if (g.threads > 0) at::set_num_threads(g.threads);
    for (auto& [sub, run] : runners) {
      if (sub->parsed() && sub->get_subcommands().empty()) return run();
    }
    std::cerr << "error: no subcommand given (see --help)\n";
    return 2;
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
