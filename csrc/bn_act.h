// What the bn_act op's device registrations (csrc/cpu/dispatch.cpp, csrc/cuda/bn_act.cu)
// share with its schema file, csrc/bn_act.cpp: the running-statistics update, and the
// forward as every device runs it (its kernel, then that update, in one op call).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "bn_act_checks.h"

namespace fastgan {
namespace bn_act {

// nn.BatchNorm2d's rule, in place: running = (1 - momentum) * running + momentum * batch,
// with the unbiased variance (var * count / (count - 1)) tracked. Defined in bn_act.cpp;
// fastgan/ops/bn_act_reference.py: update_running_stats is the same rule in torch ops.
void update_running_stats(const at::Tensor& running_mean, const at::Tensor& running_var,
                          const at::Tensor& mean, const at::Tensor& var, double momentum,
                          int64_t count);

// fastgan::bn_act_forward on one device: `kernel` (that device's, which never sees the
// running statistics in training) and, in training with running statistics, their update
// with the statistics the kernel returned.
template <typename Kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_and_update(
    Kernel kernel, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    double negative_slope) {
  if (!training) {
    return kernel(input, weight, bias, running_mean, running_var, false, eps, negative_slope);
  }
  const c10::optional<at::Tensor> none;
  auto out = kernel(input, weight, bias, none, none, true, eps, negative_slope);
  if (present(running_mean) || present(running_var)) {
    TORCH_CHECK(present(running_mean) && present(running_var),
                "fastgan::bn_act_forward: running_mean and running_var must both be given or "
                "both be None");
    update_running_stats(*running_mean, *running_var, std::get<1>(out), std::get<2>(out),
                         momentum, input.numel() / input.size(1));
  }
  return out;
}

}  // namespace bn_act
}  // namespace fastgan
