// The CPU forward of fastgan::bn_act_forward as a C++ function. Since issue 14 nothing
// outside csrc/cpu calls it: the op's CPU registration (csrc/cpu/bn_act.cpp) is its only
// caller, always with contiguous_out=false. contiguous_out=true (an NHWC input's output
// written NCHW by the apply pass) was an option outside the op's schema, reached through
// an eager side path that is gone; it measured within noise of a separate relayout
// (fastgan/nn/blocks.py, _ToContiguous). It is to be dropped with this declaration.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace fastgan {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_forward_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool training, double eps,
    double negative_slope, bool contiguous_out);

}  // namespace cpu
}  // namespace fastgan
