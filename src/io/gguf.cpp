// GGUF reader and writer (versions 2 and 3). Layout: magic "GGUF", u32 version, u64 n_tensors,
// u64 n_kv, the key/value metadata, the tensor infos (name, n_dims, ne[], type, offset), padding to
// `general.alignment` (default 32), then the data section. Every count, length and offset is checked
// against the file size before it is used.
#include "mlxterp/error.hpp"
#include "mlxterp/io.hpp"

namespace mlxterp {

namespace {

enum : uint32_t {
  T_UINT8 = 0, T_INT8 = 1, T_UINT16 = 2, T_INT16 = 3, T_UINT32 = 4, T_INT32 = 5, T_FLOAT32 = 6, T_BOOL = 7,
  T_STRING = 8, T_ARRAY = 9, T_UINT64 = 10, T_INT64 = 11, T_FLOAT64 = 12,
};

const char* value_type_name(uint32_t t) {
  static const char* names[] = {"uint8", "int8",   "uint16", "int16", "uint32", "int32",  "float32",
                                "bool",  "string", "array",  "uint64", "int64", "float64"};
  return t < 13 ? names[t] : "unknown";
}

class Reader {
 public:
  Reader(const MappedFile& f) : f_(f) {}
  size_t pos() const { return pos_; }
  size_t size() const { return f_.size(); }
  void need(size_t n, const char* what) {
    MLXTERP_CHECK(n <= f_.size() && pos_ <= f_.size() - n, f_.path(), ": truncated while reading ", what, " at byte ",
                  pos_, "; expected ", n, " more bytes, got ", f_.size() - std::min(pos_, f_.size()),
                  " (incomplete download?)");
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, f_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(f_.data() + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const MappedFile& f_;
  size_t pos_ = 0;
};

GGUFValue read_value(Reader& r, uint32_t type, const std::string& key, const std::string& path, int depth) {
  GGUFValue out;
  out.type = type;
  switch (type) {
    case T_UINT8: out.v = uint64_t(r.read<uint8_t>("metadata")); break;
    case T_INT8: out.v = int64_t(r.read<int8_t>("metadata")); break;
    case T_UINT16: out.v = uint64_t(r.read<uint16_t>("metadata")); break;
    case T_INT16: out.v = int64_t(r.read<int16_t>("metadata")); break;
    case T_UINT32: out.v = uint64_t(r.read<uint32_t>("metadata")); break;
    case T_INT32: out.v = int64_t(r.read<int32_t>("metadata")); break;
    case T_UINT64: out.v = r.read<uint64_t>("metadata"); break;
    case T_INT64: out.v = r.read<int64_t>("metadata"); break;
    case T_FLOAT32: out.v = double(r.read<float>("metadata")); break;
    case T_FLOAT64: out.v = r.read<double>("metadata"); break;
    case T_BOOL: {
      uint8_t b = r.read<uint8_t>("metadata");
      MLXTERP_CHECK(b <= 1, path, ": metadata '", key, "' is a bad bool; expected 0 or 1, got ", int(b));
      out.v = b != 0;
      break;
    }
    case T_STRING: out.v = r.read_string("metadata string"); break;
    case T_ARRAY: {
      MLXTERP_CHECK(depth < 4, path, ": metadata '", key, "': arrays nested too deeply; expected at most 4 levels");
      uint32_t et = r.read<uint32_t>("array type");
      uint64_t n = r.read<uint64_t>("array length");
      MLXTERP_CHECK(et <= T_FLOAT64, path, ": metadata '", key, "' has an unknown array element type; expected 0 .. 12, got ",
                    et, " (corrupt file or a newer GGUF version?)");
      // Reject lengths the file cannot hold before allocating (strings need 8 bytes each, arrays 12,
      // scalars their size); grow the vector as elements are actually read.
      static const uint64_t min_size[] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8};
      MLXTERP_CHECK(n <= (r.size() - r.pos()) / min_size[et], path, ": metadata '", key, "' claims ", n, " ",
                    value_type_name(et), " elements; expected at most ", (r.size() - r.pos()) / min_size[et],
                    " in the rest of the file (corrupt or truncated file?)");
      auto arr = std::make_shared<GGUFValue::Array>();
      arr->reserve(std::min<uint64_t>(n, 1u << 16));
      for (uint64_t i = 0; i < n; ++i) arr->push_back(read_value(r, et, key, path, depth + 1));
      out.v = arr;
      break;
    }
    default:
      MLXTERP_FAIL(path, ": metadata '", key, "' has an unknown value type; expected 0 .. 12, got ", type,
                   " (corrupt file or a newer GGUF version?)");
  }
  return out;
}

}  // namespace

GGUFFile GGUFFile::open(const std::string& path) {
  GGUFFile g;
  g.path_ = path;
  g.file_ = MappedFile::open(path);
  const MappedFile& f = *g.file_;
  Reader r(f);
  MLXTERP_CHECK(f.size() >= 4 && std::memcmp(f.data(), "GGUF", 4) == 0, path,
                ": not a GGUF file; expected the magic 'GGUF' in the first 4 bytes, got ",
                quote(std::string(reinterpret_cast<const char*>(f.data()), std::min<size_t>(f.size(), 4))));
  r.read<uint32_t>("magic");
  g.version_ = r.read<uint32_t>("version");
  MLXTERP_CHECK(g.version_ != 1, path,
                ": GGUF version 1 is not supported; expected version 2 or 3, got 1 (hint: re-convert the model with a "
                "current llama.cpp convert script)");
  // A big-endian GGUF (s390x builds) reads as a huge little-endian version number.
  MLXTERP_CHECK(g.version_ != 0x02000000u && g.version_ != 0x03000000u, path,
                ": this GGUF is big-endian; expected a little-endian file, got version bytes ", g.version_ >> 24,
                " in big-endian order (hint: use the little-endian build of the model)");
  MLXTERP_CHECK(g.version_ == 2 || g.version_ == 3, path, ": unsupported GGUF version; expected 2 or 3, got ",
                g.version_, " (a newer format, or a corrupt header?)");
  uint64_t n_tensors = r.read<uint64_t>("tensor count");
  uint64_t n_kv = r.read<uint64_t>("metadata count");
  // Every metadata entry needs at least 13 bytes (key length, type, one payload byte) and every tensor
  // info at least 28 (name length, n_dims, one dimension, type, offset): reject counts the file cannot hold
  // before looping or allocating.
  MLXTERP_CHECK(n_kv <= f.size() / 13, path, ": header claims ", n_kv, " metadata entries; expected at most ",
                f.size() / 13, " in a ", f.size(), "-byte file (corrupt header or truncated download?)");
  MLXTERP_CHECK(n_tensors <= f.size() / 28, path, ": header claims ", n_tensors, " tensors; expected at most ",
                f.size() / 28, " in a ", f.size(), "-byte file (corrupt header or truncated download?)");
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.read_string("metadata key");
    uint32_t type = r.read<uint32_t>("metadata type");
    GGUFValue v = read_value(r, type, key, path, 0);
    MLXTERP_CHECK(g.metadata_.emplace(key, std::move(v)).second, path, ": metadata key '", key,
                  "' appears twice; expected unique keys (corrupt file?)");
  }
  uint64_t alignment = 32;
  if (g.has("general.alignment")) {
    const GGUFValue& a = g.metadata_.at("general.alignment");
    MLXTERP_CHECK(std::holds_alternative<uint64_t>(a.v) || std::holds_alternative<int64_t>(a.v), path,
                  ": general.alignment must be an integer; expected uint32, got ", value_type_name(a.type));
    int64_t al = g.get_int("general.alignment");
    MLXTERP_CHECK(al > 0 && al <= (1 << 24) && (al & (al - 1)) == 0, path,
                  ": general.alignment must be a power of two; expected 1 .. 16777216, got ", al);
    alignment = uint64_t(al);
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GGUFTensorInfo t;
    t.name = r.read_string("tensor name");
    uint32_t n_dims = r.read<uint32_t>("tensor dims");
    MLXTERP_CHECK(n_dims >= 1 && n_dims <= 4, path, ": tensor '", t.name, "' has a bad rank; expected 1 .. 4 dimensions, got ",
                  n_dims, " (corrupt tensor info?)");
    std::vector<int64_t> ne;
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t n = r.read<uint64_t>("tensor shape");
      MLXTERP_CHECK(n > 0 && n < (1ull << 40) && numel <= (1ull << 50) / n, path, ": tensor '", t.name,
                    "' has an invalid dimension; expected 1 .. 2^40 (and at most 2^50 elements in all), got ", n,
                    " (corrupt tensor info?)");
      numel *= n;
      ne.push_back(int64_t(n));
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    uint32_t type = r.read<uint32_t>("tensor type");
    t.type = GGMLType(type);
    size_t block_elems = 0;
    try {
      block_elems = ggml_block_elems(t.type);
    } catch (const Error& e) {
      std::string what = e.what();
      if (starts_with(what, "GGUF: ")) what = what.substr(6);
      MLXTERP_FAIL(path, ": tensor '", t.name, "': ", what);
    }
    MLXTERP_CHECK(ne[0] % int64_t(block_elems) == 0, path, ": tensor '", t.name, "' of type ", ggml_type_name(t.type),
                  " has rows that do not fill whole blocks; expected a multiple of ", block_elems, " elements, got ",
                  ne[0], " (corrupt tensor info?)");
    t.n_bytes = numel / block_elems * ggml_block_bytes(t.type);
    t.offset = r.read<uint64_t>("tensor offset");
    MLXTERP_CHECK(t.offset % alignment == 0, path, ": tensor '", t.name, "' is misaligned; expected an offset that is a "
                  "multiple of general.alignment = ", alignment, ", got ", t.offset, " (corrupt tensor info?)");
    MLXTERP_CHECK(!g.index_.count(t.name), path, ": tensor '", t.name, "' appears twice; expected unique names");
    g.index_[t.name] = g.tensors_.size();
    g.tensors_.push_back(std::move(t));
  }
  size_t data = r.pos();
  data = (data + alignment - 1) / alignment * alignment;
  g.data_offset_ = data;
  MLXTERP_CHECK(data <= f.size() || n_tensors == 0, path, ": data section starts past the end of the file; expected at "
                "most ", f.size(), " bytes of header, got ", data, " (truncated file?)");
  const size_t data_size = f.size() > data ? f.size() - data : 0;
  std::vector<std::pair<uint64_t, size_t>> ranges;  // [offset, index]
  for (size_t i = 0; i < g.tensors_.size(); ++i) {
    const auto& t = g.tensors_[i];
    MLXTERP_CHECK(t.offset <= data_size && t.n_bytes <= data_size - t.offset, path, ": tensor '", t.name, "' (",
                  ggml_type_name(t.type), " ", shape_str(t.shape), ") runs past the end of the file; expected bytes [",
                  t.offset, ", ", t.offset + t.n_bytes, ") of the data section, got a data section of ", data_size,
                  " bytes (truncated file?)");
    ranges.emplace_back(t.offset, i);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t k = 1; k < ranges.size(); ++k) {
    const auto& prev = g.tensors_[ranges[k - 1].second];
    const auto& cur = g.tensors_[ranges[k].second];
    MLXTERP_CHECK(cur.offset >= prev.offset + prev.n_bytes, path, ": tensors '", prev.name, "' and '", cur.name,
                  "' overlap; expected '", cur.name, "' to start at or after byte ", prev.offset + prev.n_bytes,
                  " of the data section, got ", cur.offset, " (corrupt tensor infos)");
  }
  return g;
}

static const GGUFValue& lookup(const std::map<std::string, GGUFValue>& m, const std::string& key,
                               const std::string& path) {
  auto it = m.find(key);
  MLXTERP_CHECK(it != m.end(), path, ": metadata key '", key, "' is missing");
  return it->second;
}

std::string GGUFFile::get_string(const std::string& key) const {
  const GGUFValue& v = lookup(metadata_, key, path_);
  MLXTERP_CHECK(std::holds_alternative<std::string>(v.v), path_, ": metadata '", key, "' has type ",
                value_type_name(v.type), "; expected string");
  return std::get<std::string>(v.v);
}

static bool as_int(const GGUFValue& v, int64_t* out) {
  if (auto p = std::get_if<uint64_t>(&v.v)) return *out = int64_t(*p), true;
  if (auto p = std::get_if<int64_t>(&v.v)) return *out = *p, true;
  return false;
}

static bool as_float(const GGUFValue& v, double* out) {
  if (auto p = std::get_if<double>(&v.v)) return *out = *p, true;
  int64_t i;
  if (as_int(v, &i)) return *out = double(i), true;
  return false;
}

int64_t GGUFFile::get_int(const std::string& key) const {
  const GGUFValue& v = lookup(metadata_, key, path_);
  int64_t out;
  MLXTERP_CHECK(as_int(v, &out), path_, ": metadata '", key, "' has type ", value_type_name(v.type),
                "; expected an integer");
  return out;
}

int64_t GGUFFile::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

double GGUFFile::get_float(const std::string& key) const {
  const GGUFValue& v = lookup(metadata_, key, path_);
  double out;
  MLXTERP_CHECK(as_float(v, &out), path_, ": metadata '", key, "' has type ", value_type_name(v.type),
                "; expected a number");
  return out;
}

double GGUFFile::get_float(const std::string& key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}

bool GGUFFile::get_bool(const std::string& key) const {
  const GGUFValue& v = lookup(metadata_, key, path_);
  MLXTERP_CHECK(std::holds_alternative<bool>(v.v), path_, ": metadata '", key, "' has type ", value_type_name(v.type),
                "; expected bool");
  return std::get<bool>(v.v);
}

static const GGUFValue::Array& as_array(const GGUFValue& v, const std::string& key, const std::string& path) {
  MLXTERP_CHECK(v.is_array(), path, ": metadata '", key, "' has type ", value_type_name(v.type), "; expected an array");
  return *std::get<std::shared_ptr<GGUFValue::Array>>(v.v);
}

std::vector<std::string> GGUFFile::get_string_array(const std::string& key) const {
  const auto& arr = as_array(lookup(metadata_, key, path_), key, path_);
  std::vector<std::string> out;
  out.reserve(arr.size());
  for (const auto& e : arr) {
    MLXTERP_CHECK(std::holds_alternative<std::string>(e.v), path_, ": metadata '", key, "' must be an array of strings");
    out.push_back(std::get<std::string>(e.v));
  }
  return out;
}

std::vector<int64_t> GGUFFile::get_int_array(const std::string& key) const {
  const auto& arr = as_array(lookup(metadata_, key, path_), key, path_);
  std::vector<int64_t> out;
  out.reserve(arr.size());
  for (const auto& e : arr) {
    int64_t x;
    MLXTERP_CHECK(as_int(e, &x), path_, ": metadata '", key, "' must be an array of integers");
    out.push_back(x);
  }
  return out;
}

std::vector<double> GGUFFile::get_float_array(const std::string& key) const {
  const auto& arr = as_array(lookup(metadata_, key, path_), key, path_);
  std::vector<double> out;
  out.reserve(arr.size());
  for (const auto& e : arr) {
    double x;
    MLXTERP_CHECK(as_float(e, &x), path_, ": metadata '", key, "' must be an array of numbers");
    out.push_back(x);
  }
  return out;
}

at::Tensor GGUFFile::tensor(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    std::vector<std::string> names;
    for (const auto& t : tensors_) names.push_back(t.name);
    auto near = close_matches(name, names);
    MLXTERP_FAIL(path_, ": no tensor '", name, "'", near.empty() ? "" : " (did you mean '" + near[0] + "'?)");
  }
  const GGUFTensorInfo& t = tensors_[it->second];
  const uint8_t* src = file_->data() + data_offset_ + t.offset;
  auto keep = file_;
  auto view = [&](at::ScalarType st) {
    size_t es = c10::elementSize(st);
    if (reinterpret_cast<uintptr_t>(src) % es != 0) {
      at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(st));
      std::memcpy(out.data_ptr(), src, t.n_bytes);
      return out;
    }
    return at::from_blob(const_cast<uint8_t*>(src), t.shape, [keep](void*) {}, at::TensorOptions().dtype(st));
  };
  switch (t.type) {
    case GGMLType::F32: return view(at::kFloat);
    case GGMLType::F16: return view(at::kHalf);
    case GGMLType::BF16: return view(at::kBFloat16);
    case GGMLType::F64: return view(at::kDouble);
    case GGMLType::I8: return view(at::kChar);
    case GGMLType::I16: return view(at::kShort);
    case GGMLType::I32: return view(at::kInt);
    case GGMLType::I64: return view(at::kLong);
    default: {
      at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(at::kFloat));
      size_t numel = size_t(out.numel());
      ggml_dequantize(t.type, src, out.data_ptr<float>(), numel);
      return out;
    }
  }
}

