// GGUF loading for the architectures beyond the Llama family (internal to src/io).
//
// llama.cpp architectures handled here: gemma, gemma2, gemma3, phi3, gpt2, gptneox, olmo2, qwen2moe,
// qwen3moe, olmoe, and llama files with experts (Mixtral). The metadata is translated into the Hugging
// Face config.json those models would have (then parsed by parse_hf_config, so both paths share one
// set of rules), and the tensors are renamed to HF names with llama.cpp's conversions undone: Q/K row
// permutation (Mixtral only: the other archs use NeoX-style RoPE), Gemma's stored (1 + w) norm weights,
// GPT-2's transposed Conv1D weights, GPT-NeoX's regrouped query_key_value, stacked expert tensors.
#pragma once

#include <string>

#include "mlxterp/model.hpp"

namespace mlxterp {

// True if read_gguf_family_model handles this file (its general.architecture, and for "llama" an expert count).
bool gguf_family_handles(const GGUFFile& g, const std::string& arch);
ModelFiles read_gguf_family_model(const GGUFFile& g, const std::string& arch, const std::string& path);

}  // namespace mlxterp
