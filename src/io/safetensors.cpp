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
  MLXTERP_FAIL(path, ": tensor '", tensor, "' has unknown dtype '", s,
               "'; expected one of F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL (is the file from a newer "
               "safetensors version, e.g. an F8 checkpoint?)");
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
  MLXTERP_CHECK(n <= size - 8, path, ": header length ", n, " runs past the end of the file; expected at most ",
                size - 8, " (truncated file?)");
  MLXTERP_CHECK(n <= kMaxHeader, path, ": header length ", n, " exceeds the 100 MB limit (not a safetensors file?)");
  st.data_offset_ = 8 + n;
  const size_t data_size = size - st.data_offset_;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(st.file_->data() + 8, st.file_->data() + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    MLXTERP_FAIL(path, ": header is not valid JSON: ", e.what(), " (not a safetensors file?)");
  }
  MLXTERP_CHECK(header.is_object(), path, ": header must be a JSON object, got ", header.type_name());
  std::vector<std::pair<size_t, size_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      MLXTERP_CHECK(v.is_object(), path, ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        MLXTERP_CHECK(m.value().is_string(), path, ": __metadata__['", m.key(), "'] must be a string, got ",
                      m.value().type_name());
        st.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    MLXTERP_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"), path,
                  ": tensor '", name, "' entry must have dtype, shape and data_offsets; got ", v.dump());
    MLXTERP_CHECK(v["dtype"].is_string(), path, ": tensor '", name, "': dtype must be a string");
    SafeTensorInfo info;
    info.name = name;
    info.dtype = dtype_from_name(v["dtype"].get<std::string>(), path, name);
    MLXTERP_CHECK(v["shape"].is_array(), path, ": tensor '", name, "': shape must be an array");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      MLXTERP_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), path, ": tensor '",
                    name, "': shape entries must be non-negative integers, got ", d.dump());
      uint64_t dim = d.get<uint64_t>();
      MLXTERP_CHECK(dim == 0 || numel <= (1ull << 62) / dim, path, ": tensor '", name, "': shape overflows");
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    MLXTERP_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
                  path, ": tensor '", name, "': data_offsets must be two non-negative integers, got ", off.dump());
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    MLXTERP_CHECK(info.begin <= info.end && info.end <= data_size, path, ": tensor '", name, "' spans bytes [",
                  info.begin, ", ", info.end, ") of a data section of ", data_size,
                  " bytes; expected a range inside it (truncated file?)");
    const uint64_t expect = numel * c10::elementSize(info.dtype);
    MLXTERP_CHECK(info.end - info.begin == expect, path, ": tensor '", name, "' has shape ", shape_str(info.shape),
                  " x ", dtype_str(info.dtype), " = ", expect, " bytes; its data_offsets span ", info.end - info.begin,
                  " bytes (corrupt header?)");
    ranges.emplace_back(info.begin, info.end);
    st.infos_.emplace(name, std::move(info));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    MLXTERP_CHECK(ranges[i].first >= ranges[i - 1].second, path, ": tensors overlap at byte ", ranges[i].first,
                  " of the data section (corrupt header)");
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
    MLXTERP_FAIL(index, ": not valid JSON: ", e.what());
  }
  MLXTERP_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), index,
                ": expected a 'weight_map' object mapping tensor names to shard files");
  std::map<std::string, std::vector<std::string>> by_shard;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    MLXTERP_CHECK(it.value().is_string(), index, ": weight_map['", it.key(), "'] must be a file name");
    std::string shard = it.value().get<std::string>();
    MLXTERP_CHECK(shard.find('/') == std::string::npos && shard.find("..") == std::string::npos, index,
                  ": shard name '", shard, "' must be a plain file name in the same directory");
    by_shard[shard].push_back(it.key());
  }
  TensorMap out;
  for (const auto& [shard, names] : by_shard) {
    std::string shard_path = join_path(dir, shard);
    MLXTERP_CHECK(file_exists(shard_path), index, ": lists shard '", shard, "' which does not exist in ", dir,
                  " (incomplete download?)");
    SafeTensors st = SafeTensors::open(shard_path);
    for (const auto& n : names) {
      MLXTERP_CHECK(st.contains(n), shard_path, ": index says it holds '", n, "' but it does not (mismatched shards?)");
      out.emplace(n, st.get(n));
    }
    for (const auto& n : st.names())
      MLXTERP_CHECK(std::find(names.begin(), names.end(), n) != names.end(), shard_path, ": holds tensor '", n,
                    "' which the index does not list (mismatched shards?)");
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
