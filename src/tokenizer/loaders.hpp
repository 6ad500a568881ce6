// The tokenizer loaders (internal); load_tokenizer() in tokenizer.cpp picks one.
#pragma once

#include <memory>
#include <string>

#include "mlxterp/tokenizer.hpp"

namespace mlxterp::tok {

std::shared_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& path);  // tokenizer.json
std::shared_ptr<Tokenizer> load_gguf_vocab(const std::string& path);         // .gguf metadata
std::shared_ptr<Tokenizer> load_llama2c_vocab(const std::string& path);      // llama2.c tok*.bin
std::shared_ptr<Tokenizer> load_sentencepiece(const std::string& path);      // .model (libsentencepiece)

}  // namespace mlxterp::tok
