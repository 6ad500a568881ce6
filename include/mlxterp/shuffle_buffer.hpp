// mlxterp/shuffle_buffer.hpp — a token-level shuffle buffer that stays on the activations' device.
//
//   ShuffleBuffer buf(/*capacity=*/32768, /*d=*/4096, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
//   at::Tensor out = buf.push(acts.reshape({-1, 4096}));   // [m, 4096]: rows leaving the buffer, random order
//   // m = max(0, size() + n - capacity) is known on the host: pushing never synchronises with the device.
//   at::Tensor rest = buf.drain();                          // what is left, shuffled (end of the stream)
//
// Rows fill the buffer first; once it is full, each incoming row replaces a resident chosen uniformly at
// random (without repetition within a push), and the replaced rows are returned. Every row comes out exactly
// once, and tokens of one sequence leave at independent times, so an SAE batch mixes many sequences.
// Random choices use libtorch's default generator of the buffer's device (seed it with at::manual_seed).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace mlxterp {

class ShuffleBuffer {
 public:
  ShuffleBuffer(int64_t capacity, int64_t d, at::TensorOptions options);
  // rows: [n, d] (any dtype; stored in the buffer's). Returns [m, d] in the buffer's dtype.
  at::Tensor push(const at::Tensor& rows);
  at::Tensor drain();
  int64_t size() const { return size_; }
  int64_t capacity() const { return buf_.size(0); }
  int64_t d() const { return buf_.size(1); }

 private:
  at::Tensor buf_;  // [capacity, d]
  int64_t size_ = 0;
};

}  // namespace mlxterp
