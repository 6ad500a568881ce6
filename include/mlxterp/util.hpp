// mlxterp/util.hpp — small shared utilities: files, strings, close-match suggestions, shapes, memory.
//
//   auto file = mlxterp::MappedFile::open("model.safetensors");   // read-only mmap, size-checked
//   std::span<const uint8_t> bytes = file->bytes();
//   mlxterp::AtomicFile out("run/weights.safetensors");           // writes to a temp file ...
//   out.stream() << data;  out.commit();                          // ... renamed into place on commit
//   auto near = mlxterp::close_matches("mlpp", names);             // {"mlp", ...}
#pragma once

#include "mlxterp/torch_compat.hpp"

#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mlxterp {

// ---- files --------------------------------------------------------------------------------------

// A read-only memory map of a whole file. Shared so that tensors wrapping its bytes keep it alive.
class MappedFile {
 public:
  // Throws mlxterp::Error "<path>: cannot open: <reason>" if the file is missing or unreadable.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  size_t size() const { return size_; }
  const uint8_t* data() const { return data_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Whole file as a string (binary-safe). Throws mlxterp::Error naming the path on failure.
std::string read_file(const std::string& path);
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
// Last path component ("a/b/c.gguf" -> "c.gguf").
std::string basename(const std::string& path);
// "a/b/c.gguf" -> "a/b" ("" for a bare name).
std::string dirname(const std::string& path);
std::string join_path(const std::string& a, const std::string& b);
// Creates the directory and its parents; throws mlxterp::Error on failure.
void make_dirs(const std::string& path);
// Removes a file or a directory tree (no error if absent).
void remove_tree(const std::string& path);
// A new empty directory under $TMPDIR (or /tmp): "<tmp>/<prefix>XXXXXX".
std::string make_temp_dir(const std::string& prefix);

// Write-then-rename: readers never see a half-written file; if commit() is never reached (an
// exception, a crash, SIGKILL) the destination keeps its old content and the temp file is removed
// (or, after SIGKILL, left as "<path>.tmp.<pid>", which nothing reads).
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  std::ofstream& stream() { return out_; }
  void write(const void* data, size_t n);
  // fsyncs and renames onto the destination; throws mlxterp::Error on any I/O failure.
  void commit();

 private:
  std::string path_, tmp_;
  std::ofstream out_;
  bool committed_ = false;
};
// Convenience: atomically replace `path` with `content`.
void write_file_atomic(const std::string& path, std::string_view content);

// ---- strings ------------------------------------------------------------------------------------

std::vector<std::string> split(std::string_view s, char sep);
std::string join(const std::vector<std::string>& parts, std::string_view sep);
bool starts_with(std::string_view s, std::string_view prefix);
bool ends_with(std::string_view s, std::string_view suffix);
std::string trim(std::string_view s);
std::string to_lower(std::string_view s);
// Levenshtein distance, for "did you mean" suggestions.
size_t edit_distance(std::string_view a, std::string_view b);
// Up to `max_n` candidates closest to `query`: substring matches first, then by edit distance
// (only those within a distance that still makes them plausible).
std::vector<std::string> close_matches(std::string_view query, const std::vector<std::string>& candidates,
                                       size_t max_n = 5);
// JSON-style quoting of a string for messages: quote("a\nb") == "\"a\\nb\"".
std::string quote(std::string_view s);
// Parses a whole string as an integer / float; throws mlxterp::Error "<what>: expected <kind>, got '<s>'".
int64_t parse_int(std::string_view s, std::string_view what);
double parse_float(std::string_view s, std::string_view what);

// ---- tensors ------------------------------------------------------------------------------------

// "[2, 7, 64]"
std::string shape_str(at::IntArrayRef shape);
// "f32", "bf16", "f16", "i64", ...
std::string dtype_str(at::ScalarType t);
// Parses "f32|float32|bf16|bfloat16|f16|float16"; throws mlxterp::Error otherwise.
at::ScalarType parse_dtype(std::string_view s);
// Parses "cpu", "cuda", "cuda:N"; throws mlxterp::Error naming what is available otherwise.
at::Device parse_device(std::string_view s);

// ---- process ------------------------------------------------------------------------------------

// Resident set size and its peak (VmHWM) of this process in bytes (Linux /proc; 0 elsewhere).
size_t current_rss_bytes();
size_t peak_rss_bytes();
// "1.5 MB", "812 KB"
std::string human_bytes(double bytes);

// Monotonic stopwatch.
class Timer {
 public:
  Timer() : t0_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  void reset() { t0_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace mlxterp
