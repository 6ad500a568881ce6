// mlxterp/torch_compat.hpp — the few spellings that differ between libtorch 1.13 (Debian) and 2.x.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/version.h>  // TORCH_VERSION_MAJOR, for `#if TORCH_VERSION_MAJOR >= 2` (SDPA, ...)

namespace at {
// libtorch 1.13 has at::NoGradGuard; 2.x only c10::NoGradGuard. Re-declaring the same alias is harmless.
using NoGradGuard = c10::NoGradGuard;
}  // namespace at
