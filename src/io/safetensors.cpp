// safetensors: 8-byte little-endian header length N, N bytes of JSON header, then the data section.
// Every length, offset, dtype and shape is checked against the file before any tensor is wrapped.
#include <nlohmann/json.hpp>

#include "mlxterp/error.hpp"
#include "mlxterp/io.hpp"

namespace mlxterp {

namespace {

struct DtypeEntry {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeEntry kDtypes[] = {
    {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16}, {"F64", at::kDouble}, {"I64", at::kLong},
    {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},       {"U8", at::kByte},    {"BOOL", at::kBool},
};

at::ScalarType dtype_from_name(const std::string& s, const std::string& path, const std::string& tensor) {
  for (const auto& d : kDtypes)
    if (s == d.name) return d.type;
  MLXTERP_FAIL(path, ": tensor '", tensor, "' has an unknown dtype; expected one of F32, F16, BF16, F64, I64, I32, "
               "I16, I8, U8, BOOL, got '", s, "' (an F8 or other newer checkpoint? convert it to bf16 or f32)");
}

const char* dtype_name(at::ScalarType t) {
  for (const auto& d : kDtypes)
    if (t == d.type) return d.name;
  MLXTERP_FAIL("safetensors: cannot write dtype ", dtype_str(t), "; expected f32, f16, bf16, f64 or an integer type");
}

constexpr uint64_t kMaxHeader = 100ull << 20;  // the format's own limit is 100 MB

}  // namespace

SafeTensors SafeTensors::open(const std::string& path) {
  SafeTensors st;
  st.path_ = path;
  st.file_ = MappedFile::open(path);
  const size_t size = st.file_->size();
  MLXTERP_CHECK(size >= 8, path, ": file too short for a safetensors header; expected at least 8 bytes, got ", size,
                " (truncated download?)");
  uint64_t n = 0;
  std::memcpy(&n, st.file_->data(), 8);
  MLXTERP_CHECK(n <= size - 8, path, ": header length runs past the end of the file; expected at most ", size - 8,
                " bytes, got ", n, " (truncated file, or not a safetensors file?)");
  MLXTERP_CHECK(n <= kMaxHeader, path, ": header length exceeds the format's 100 MB limit; expected at most ", kMaxHeader,
                ", got ", n, " (not a safetensors file?)");
  st.data_offset_ = 8 + n;
  const size_t data_size = size - st.data_offset_;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(st.file_->data() + 8, st.file_->data() + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    MLXTERP_FAIL(path, ": header is not valid JSON; expected a JSON object, got a parse error: ", e.what(),
                 " (not a safetensors file, or a corrupt header?)");
  }
  MLXTERP_CHECK(header.is_object(), path, ": header must be a JSON object; expected an object, got ", header.type_name());
  std::vector<std::pair<std::pair<size_t, size_t>, std::string>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      MLXTERP_CHECK(v.is_object(), path, ": __metadata__ must be an object of strings; expected an object, got ",
                    v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        MLXTERP_CHECK(m.value().is_string(), path, ": __metadata__['", m.key(), "'] must be a string; expected a string, got ",
                      m.value().type_name());
        st.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    MLXTERP_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"), path,
                  ": tensor '", name, "' has a malformed entry; expected an object with dtype, shape and data_offsets, got ",
                  v.dump().substr(0, 200));
    MLXTERP_CHECK(v["dtype"].is_string(), path, ": tensor '", name, "' has a malformed dtype; expected a string, got ",
                  v["dtype"].dump().substr(0, 100));
    SafeTensorInfo info;
    info.name = name;
    info.dtype = dtype_from_name(v["dtype"].get<std::string>(), path, name);
    MLXTERP_CHECK(v["shape"].is_array() && v["shape"].size() <= 16, path, ": tensor '", name,
                  "' has a malformed shape; expected a list of at most 16 sizes, got ", v["shape"].dump().substr(0, 100));
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      MLXTERP_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), path, ": tensor '",
                    name, "' has a malformed shape; expected non-negative integers, got ", d.dump().substr(0, 100));
      uint64_t dim = d.get<uint64_t>();
      info.shape.push_back(static_cast<int64_t>(dim));
      // At most 2^60 elements, so that numel * itemsize cannot overflow below.
      MLXTERP_CHECK(dim == 0 || numel <= (uint64_t(1) << 60) / dim, path, ": tensor '", name,
                    "' has an impossibly large shape; expected at most 2^60 elements, got shape ",
                    v["shape"].dump().substr(0, 100), " (corrupt header)");
      numel *= dim;
    }
    const auto& off = v["data_offsets"];
    MLXTERP_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
                  path, ": tensor '", name, "' has malformed data_offsets; expected two non-negative integers, got ",
                  off.dump().substr(0, 100));
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    MLXTERP_CHECK(info.begin <= info.end, path, ": tensor '", name, "' has reversed data_offsets; expected begin <= end, got [",
                  info.begin, ", ", info.end, "] (corrupt header)");
    MLXTERP_CHECK(info.end <= data_size, path, ": tensor '", name, "' runs past the end of the file; expected data_offsets "
                  "within the ", data_size, "-byte data section, got [", info.begin, ", ", info.end,
                  ") (truncated file?)");
    const uint64_t expect = numel * c10::elementSize(info.dtype);
    MLXTERP_CHECK(info.end - info.begin == expect, path, ": tensor '", name, "' has data_offsets that disagree with its "
                  "shape; expected ", shape_str(info.shape), " x ", dtype_str(info.dtype), " = ", expect,
                  " bytes, got ", info.end - info.begin, " bytes (corrupt header)");
    ranges.push_back({{info.begin, info.end}, name});
    st.infos_.emplace(name, std::move(info));
  }
  std::sort(ranges.begin(), ranges.end());
  size_t max_end = 0;
  const std::string* max_name = nullptr;
  for (const auto& [range, name] : ranges) {
    if (range.first == range.second) continue;  // empty tensors occupy no bytes
    MLXTERP_CHECK(!max_name || range.first >= max_end, path, ": tensors '", *max_name, "' and '", name,
                  "' overlap; expected '", name, "' to start at or after byte ", max_end, ", got ", range.first,
                  " (corrupt header)");
    if (range.second > max_end) max_end = range.second, max_name = &name;
  }
  return st;
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : infos_) out.push_back(k);
  return out;
}

