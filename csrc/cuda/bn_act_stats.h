// Per-channel batch statistics of bn_act's CUDA kernels (csrc/cuda/bn_act.cu), for the
// other ops that normalise the way BatchNorm2d does (csrc/cuda/cbn_act.cu).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace fastgan {
namespace cuda {

// (mean, biased var) per channel of x (N, C, H, W; NCHW-contiguous or channels_last), in
// the accumulation type (fp32, fp64 for fp64 input): bn_act's Welford partials merged
// with Chan's formula, on the current stream.
std::tuple<at::Tensor, at::Tensor> bn_act_batch_stats(const at::Tensor& x);

}  // namespace cuda
}  // namespace fastgan
