// Argument checks of the bn_act op, shared by its CPU and CUDA kernels (the Python layer
// checks first with the same wording; these protect direct torch.ops.fastgan callers).
#pragma once

#include <ATen/ATen.h>

namespace fastgan {
namespace bn_act {

inline void check_per_channel(const at::Tensor& input, const at::Tensor& t, const char* name) {
  const int64_t C = input.size(1);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C, "fastgan::bn_act: ", name, " must have shape (", C,
              ",) to match input channels, got ", t.sizes());
  TORCH_CHECK(t.device() == input.device(), "fastgan::bn_act: ", name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastgan::bn_act: ", name,
              " must be floating-point, got ", t.scalar_type());
}

inline bool present(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline void check_input(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                        const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.dim() == 4, "fastgan::bn_act: input must be 4-D (N, C, H, W), got ",
              input.dim(), "-D of shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "fastgan::bn_act: input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(input.numel() > 0, "fastgan::bn_act: input is empty (shape ", input.sizes(), ")");
  if (present(weight)) check_per_channel(input, *weight, "weight");
  if (present(bias)) check_per_channel(input, *bias, "bias");
}

inline void check_forward(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                          const c10::optional<at::Tensor>& bias,
                          const c10::optional<at::Tensor>& running_mean,
                          const c10::optional<at::Tensor>& running_var, bool training) {
  check_input(input, weight, bias);
  if (present(running_mean)) check_per_channel(input, *running_mean, "running_mean");
  if (present(running_var)) check_per_channel(input, *running_var, "running_var");
  TORCH_CHECK(training || (present(running_mean) && present(running_var)),
              "fastgan::bn_act_forward: eval mode (training=False) needs running_mean and "
              "running_var");
  TORCH_CHECK(!training || input.numel() / input.size(1) > 1,
              "fastgan::bn_act_forward: expected more than 1 value per channel when training, "
              "got input of shape ", input.sizes());
}

inline void check_backward(const at::Tensor& grad_out, const at::Tensor& input,
                           const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias, const at::Tensor& mean,
                           const at::Tensor& var) {
  check_input(input, weight, bias);
  check_per_channel(input, mean, "mean");
  check_per_channel(input, var, "var");
  TORCH_CHECK(grad_out.sizes() == input.sizes(), "fastgan::bn_act_backward: grad_out has shape ",
              grad_out.sizes(), " but input has shape ", input.sizes());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(),
              "fastgan::bn_act_backward: grad_out dtype ", grad_out.scalar_type(),
              " differs from input dtype ", input.scalar_type());
  TORCH_CHECK(grad_out.device() == input.device(), "fastgan::bn_act_backward: grad_out is on ",
              grad_out.device(), " but input is on ", input.device());
}

}  // namespace bn_act
}  // namespace fastgan
