#include "mlxterp/util.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "mlxterp/error.hpp"

namespace mlxterp {

namespace fs = std::filesystem;

// ---- files --------------------------------------------------------------------------------------

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MLXTERP_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    MLXTERP_FAIL(path, ": not a regular file");
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      MLXTERP_FAIL(path, ": cannot mmap: ", std::strerror(e));
    }
    f->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MLXTERP_CHECK(in.good(), path, ": cannot open: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  MLXTERP_CHECK(!in.bad(), path, ": read error");
  return ss.str();
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

bool is_directory(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

std::string basename(const std::string& path) { return fs::path(path).filename().string(); }

std::string dirname(const std::string& path) { return fs::path(path).parent_path().string(); }

std::string join_path(const std::string& a, const std::string& b) { return (fs::path(a) / b).string(); }

// POSIX rather than std::filesystem::create_directories: the latter crashed inside a torch 2.x wheel
// process on the GPU machine (libstdc++ filesystem symbols clash), while plain syscalls cannot.
void make_dirs(const std::string& path) {
  MLXTERP_CHECK(!path.empty(), "make_dirs: empty path");
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t slash = path.find('/', i);
    if (slash == std::string::npos) slash = path.size();
    cur = path.substr(0, slash);
    if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
      MLXTERP_FAIL(path, ": cannot create directory '", cur, "': ", std::strerror(errno));
    i = slash + 1;
  }
  struct stat st {};
  MLXTERP_CHECK(::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode), path,
                ": cannot create directory: a file of that name exists");
}

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR* d = ::opendir(path.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") remove_tree(path + "/" + n);
      }
      ::closedir(d);
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

std::string make_temp_dir(const std::string& prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/" + prefix + "XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  MLXTERP_CHECK(::mkdtemp(buf.data()) != nullptr, tmpl, ": cannot create a temporary directory: ", std::strerror(errno));
  return buf.data();
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  out_.open(tmp_, std::ios::binary | std::ios::trunc);
  MLXTERP_CHECK(out_.good(), path_, ": cannot write: ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (!committed_) {
    out_.close();
    std::remove(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) { out_.write(static_cast<const char*>(data), n); }

void AtomicFile::commit() {
  out_.flush();
  MLXTERP_CHECK(out_.good(), path_, ": write failed (disk full?)");
  out_.close();
  int fd = ::open(tmp_.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  MLXTERP_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, path_, ": cannot rename temp file into place: ",
                std::strerror(errno));
  committed_ = true;
}

void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicFile f(path);
  f.write(content.data(), content.size());
  f.commit();
}

// ---- strings ------------------------------------------------------------------------------------

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    if (pos == std::string_view::npos) {
      out.emplace_back(s.substr(start));
      break;
    }
    out.emplace_back(s.substr(start, pos - start));
    start = pos + 1;
  }
  return out;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

std::string trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return std::string(s.substr(a, b - a));
}

std::string to_lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::vector<std::string> close_matches(std::string_view query, const std::vector<std::string>& candidates,
                                       size_t max_n) {
  struct Scored {
    size_t score;
    const std::string* s;
  };
  std::vector<Scored> scored;
  const size_t limit = std::max<size_t>(2, query.size() / 3 + 1);
  for (const auto& c : candidates) {
    size_t d = edit_distance(query, c);
    bool related = c.find(query) != std::string::npos || query.find(c) != std::string_view::npos;
    // Also compare only the last dotted components ("model.layers.3.mlpp" vs "...mlp").
    if (d <= limit || related) scored.push_back({related ? d / 4 : d, &c});
  }
  std::stable_sort(scored.begin(), scored.end(), [](const Scored& x, const Scored& y) { return x.score < y.score; });
  std::vector<std::string> out;
  for (size_t i = 0; i < scored.size() && out.size() < max_n; ++i) out.push_back(*scored[i].s);
  return out;
}

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

int64_t parse_int(std::string_view s, std::string_view what) {
  std::string t = trim(s);
  int64_t v = 0;
  auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  MLXTERP_CHECK(!t.empty() && ec == std::errc() && p == t.data() + t.size(), what, ": expected an integer, got '",
                std::string(s), "'");
  return v;
}

double parse_float(std::string_view s, std::string_view what) {
  std::string t = trim(s);
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(t.c_str(), &end);
  MLXTERP_CHECK(!t.empty() && end == t.c_str() + t.size() && errno == 0, what, ": expected a number, got '",
                std::string(s), "'");
  return v;
}

// ---- tensors ------------------------------------------------------------------------------------

std::string shape_str(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string dtype_str(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "f32";
    case at::kDouble: return "f64";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "f16";
    case at::kLong: return "i64";
    case at::kInt: return "i32";
    case at::kShort: return "i16";
    case at::kChar: return "i8";
    case at::kByte: return "u8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

at::ScalarType parse_dtype(std::string_view s) {
  std::string t = to_lower(s);
  if (t == "f32" || t == "float32" || t == "float") return at::kFloat;
  if (t == "bf16" || t == "bfloat16") return at::kBFloat16;
  if (t == "f16" || t == "float16" || t == "half") return at::kHalf;
  if (t == "f64" || t == "float64" || t == "double") return at::kDouble;
  MLXTERP_FAIL("--dtype: unknown dtype; expected f32, bf16 or f16, got '", std::string(s), "'");
}

at::Device parse_device(std::string_view s) {
  std::string t = to_lower(s);
  if (t == "cpu") return at::Device(at::kCPU);
  if (starts_with(t, "cuda")) {
    int index = 0;
    if (t.size() > 4) {
      MLXTERP_CHECK(t[4] == ':', "--device: expected cpu, cuda or cuda:N, got '", std::string(s), "'");
      index = static_cast<int>(parse_int(t.substr(5), "--device index"));
    }
    MLXTERP_CHECK(at::hasCUDA(), "--device ", std::string(s),
                  ": this build of libtorch has no CUDA or no GPU is visible; expected cpu (hint: build against a "
                  "CUDA libtorch, see README 'GPU build')");
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  MLXTERP_FAIL("--device: expected cpu, cuda or cuda:N, got '", std::string(s), "'");
}

// ---- process ------------------------------------------------------------------------------------

static size_t proc_status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  size_t klen = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, klen, key) == 0) return std::strtoull(line.c_str() + klen + 1, nullptr, 10);
  }
  return 0;
}

size_t current_rss_bytes() { return proc_status_kb("VmRSS") * 1024; }
size_t peak_rss_bytes() { return proc_status_kb("VmHWM") * 1024; }

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

}  // namespace mlxterp
