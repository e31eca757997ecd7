// Schemas and autograd of the fused conditional BatchNorm2d + LeakyReLU op (cbn_act):
// batch statistics as nn.BatchNorm2d(affine=False), then a per-sample affine
// y = leaky(x_hat[n,c,h,w] * scale[n,c] + shift[n,c]) (class-conditional BatchNorm, with
// scale and shift gathered from per-class tables by the caller).
//
// cbn_act_forward is bn_act_forward with (N, C) scale / shift in place of (C,) weight /
// bias: training=True computes the batch statistics (returned as mean and biased var, fp32
// or fp64 for fp64 input) and updates running_mean / running_var in place when given
// (bn_act.h: update_running_stats, through bn_act::forward_and_update); training=False
// normalises with the running statistics. cbn_act_backward recomputes x_hat and the
// activation mask from the saved input and statistics; grad_scale and grad_shift are
// (N, C). Outputs masked off by output_mask are empty. Math: cbn_act_math.h. Kernels:
// csrc/cpu/kernels/cbn_act*.cpp, csrc/cuda/cbn_act.cu; Python side:
// fastgan/ops/cbn_act.py.
//
// Autograd as csrc/bn_act.cpp's: a hand-written node at the Autograd key saves the input,
// scale, shift and the statistics (never the output) and calls cbn_act_backward, whose own
// Autograd kernel runs the kernel, or with create_graph=True the same formula in
// differentiable ATen ops (double backward, as gradient penalties need).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include "cbn_act_checks.h"

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def(
      "cbn_act_forward(Tensor input, Tensor scale, Tensor shift, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float momentum, float eps, "
      "float negative_slope) -> (Tensor out, Tensor mean, Tensor var)");
  m.def(
      "cbn_act_backward(Tensor grad_out, Tensor input, Tensor scale, Tensor shift, "
      "Tensor mean, Tensor var, bool training, float eps, float negative_slope, "
      "bool[3] output_mask) -> (Tensor grad_input, Tensor grad_scale, Tensor grad_shift)");
}

namespace fastgan {

namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;
using Out3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ForwardFn = Out3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                       const OptTensor&, bool, double, double, double);
using BackwardFn = Out3(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double,
                        double, std::array<bool, 3>);

const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::cbn_act_forward", "")
                             .typed<ForwardFn>();
  return op;
}

const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::cbn_act_backward", "")
                             .typed<BackwardFn>();
  return op;
}

at::Tensor per_channel(const at::Tensor& t) { return t.view({1, -1, 1, 1}); }
at::Tensor per_sample(const at::Tensor& t) { return t.unsqueeze(-1).unsqueeze(-1); }

// cbn_act_backward in differentiable ATen ops, for when its outputs need gradients. In
// training the statistics are recomputed from the input so that their dependence on it is
// in the graph; the activation's derivative is leaky_relu_backward's, as in eager (whose
// own derivative in z is zero, so a penalty gives shift a zero gradient, not none).
Out3 backward_composite(const at::Tensor& grad_out, const at::Tensor& input,
                        const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& mean,
                        const at::Tensor& var, bool training, double eps, double slope,
                        std::array<bool, 3> mask) {
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const std::vector<int64_t> dims{0, 2, 3}, hw{2, 3};
  const at::Tensor x = input.to(acc);
  at::Tensor mu = mean.to(acc), sigma2 = var.to(acc);
  if (training) std::tie(sigma2, mu) = at::var_mean(x, at::IntArrayRef(dims), c10::Scalar(0));
  const at::Tensor invstd = (sigma2 + eps).rsqrt();
  const at::Tensor xhat = (x - per_channel(mu)) * per_channel(invstd);
  const at::Tensor s = per_sample(scale.to(acc));
  const at::Tensor z = xhat * s + per_sample(shift.to(acc));
  const at::Tensor g = grad_out.to(acc);
  const at::Tensor dz = slope == 1.0 ? g : at::leaky_relu_backward(g, z, slope, false);
  at::Tensor gx = at::empty({0}, input.options());
  at::Tensor gs = at::empty({0}, input.options().dtype(scale.scalar_type()));
  at::Tensor gb = at::empty({0}, input.options().dtype(shift.scalar_type()));
  if (mask[0]) {
    at::Tensor gp = dz * s;
    if (training) {
      gp = gp - gp.mean(at::IntArrayRef(dims), true) -
           xhat * (gp * xhat).mean(at::IntArrayRef(dims), true);
    }
    gx = (gp * per_channel(invstd)).to(input.scalar_type());
  }
  if (mask[1]) gs = (dz * xhat).sum(at::IntArrayRef(hw)).to(scale.scalar_type());
  if (mask[2]) gb = dz.sum(at::IntArrayRef(hw)).to(shift.scalar_type());
  return {gx, gs, gb};
}