at::Tensor SafeTensors::get(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end()) {
    auto near = close_matches(name, names());
    MLXTERP_FAIL(path_, ": no tensor '", name, "'", near.empty() ? "" : " (did you mean '" + near[0] + "'?)");
  }
  const SafeTensorInfo& info = it->second;
  auto keep = file_;
  void* ptr = const_cast<uint8_t*>(file_->data() + data_offset_ + info.begin);
  // Unaligned data (a header length not a multiple of the element size) must be copied.
  if (reinterpret_cast<uintptr_t>(ptr) % c10::elementSize(info.dtype) != 0) {
    at::Tensor t = at::empty(info.shape, at::TensorOptions().dtype(info.dtype));
    std::memcpy(t.data_ptr(), ptr, info.end - info.begin);
    return t;
  }
  return at::from_blob(ptr, info.shape, [keep](void*) {}, at::TensorOptions().dtype(info.dtype));
}

TensorMap SafeTensors::all() const {
  TensorMap out;
  for (const auto& [name, info] : infos_) out.emplace(name, get(name));
  return out;
}

TensorMap load_safetensors_model(const std::string& path) {
  std::string dir = is_directory(path) ? path : dirname(path);
  std::string index = join_path(dir, "model.safetensors.index.json");
  if (!is_directory(path)) return SafeTensors::open(path).all();
  std::string single = join_path(dir, "model.safetensors");
  if (file_exists(single)) return SafeTensors::open(single).all();
  MLXTERP_CHECK(file_exists(index), dir, ": no model.safetensors or model.safetensors.index.json; expected a Hugging "
                                         "Face model directory (hint: .bin/.pt checkpoints are not supported; convert "
                                         "them to safetensors)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(index));
  } catch (const nlohmann::json::exception& e) {
    MLXTERP_FAIL(index, ": not valid JSON; expected a safetensors index, got a parse error: ", e.what());
  }
  MLXTERP_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index,
                ": no weight_map; expected a 'weight_map' object mapping tensor names to shard files");
  std::map<std::string, std::vector<std::string>> by_shard;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    MLXTERP_CHECK(it.value().is_string(), index, ": weight_map['", it.key(), "'] must be a file name; expected a string, got ",
                  it.value().dump().substr(0, 100));
    std::string shard = it.value().get<std::string>();
    MLXTERP_CHECK(shard.find('/') == std::string::npos && shard.find("..") == std::string::npos, index,
                  ": shard name must be a plain file name in the same directory; expected no '/' or '..', got '", shard, "'");
    by_shard[shard].push_back(it.key());
  }
  TensorMap out;
  for (const auto& [shard, names] : by_shard) {
    std::string shard_path = join_path(dir, shard);
    MLXTERP_CHECK(file_exists(shard_path), index, ": lists a shard that is missing; expected '", shard, "' in ", dir,
                  ", got no such file (incomplete download?)");
    SafeTensors st = SafeTensors::open(shard_path);
    for (const auto& n : names) {
      MLXTERP_CHECK(st.contains(n), shard_path, ": missing tensor '", n, "'; expected it here, as ", basename(index),
                    " says, got ", st.names().size(), " other tensors (mismatched shards or an incomplete download?)");
      out.emplace(n, st.get(n));
    }
    for (const auto& n : st.names())
      MLXTERP_CHECK(std::find(names.begin(), names.end(), n) != names.end(), shard_path, ": unexpected tensor '", n,
                    "'; expected only the tensors ", basename(index), " assigns to this shard (mismatched shards?)");
  }
  return out;
}

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  std::vector<at::Tensor> blobs;
  size_t offset = 0;
  for (const auto& [name, t0] : tensors) {
    MLXTERP_CHECK(t0.defined(), path, ": tensor '", name, "' is undefined");
    at::Tensor t = t0.detach().to(at::kCPU).contiguous();
    size_t n = t.numel() * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
    blobs.push_back(t);
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h += ' ';  // keep the data section 8-byte aligned
  uint64_t hn = h.size();
  AtomicFile f(path);
  f.write(&hn, 8);
  f.write(h.data(), h.size());
  for (const auto& t : blobs) f.write(t.data_ptr(), t.numel() * t.element_size());
  f.commit();
}

}  // namespace mlxterp
