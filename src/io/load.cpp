// load_model: picks the format from the path, reads config + weights, builds the architecture,
// moves it to the requested device/dtype and attaches the tokenizer found beside it.
#include "mlxterp/error.hpp"
#include "mlxterp/model.hpp"
#include "mlxterp/tokenizer.hpp"

namespace mlxterp {

ModelFiles read_hf_model(const std::string& dir) { return read_hf_model(dir, ""); }

ModelFiles read_hf_model(const std::string& dir, const std::string& weights_file) {
  std::string cfg_path = join_path(dir, "config.json");
  MLXTERP_CHECK(file_exists(cfg_path), dir, ": no config.json; expected a Hugging Face model directory (config.json + "
                                            "model.safetensors), a .gguf file or a llama2.c .bin");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    MLXTERP_FAIL(cfg_path, ": not valid JSON: ", e.what());
  }
  ModelFiles out;
  out.config = parse_hf_config(j, cfg_path);
  out.weights = weights_file.empty() ? load_safetensors_model(dir) : SafeTensors::open(weights_file).all();
  for (const char* cand : {"tokenizer.json", "tokenizer.model"}) {
    std::string p = join_path(dir, cand);
    if (file_exists(p)) {
      out.tokenizer_path = p;
      break;
    }
  }
  return out;
}

LoadedModel load_model(const std::string& path, const LoadOptions& options) {
  MLXTERP_CHECK(file_exists(path), path, ": no such file or directory; expected a Hugging Face model directory, a "
                                         ".gguf file or a llama2.c .bin");
  ModelFiles files;
  LoadedModel out;
  out.source = path;
  if (is_directory(path)) {
    files = read_hf_model(path);
    out.format = "hf";
  } else if (ends_with(to_lower(path), ".gguf")) {
    files = read_gguf_model(path);
    out.format = "gguf";
  } else if (ends_with(to_lower(path), ".safetensors")) {
    // A weights file inside a HF directory: the directory's model.safetensors (or a listed shard) means
    // the whole model; any other file is loaded alone, with the directory's config.json.
    std::string dir = dirname(path).empty() ? "." : dirname(path);
    bool whole = basename(path) == "model.safetensors";
    std::string index = join_path(dir, "model.safetensors.index.json");
    if (!whole && file_exists(index)) {
      auto j = nlohmann::json::parse(read_file(index), nullptr, false);
      if (j.is_object() && j.contains("weight_map") && j["weight_map"].is_object())
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
          whole |= it.value().is_string() && it.value().get<std::string>() == basename(path);
    }
    files = read_hf_model(dir, whole ? "" : path);
    out.format = "hf";
  } else if (ends_with(to_lower(path), ".json") && basename(path) == "config.json") {
    files = read_hf_model(dirname(path).empty() ? "." : dirname(path));
    out.format = "hf";
  } else {
    // GGUF files are recognised by their magic even without the extension.
    auto f = MappedFile::open(path);
    if (f->size() >= 4 && std::memcmp(f->data(), "GGUF", 4) == 0) {
      files = read_gguf_model(path);
      out.format = "gguf";
    } else {
      files = read_llama2c_model(path);
      out.format = "llama2c";
    }
  }
  std::unique_ptr<Model> model = create_model(files.config, std::move(files.weights));
  model->to(options.device, options.dtype);
  out.model = std::move(model);
  std::string tok = options.tokenizer_path.empty() ? files.tokenizer_path : options.tokenizer_path;
  if (options.load_tokenizer && !tok.empty()) out.tokenizer = load_tokenizer(tok);
  return out;
}

}  // namespace mlxterp
