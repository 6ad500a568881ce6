// Helpers shared by the at::Tensor bindings of the CUDA kernels (sae_kernels_cuda.cpp, forward_ops.cpp):
// the device guard, "is this tensor on the kernels' device", the current stream and launch-error checks.
// Under tests/emu (MLXTERP_CUDA_EMULATE) host tensors stand for device ones and there is no stream.
#pragma once

#include <ATen/ATen.h>

#ifdef MLXTERP_CUDA_EMULATE
#define MLXTERP_DEVICE_GUARD(device) (void)(device)
#define MLXTERP_ON_GPU(t) ((t).defined())
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#define MLXTERP_DEVICE_GUARD(device) c10::cuda::CUDAGuard device_guard_(device)
#define MLXTERP_ON_GPU(t) ((t).defined() && (t).is_cuda())
#endif

#include "cuda/kernels.h"
#include "mlxterp/error.hpp"

// Throws mlxterp::Error naming `who` and the failed launch when expr does not return cudaSuccess.
#define MLXTERP_CUDA_OK_IN(who, expr)                                                               \
  do {                                                                                             \
    const cudaError_t err_ = (expr);                                                               \
    MLXTERP_CHECK(err_ == cudaSuccess, who " (CUDA): ", #expr, " failed: ", cudaGetErrorString(err_)); \
  } while (0)

namespace mlxterp::cuda_binding {

// The current stream of the current device (set it with MLXTERP_DEVICE_GUARD first).
inline cudaStream_t current_stream() {
#ifdef MLXTERP_CUDA_EMULATE
  return nullptr;
#else
  return at::cuda::getCurrentCUDAStream().stream();
#endif
}

}  // namespace mlxterp::cuda_binding
