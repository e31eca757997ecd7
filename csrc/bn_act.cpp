// Schemas of the fused BatchNorm2d + LeakyReLU op.
//
// bn_act_forward: training=True computes per-channel batch statistics (returned as
// mean and biased var, in fp32, or fp64 for fp64 input) and normalises with them;
// training=False normalises with running_mean / running_var (returned as copies).
// The running-stats update is not part of the op (it stays functional, so autograd
// and torch.compile can treat it as a pure function); fastgan/ops/bn_act.py
// applies it with bn_act_update_running_stats_ (below). bn_act_backward recomputes x_hat and the activation mask from the
// saved input and statistics. Outputs masked off by output_mask are empty.
// Kernels: csrc/cpu/bn_act.cpp, csrc/cuda/bn_act.cu; Python side: fastgan/ops/bn_act.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def(
      "bn_act_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, "
      "Tensor? running_var, bool training, float eps, float negative_slope) "
      "-> (Tensor out, Tensor mean, Tensor var)");
  m.def(
      "bn_act_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor var, bool training, float eps, float negative_slope, "
      "bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}

// ---------------------------------------------------------------------------
// The running-stats update, nn.BatchNorm2d's rule, as one call instead of half a
// dozen small tensor ops from Python: running = (1 - m) * running + m * batch, with
// the unbiased variance tracked. Device-agnostic (CPU loop or ATen ops).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

namespace fastgan {
namespace {

void bn_act_update_running_stats(at::Tensor& running_mean, at::Tensor& running_var,
                                 const at::Tensor& mean, const at::Tensor& var, double momentum,
                                 int64_t count) {
  TORCH_CHECK(count > 1, "fastgan::bn_act_update_running_stats_: count must be > 1, got ", count);
  const int64_t C = running_mean.numel();
  TORCH_CHECK(running_var.numel() == C && mean.numel() == C && var.numel() == C,
              "fastgan::bn_act_update_running_stats_: running_mean, running_var, mean and var "
              "must all have ", C, " elements");
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  at::NoGradGuard no_grad;
  const bool cpu_fast = running_mean.is_cpu() && running_var.is_cpu() && mean.is_cpu() &&
                        var.is_cpu() && running_mean.is_contiguous() &&
                        running_var.is_contiguous() &&
                        running_mean.scalar_type() == running_var.scalar_type();
  if (!cpu_fast) {
    running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
    running_var.mul_(1.0 - momentum).add_((var * unbias).to(running_var.scalar_type()), momentum);
    return;
  }
  const at::Tensor m = mean.to(at::kDouble).contiguous();
  const at::Tensor v = var.to(at::kDouble).contiguous();
  const double* mp = m.const_data_ptr<double>();
  const double* vp = v.const_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, running_mean.scalar_type(),
                                  "bn_act_update_running_stats_", [&] {
    scalar_t* rm = running_mean.mutable_data_ptr<scalar_t>();
    scalar_t* rv = running_var.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      rm[c] = static_cast<scalar_t>(momentum * mp[c] + (1.0 - momentum) * static_cast<double>(rm[c]));
      rv[c] = static_cast<scalar_t>(momentum * vp[c] * unbias +
                                    (1.0 - momentum) * static_cast<double>(rv[c]));
    }
  });
}

}  // namespace
}  // namespace fastgan

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def(
      "bn_act_update_running_stats_(Tensor(a!) running_mean, Tensor(b!) running_var, "
      "Tensor mean, Tensor var, float momentum, int count) -> ()");
}

TORCH_LIBRARY_IMPL(fastgan, CompositeExplicitAutograd, m) {
  m.impl("bn_act_update_running_stats_", &fastgan::bn_act_update_running_stats);
}
