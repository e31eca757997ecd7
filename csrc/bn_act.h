// The bn_act op's forward as its device registrations (csrc/cpu/dispatch.cpp,
// csrc/cuda/bn_act.cu) run it: their kernel, then the running-statistics update, in one
// op call (schemas and autograd: csrc/bn_act.cpp). Included by files compiled once, for
// the baseline instruction set; the per-instruction-set kernels (csrc/cpu/kernels/) have
// no use for it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <tuple>

#include "bn_act_checks.h"

namespace fastgan {
namespace bn_act {

// nn.BatchNorm2d's rule, in place: running = (1 - momentum) * running + momentum * batch,
// with the unbiased variance (var * count / (count - 1)) tracked. On the CPU one loop over
// the channels in double, as ATen's CPU BatchNorm computes it; elsewhere ATen ops.
// fastgan/ops/bn_act_reference.py: update_running_stats is the same rule in torch ops.
inline void update_running_stats(const at::Tensor& running_mean, const at::Tensor& running_var,
                                 const at::Tensor& mean, const at::Tensor& var, double momentum,
                                 int64_t count) {
  TORCH_CHECK(count > 1, "fastgan::bn_act_forward: running statistics need more than 1 value "
              "per channel, got ", count);
  const int64_t C = running_mean.numel();
  TORCH_CHECK(running_var.numel() == C && mean.numel() == C && var.numel() == C,
              "fastgan::bn_act_forward: running_mean, running_var, mean and var "
              "must all have ", C, " elements");
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  at::NoGradGuard no_grad;
  const bool cpu_loop = running_mean.is_cpu() && running_var.is_cpu() && mean.is_cpu() &&
                        var.is_cpu() && running_mean.is_contiguous() &&
                        running_var.is_contiguous() &&
                        running_mean.scalar_type() == running_var.scalar_type();
  if (!cpu_loop) {
    running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
    running_var.mul_(1.0 - momentum).add_((var * unbias).to(running_var.scalar_type()), momentum);
    return;
  }
  const at::Tensor m = mean.to(at::kDouble).contiguous();
  const at::Tensor v = var.to(at::kDouble).contiguous();
  const double* mp = m.const_data_ptr<double>();
  const double* vp = v.const_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, running_mean.scalar_type(),
                                  "bn_act_update_running_stats", [&] {
    scalar_t* rm = running_mean.mutable_data_ptr<scalar_t>();
    scalar_t* rv = running_var.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      rm[c] = static_cast<scalar_t>(momentum * mp[c] + (1.0 - momentum) * static_cast<double>(rm[c]));
      rv[c] = static_cast<scalar_t>(momentum * vp[c] * unbias +
                                    (1.0 - momentum) * static_cast<double>(rv[c]));
    }
  });
}

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
