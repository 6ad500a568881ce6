#include "mlxterp/shuffle_buffer.hpp"

#include <vector>

#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

ShuffleBuffer::ShuffleBuffer(int64_t capacity, int64_t d, at::TensorOptions options) {
  MLXTERP_CHECK(capacity > 0 && d > 0, "ShuffleBuffer: capacity and d must be > 0; got ", capacity, " and ", d);
  buf_ = at::empty({capacity, d}, options);
}

at::Tensor ShuffleBuffer::push(const at::Tensor& rows) {
  MLXTERP_CHECK(rows.dim() == 2 && rows.size(1) == d(), "ShuffleBuffer::push: rows must be [n, ", d(), "]; got ",
                shape_str(rows.sizes()));
  const int64_t n = rows.size(0), cap = capacity();
  at::Tensor src = rows.to(buf_.device(), buf_.scalar_type());
  const int64_t fill = std::min(n, cap - size_);
  if (fill > 0) {
    buf_.narrow(0, size_, fill).copy_(src.narrow(0, 0, fill));
    size_ += fill;
  }
  std::vector<at::Tensor> out;
  auto idx = at::TensorOptions().dtype(at::kLong).device(buf_.device());
  for (int64_t off = fill; off < n; off += cap) {
    const int64_t m = std::min(cap, n - off);
    at::Tensor slots = at::randperm(cap, idx).narrow(0, 0, m);  // distinct residents
    out.push_back(buf_.index_select(0, slots));
    buf_.index_copy_(0, slots, src.narrow(0, off, m));
  }
  if (out.empty()) return at::empty({0, d()}, buf_.options());
  return out.size() == 1 ? out[0] : at::cat(out, 0);
}

at::Tensor ShuffleBuffer::drain() {
  at::Tensor perm = at::randperm(size_, at::TensorOptions().dtype(at::kLong).device(buf_.device()));
  at::Tensor out = buf_.narrow(0, 0, size_).index_select(0, perm);
  size_ = 0;
  return out;
}

}  // namespace mlxterp
