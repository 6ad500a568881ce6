// mlxterp tokenize (--model M | --tokenizer T) (--text S | --text-file F) [--no-bos] [--json]
#include <cstring>
#include <iostream>

#include "cli.hpp"
#include "mlxterp/tokenizer.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp::cli {
namespace {

struct Opts {
  std::string model, tokenizer, text, text_file;
  bool no_bos = false, json = false, show = false;
};

// The tokenizer of --model without loading its weights: the file a model load would pick.
std::string tokenizer_beside_model(const std::string& model) {
  MLXTERP_CHECK(file_exists(model), "--model ", model, ": no such file or directory");
  if (is_directory(model)) return model;                                    // tokenizer.json / tokenizer.model
  const std::string lower = to_lower(model);
  if (ends_with(lower, ".gguf")) return model;                              // vocabulary in the metadata
  if (ends_with(lower, ".safetensors") || basename(model) == "config.json") // HF file inside a directory
    return dirname(model).empty() ? "." : dirname(model);
  {
    auto f = MappedFile::open(model);
    if (f->size() >= 4 && std::memcmp(f->data(), "GGUF", 4) == 0) return model;
  }
  // llama2.c checkpoint: tokenizer.bin, tok*.bin, tokenizer.model beside it (the same search as a model load).
  std::string tok = read_llama2c_model(model).tokenizer_path;
  MLXTERP_CHECK(!tok.empty(), "--model ", model, ": no tokenizer beside it; expected tokenizer.bin, tok*.bin or "
                              "tokenizer.model in the same directory (or pass --tokenizer)");
  return tok;
}

int run(const Opts& o) {
  MLXTERP_CHECK(!o.model.empty() || !o.tokenizer.empty(), "tokenize: give --model M or --tokenizer T");
  MLXTERP_CHECK(o.text_file.empty() || o.text.empty(), "tokenize: give --text or --text-file, not both");
  std::string path = o.tokenizer.empty() ? tokenizer_beside_model(o.model) : o.tokenizer;
  auto tok = load_tokenizer(path);
  std::string text = o.text_file.empty() ? o.text : read_file(o.text_file);
  auto ids = tok->encode(text, {.add_special = !o.no_bos});
  if (o.json) {
    std::cout << nlohmann::json(ids).dump() << "\n";
  } else {
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::cout << line << "\n";
  }
  if (o.show) {
    for (int32_t id : ids) std::cerr << id << "\t" << nlohmann::json(tok->token_to_str(id)).dump() << "\n";
  }
  return 0;
}

const bool registered = register_command(
    "tokenize", "Print the token ids of a text", [](CLI::App& app, Globals&) {
      auto o = std::make_shared<Opts>();
      app.add_option("--model", o->model, "Model whose tokenizer to use (HF directory, .gguf, llama2.c .bin)");
      app.add_option("--tokenizer", o->tokenizer,
                     "tokenizer.json, tokenizer.model, a directory holding one, a .gguf or a llama2.c tokenizer .bin");
      auto* text = app.add_option("--text", o->text, "The text");
      auto* file = app.add_option("--text-file", o->text_file, "Read the text from this file (bytes verbatim)");
      text->excludes(file);
      app.add_flag("--no-bos", o->no_bos, "Never add BOS (or any template token)");
      app.add_flag("--json", o->json, "Print a JSON array");
      app.add_flag("--show", o->show, "Also print each id with its display form on stderr");
      return [o] { return run(*o); };
    });

}  // namespace
}  // namespace mlxterp::cli
