// Small host-side helpers shared by every op's CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

namespace fastgan {

// Accumulation type: float for fp32/bf16/fp16 storage, double for fp64.
template <typename scalar_t>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename scalar_t>
using acc_of_t = typename AccOf<scalar_t>::type;

inline at::ScalarType acc_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// True for a channels_last tensor that is not also NCHW-contiguous (C == 1 or H = W = 1
// are both; those take the NCHW path).
inline bool is_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace fastgan
