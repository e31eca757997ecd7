// The CPU forward of fastgan::bn_act_forward, callable from C++ (csrc/bn_act_eager.cpp)
// with one option the op's schema does not have: contiguous_out=true returns y NCHW
// whatever the input's layout (an NHWC input's output is then written transposed by the
// kernel's own apply pass instead of copied afterwards). With false it is the op.
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
