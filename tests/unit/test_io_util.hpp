// Test-side helpers for the loader tests: a byte-level GGUF builder (so tests can write quantized
// tensors and deliberately malformed files that save_gguf never would) and small file utilities.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <fstream>
#include <string>
#include <vector>

#include "mlxterp/error.hpp"
#include "mlxterp/io.hpp"

// EXPECT that an error message contains a piece of text.
#define EXPECT_HAS(msg, needle) EXPECT_NE((msg).find(needle), std::string::npos) << "message: " << (msg)

namespace mlxterp::test {

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// Runs f; returns the mlxterp::Error message, or "" if nothing was thrown. Any other exception type
// escapes, so a test using this fails on a crash-like error (std::bad_alloc, c10::Error, ...).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const mlxterp::Error& e) {
    return e.what();
  }
  return "";
}

// Builds GGUF bytes field by field. Offsets are assigned in order and aligned, unless a tensor gives
// its own (to build overlapping or misaligned layouts).
struct GGUFBuilder {
  uint32_t version = 3;
  uint64_t alignment = 32;          // used for layout; write general.alignment yourself to change it
  std::string kv;                   // encoded key/value pairs
  uint64_t n_kv = 0;
  std::optional<uint64_t> n_kv_override, n_tensors_override;
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;       // GGML order: innermost (row length) first
    uint32_t type;
    std::string data;
    std::optional<uint64_t> offset;
  };
  std::vector<Tensor> tensors;

  template <class T>
  static void put(std::string& s, T v) {
    s.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  static void put_str(std::string& s, const std::string& v) {
    put<uint64_t>(s, v.size());
    s += v;
  }
  static void put_value(std::string& s, const GGUFValue& v) {
    switch (v.type) {
      case 0: put<uint8_t>(s, uint8_t(std::get<uint64_t>(v.v))); break;
      case 1: put<int8_t>(s, int8_t(std::get<int64_t>(v.v))); break;
      case 2: put<uint16_t>(s, uint16_t(std::get<uint64_t>(v.v))); break;
      case 3: put<int16_t>(s, int16_t(std::get<int64_t>(v.v))); break;
      case 4: put<uint32_t>(s, uint32_t(std::get<uint64_t>(v.v))); break;
      case 5: put<int32_t>(s, int32_t(std::get<int64_t>(v.v))); break;
      case 6: put<float>(s, float(std::get<double>(v.v))); break;
      case 7: put<uint8_t>(s, std::get<bool>(v.v) ? 1 : 0); break;
      case 8: put_str(s, std::get<std::string>(v.v)); break;
      case 9: {
        const auto& arr = *std::get<std::shared_ptr<GGUFValue::Array>>(v.v);
        put<uint32_t>(s, arr.empty() ? 5u : arr[0].type);
        put<uint64_t>(s, arr.size());
        for (const auto& e : arr) put_value(s, e);
        break;
      }
      case 10: put<uint64_t>(s, std::get<uint64_t>(v.v)); break;
      case 11: put<int64_t>(s, std::get<int64_t>(v.v)); break;
      case 12: put<double>(s, std::get<double>(v.v)); break;
      default: throw std::logic_error("GGUFBuilder: bad value type");
    }
  }

  void add(const std::string& key, const GGUFValue& v) {
    put_str(kv, key);
    put<uint32_t>(kv, v.type);
    put_value(kv, v);
    ++n_kv;
  }
  void add_u32(const std::string& key, uint32_t x) { add(key, GGUFValue{uint64_t(x), 4}); }
  void add_f32(const std::string& key, float x) { add(key, GGUFValue{double(x), 6}); }
  void add_str(const std::string& key, const std::string& x) { add(key, GGUFValue{x, 8}); }
  // Raw key/value bytes (for malformed entries): key, type code, then `payload` verbatim.
  void add_raw(const std::string& key, uint32_t type, const std::string& payload) {
    put_str(kv, key);
    put<uint32_t>(kv, type);
    kv += payload;
    ++n_kv;
  }

  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, std::string data,
              std::optional<uint64_t> offset = std::nullopt) {
    tensors.push_back({name, std::move(ne), type, std::move(data), offset});
  }
  void tensor_f32(const std::string& name, std::vector<uint64_t> ne, const std::vector<float>& values) {
    tensor(name, std::move(ne), 0, std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
  }

  std::string build() const {
    std::string s = "GGUF";
    put<uint32_t>(s, version);
    put<uint64_t>(s, n_tensors_override.value_or(tensors.size()));
    put<uint64_t>(s, n_kv_override.value_or(n_kv));
    s += kv;
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const auto& t : tensors) {
      uint64_t off = t.offset.value_or(next);
      offsets.push_back(off);
      next = std::max(next, (off + t.data.size() + alignment - 1) / alignment * alignment);
      put_str(s, t.name);
      put<uint32_t>(s, uint32_t(t.ne.size()));
      for (uint64_t n : t.ne) put<uint64_t>(s, n);
      put<uint32_t>(s, t.type);
      put<uint64_t>(s, off);
    }
    while (s.size() % alignment) s += '\0';
    const size_t data_start = s.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      size_t at = data_start + offsets[i];
      if (s.size() < at + tensors[i].data.size()) s.resize(at + tensors[i].data.size(), '\0');
      std::memcpy(s.data() + at, tensors[i].data.data(), tensors[i].data.size());
    }
    while (s.size() % alignment) s += '\0';
    return s;
  }
};

// Copies every metadata entry of an existing GGUF into a builder.
inline void copy_metadata(const GGUFFile& g, GGUFBuilder& b) {
  for (const auto& [k, v] : g.metadata()) b.add(k, v);
}

}  // namespace mlxterp::test
