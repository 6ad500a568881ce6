// mlxterp/error.hpp — the two kinds of error (after PyTorch's c10).
//
//   MLXTERP_CHECK(n_layers > 0, path, ": n_layers must be > 0; got ", n_layers,
//                 " (is config.json from another checkpoint?)");
//   MLXTERP_ASSERT(q.size(-1) == d_head);     // our own invariant
//
// MLXTERP_CHECK is for the caller's mistakes (a bad file, name, config value or argument). It throws
// mlxterp::Error whose message follows the project's form
//     <where>: <what>; expected <X>, got <Y> (<hint>)
// and the CLI prints it as `error: <message>` and exits 1. UsageError (a bad command line) exits 2.
// MLXTERP_ASSERT is for our own bugs: it throws InternalError naming file:line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mlxterp {

// A user-facing error: the message is complete and printed verbatim after "error: ".
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad command line (unknown option, missing argument). The CLI exits 2 for these.
class UsageError : public Error {
 public:
  using Error::Error;
};

// A broken invariant inside mlxterp itself (a bug, not the user's fault).
class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// Concatenate anything streamable: cat("got ", 3, " layers") == "got 3 layers".
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace mlxterp

#define MLXTERP_CHECK(cond, ...)                                   \
  do {                                                             \
    if (!(cond)) throw ::mlxterp::Error(::mlxterp::cat(__VA_ARGS__)); \
  } while (0)

#define MLXTERP_FAIL(...) throw ::mlxterp::Error(::mlxterp::cat(__VA_ARGS__))

#define MLXTERP_ASSERT(cond)                                                                     \
  do {                                                                                           \
    if (!(cond))                                                                                 \
      throw ::mlxterp::InternalError(::mlxterp::cat(__FILE__, ":", __LINE__,                     \
                                                    ": internal error: assertion failed: " #cond)); \
  } while (0)