Out3 backward_autograd(const at::Tensor& grad_out, const at::Tensor& input,
                       const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& mean,
                       const at::Tensor& var, bool training, double eps, double slope,
                       std::array<bool, 3> mask) {
  if (torch::autograd::compute_requires_grad(grad_out, input, scale, shift, mean, var)) {
    return backward_composite(grad_out, input, scale, shift, mean, var, training, eps, slope,
                              mask);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op().call(grad_out, input, scale, shift, mean, var, training, eps, slope,
                            mask);
}

// One node per forward call: inputs (input, scale, shift); out is the one differentiable
// output (mean and var have no gradient).
struct CbnActBackward final : public torch::autograd::Node {
  SavedVariable input, scale, shift, mean, var;
  bool training = true;
  double eps = 1e-5, slope = 0.0;

  std::string name() const override { return "CbnActBackward"; }

  void release_variables() override {
    for (SavedVariable* v : {&input, &scale, &shift, &mean, &var}) v->reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    const std::array<bool, 3> mask{task_should_compute_output(0), task_should_compute_output(1),
                                   task_should_compute_output(2)};
    variable_list out(3);
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2])) return out;
    // through the dispatcher: with create_graph=True the Autograd kernel above records a
    // differentiable graph, otherwise it goes straight to the kernel
    auto [gx, gs, gb] = backward_op().call(grads[0], input.unpack(), scale.unpack(),
                                           shift.unpack(), mean.unpack(), var.unpack(),
                                           training, eps, slope, mask);
    if (mask[0]) out[0] = std::move(gx);
    if (mask[1]) out[1] = std::move(gs);
    if (mask[2]) out[2] = std::move(gb);
    return out;
  }
};

Out3 forward_autograd(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift,
                      const OptTensor& running_mean, const OptTensor& running_var, bool training,
                      double momentum, double eps, double slope) {
  TORCH_CHECK(!torch::autograd::isFwGradDefined(input) &&
                  !torch::autograd::isFwGradDefined(scale) &&
                  !torch::autograd::isFwGradDefined(shift),
              "fastgan::cbn_act_forward: forward-mode AD (jvp) is not supported");
  Out3 out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = forward_op().call(input, scale, shift, running_mean, running_var, training, momentum,
                            eps, slope);
  }
  if (training) {  // updated in place (below the ADInplaceOrView key this guard skipped)
    for (const OptTensor* t : {&running_mean, &running_var}) {
      if (cbn_act::present(*t)) torch::autograd::increment_version(**t);
    }
  }
  if (torch::autograd::compute_requires_grad(input, scale, shift)) {
    auto node = c10::make_intrusive<CbnActBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(input, scale, shift));
    node->input = SavedVariable(input, /*is_output=*/false);
    node->scale = SavedVariable(scale, false);
    node->shift = SavedVariable(shift, false);
    node->mean = SavedVariable(std::get<1>(out), false);  // no history: plain tensors
    node->var = SavedVariable(std::get<2>(out), false);
    node->training = training;
    node->eps = eps;
    node->slope = slope;
    torch::autograd::set_history(std::get<0>(out), node);
    torch::autograd::fire_node_creation_hooks(node);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("cbn_act_forward", &forward_autograd);
  m.impl("cbn_act_backward", &backward_autograd);
}

}  // namespace fastgan
