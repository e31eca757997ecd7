// Argument checks of the cbn_act op (conditional BatchNorm2d + LeakyReLU), shared by its
// CPU and CUDA kernels. The Python layer (fastgan/ops/cbn_act_reference.py: check_args)
// checks first with the same wording; these protect direct torch.ops.fastgan callers.
#pragma once

#include <ATen/ATen.h>

#include "bn_act_checks.h"

namespace fastgan {
namespace cbn_act {

using bn_act::present;

// scale / shift: one row of C per sample, (N, C), floating-point, on the input's device.
inline void check_per_sample(const at::Tensor& input, const at::Tensor& t, const char* name) {
  const int64_t N = input.size(0), C = input.size(1);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == C, "fastgan::cbn_act: ", name,
              " must have shape (", N, ", ", C, ") (batch, channels) to match input of shape ",
              input.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == input.device(), "fastgan::cbn_act: ", name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastgan::cbn_act: ", name,
              " must be floating-point, got ", t.scalar_type());
}

inline void check_input(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift) {
  TORCH_CHECK(input.dim() == 4, "fastgan::cbn_act: input must be 4-D (N, C, H, W), got ",
              input.dim(), "-D of shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "fastgan::cbn_act: input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(input.numel() > 0, "fastgan::cbn_act: input is empty (shape ", input.sizes(), ")");
  check_per_sample(input, scale, "scale");
  check_per_sample(input, shift, "shift");
}

inline void check_forward(const at::Tensor& input, const at::Tensor& scale,
                          const at::Tensor& shift, const c10::optional<at::Tensor>& running_mean,
                          const c10::optional<at::Tensor>& running_var, bool training) {
  check_input(input, scale, shift);
  if (present(running_mean)) bn_act::check_per_channel(input, *running_mean, "running_mean");
  if (present(running_var)) bn_act::check_per_channel(input, *running_var, "running_var");
  TORCH_CHECK(training || (present(running_mean) && present(running_var)),
              "fastgan::cbn_act_forward: eval mode (training=False) needs running_mean and "
              "running_var");
  TORCH_CHECK(!training || input.numel() / input.size(1) > 1,
              "fastgan::cbn_act_forward: expected more than 1 value per channel when training, "
              "got input of shape ", input.sizes());
}

inline void check_backward(const at::Tensor& grad_out, const at::Tensor& input,
                           const at::Tensor& scale, const at::Tensor& shift,
                           const at::Tensor& mean, const at::Tensor& var) {
  check_input(input, scale, shift);
  bn_act::check_per_channel(input, mean, "mean");
  bn_act::check_per_channel(input, var, "var");
  TORCH_CHECK(grad_out.sizes() == input.sizes(), "fastgan::cbn_act_backward: grad_out has shape ",
              grad_out.sizes(), " but input has shape ", input.sizes());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(),
              "fastgan::cbn_act_backward: grad_out dtype ", grad_out.scalar_type(),
              " differs from input dtype ", input.scalar_type());
  TORCH_CHECK(grad_out.device() == input.device(), "fastgan::cbn_act_backward: grad_out is on ",
              grad_out.device(), " but input is on ", input.device());
}

}  // namespace cbn_act
}  // namespace fastgan