// ---- writer ---------------------------------------------------------------------------------------

namespace {

struct Writer {
  std::string buf;
  template <class T>
  void put(T v) {
    buf.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    buf += s;
  }
  void put_value(const GGUFValue& v) {
    switch (v.type) {
      case T_UINT8: put<uint8_t>(uint8_t(std::get<uint64_t>(v.v))); break;
      case T_INT8: put<int8_t>(int8_t(std::get<int64_t>(v.v))); break;
      case T_UINT16: put<uint16_t>(uint16_t(std::get<uint64_t>(v.v))); break;
      case T_INT16: put<int16_t>(int16_t(std::get<int64_t>(v.v))); break;
      case T_UINT32: put<uint32_t>(uint32_t(std::get<uint64_t>(v.v))); break;
      case T_INT32: put<int32_t>(int32_t(std::get<int64_t>(v.v))); break;
      case T_UINT64: put<uint64_t>(std::get<uint64_t>(v.v)); break;
      case T_INT64: put<int64_t>(std::get<int64_t>(v.v)); break;
      case T_FLOAT32: put<float>(float(std::get<double>(v.v))); break;
      case T_FLOAT64: put<double>(std::get<double>(v.v)); break;
      case T_BOOL: put<uint8_t>(std::get<bool>(v.v) ? 1 : 0); break;
      case T_STRING: put_string(std::get<std::string>(v.v)); break;
      case T_ARRAY: {
        const auto& arr = *std::get<std::shared_ptr<GGUFValue::Array>>(v.v);
        uint32_t et = arr.empty() ? T_INT32 : arr[0].type;
        put<uint32_t>(et);
        put<uint64_t>(arr.size());
        for (const auto& e : arr) {
          MLXTERP_CHECK(e.type == et, "save_gguf: array elements must share one type");
          put_value(e);
        }
        break;
      }
      default: MLXTERP_FAIL("save_gguf: unknown metadata value type ", v.type);
    }
  }
};

}  // namespace

