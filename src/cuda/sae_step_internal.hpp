// Shared by the reference step (sae_step.cpp) and the CUDA binding (sae_step_cuda.cpp).
#pragma once

#include "mlxterp/sae_step.hpp"

namespace mlxterp::sae_step::detail {

// Shapes, dtypes and devices of a step's inputs; throws mlxterp::Error naming `where`.
void check_step_inputs(const Params& p, const AdamState& s, const at::Tensor& since_fired, const at::Tensor& x,
                       const StepConfig& c, const char* where);

}  // namespace mlxterp::sae_step::detail
