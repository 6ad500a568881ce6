// mlxterp/io.hpp — model files: safetensors (single and sharded), GGUF, llama2.c checkpoints.
//
//   // safetensors: mmapped, every header field checked against the file before use
//   mlxterp::SafeTensors st = mlxterp::SafeTensors::open("model.safetensors");
//   at::Tensor w = st.get("model.embed_tokens.weight");      // zero-copy view of the mapping
//   mlxterp::save_safetensors("out.safetensors", {{"x", x}}, {{"format", "pt"}});   // atomic
//
//   // GGUF: metadata + tensors, quantized types dequantized at load
//   mlxterp::GGUFFile g = mlxterp::GGUFFile::open("model.gguf");
//   std::string arch = g.get_string("general.architecture");
//   at::Tensor t = g.tensor("blk.0.attn_q.weight");           // [rows, cols] float32 (or f16/bf16 as stored)
//
// All parse errors throw mlxterp::Error of the form
//   "<file>: <what>; expected <X>, got <Y> (<hint>)".
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>
#include <vector>

#include "mlxterp/util.hpp"

namespace mlxterp {

// Name -> tensor, in Hugging Face naming ("model.layers.0.self_attn.q_proj.weight").
using TensorMap = std::map<std::string, at::Tensor>;

// ---- safetensors --------------------------------------------------------------------------------

struct SafeTensorInfo {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // byte offsets into the data section
};

class SafeTensors {
 public:
  // Opens and validates a single .safetensors file: the 8-byte header length, the JSON header, every
  // tensor's dtype, shape and [begin, end) range (inside the data section, size == numel * itemsize,
  // no overlaps). Supported dtypes: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL.
  static SafeTensors open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, SafeTensorInfo>& infos() const { return infos_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  std::vector<std::string> names() const;
  // A CPU tensor viewing the mmapped bytes (read-only: clone before writing in place).
  at::Tensor get(const std::string& name) const;
  // Every tensor, by name.
  TensorMap all() const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> file_;
  size_t data_offset_ = 0;
  std::map<std::string, SafeTensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

// Loads every tensor of a model directory or file: `model.safetensors`, or the shards listed in
// `model.safetensors.index.json` (each shard checked to hold exactly the tensors the index names).
TensorMap load_safetensors_model(const std::string& path);

// Writes tensors (any device/dtype among the supported ones; copied to CPU contiguous) atomically.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// ---- GGUF ---------------------------------------------------------------------------------------

// GGML tensor types (values as in the GGUF spec).
enum class GGMLType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30,
};
const char* ggml_type_name(GGMLType t);
// Bytes per block and elements per block; throws mlxterp::Error for types we cannot read.
size_t ggml_block_bytes(GGMLType t);
size_t ggml_block_elems(GGMLType t);

// Dequantizes `n_elems` elements (a multiple of the block size) of type `t` from `src` into `dst`.
void ggml_dequantize(GGMLType t, const uint8_t* src, float* dst, size_t n_elems);

// A GGUF metadata value: scalars, strings, or arrays of them.
struct GGUFValue {
  using Array = std::vector<GGUFValue>;
  std::variant<uint64_t, int64_t, double, bool, std::string, std::shared_ptr<Array>> v;
  uint32_t type = 0;  // the GGUF value-type code as stored
  bool is_array() const { return std::holds_alternative<std::shared_ptr<Array>>(v); }
};

struct GGUFTensorInfo {
  std::string name;
  GGMLType type;
  std::vector<int64_t> shape;  // PyTorch order (outermost first): GGUF's ne[] reversed
  uint64_t offset = 0;         // relative to the data section
  size_t n_bytes = 0;
};

class GGUFFile {
 public:
  // Parses and validates the header, metadata and tensor infos (versions 2 and 3; version 1 is
  // rejected with a message naming it). Every count, length and offset is checked against the file.
  static GGUFFile open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  // Byte offset of the data section in the file (tensor offsets are relative to it).
  size_t data_offset() const { return data_offset_; }
  const std::map<std::string, GGUFValue>& metadata() const { return metadata_; }
  const std::vector<GGUFTensorInfo>& tensor_infos() const { return tensors_; }
  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  // The info of a tensor by GGUF name, or nullptr if the file has no such tensor.
  const GGUFTensorInfo* tensor_info(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }

  // Typed metadata access; throws "<file>: metadata key 'k' is missing" / "has type X; expected Y".
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;
  // Defaults when the key is absent.
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;

  // A tensor by GGUF name: F32/F16/BF16 as stored (zero-copy view of the mapping), quantized types
  // dequantized to float32. Shape in PyTorch order.
  at::Tensor tensor(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  size_t data_offset_ = 0;
  std::map<std::string, GGUFValue> metadata_;
  std::vector<GGUFTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

// Writes a GGUF v3 file (metadata + F32/F16/BF16 tensors), atomically. Used for control vectors and tests.
void save_gguf(const std::string& path, const std::map<std::string, GGUFValue>& metadata, const TensorMap& tensors);

}  // namespace mlxterp
