// Schemas of the fused BatchNorm2d + LeakyReLU op.
//
// bn_act_forward: training=True computes per-channel batch statistics (returned as
// mean and biased var, in fp32, or fp64 for fp64 input) and normalises with them;
// training=False normalises with running_mean / running_var (returned as copies).
// The running-stats update is not part of the op (it stays functional, so autograd
// and torch.compile can treat it as a pure function); fastgan/ops/bn_act.py
// applies it. bn_act_backward recomputes x_hat and the activation mask from the
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