void save_gguf(const std::string& path, const std::map<std::string, GGUFValue>& metadata, const TensorMap& tensors) {
  // Honour a general.alignment given in the metadata (readers lay out the data section by it).
  uint64_t align = 32;
  if (auto it = metadata.find("general.alignment"); it != metadata.end()) {
    int64_t a = -1;
    if (auto p = std::get_if<uint64_t>(&it->second.v)) a = int64_t(*p);
    if (auto p = std::get_if<int64_t>(&it->second.v)) a = *p;
    MLXTERP_CHECK(a > 0 && a <= (1 << 24) && (a & (a - 1)) == 0, path,
                  ": save_gguf: general.alignment must be a power of two; expected 1 .. 16777216, got ", a);
    align = uint64_t(a);
  }
  Writer w;
  w.buf += "GGUF";
  w.put<uint32_t>(3);
  w.put<uint64_t>(tensors.size());
  w.put<uint64_t>(metadata.size());
  for (const auto& [k, v] : metadata) {
    w.put_string(k);
    w.put<uint32_t>(v.type);
    w.put_value(v);
  }
  std::vector<at::Tensor> blobs;
  uint64_t offset = 0;
  for (const auto& [name, t0] : tensors) {
    at::Tensor t = t0.detach().to(at::kCPU).contiguous();
    GGMLType type;
    switch (t.scalar_type()) {
      case at::kFloat: type = GGMLType::F32; break;
      case at::kHalf: type = GGMLType::F16; break;
      case at::kBFloat16: type = GGMLType::BF16; break;
      default: MLXTERP_FAIL(path, ": save_gguf supports f32, f16 and bf16 tensors; '", name, "' is ", dtype_str(t.scalar_type()));
    }
    w.put_string(name);
    w.put<uint32_t>(uint32_t(t.dim()));
    for (int64_t d = t.dim() - 1; d >= 0; --d) w.put<uint64_t>(uint64_t(t.size(d)));
    w.put<uint32_t>(uint32_t(type));
    w.put<uint64_t>(offset);
    uint64_t n = t.numel() * t.element_size();
    offset += (n + align - 1) / align * align;
    blobs.push_back(t);
  }
  while (w.buf.size() % align) w.buf += '\0';
  for (const auto& t : blobs) {
    uint64_t n = t.numel() * t.element_size();
    w.buf.append(static_cast<const char*>(t.data_ptr()), n);
    while (w.buf.size() % align) w.buf += '\0';
  }
  write_file_atomic(path, w.buf);
}

}  // namespace mlxterp
