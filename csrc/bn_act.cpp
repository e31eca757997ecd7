// Schemas, autograd and running-statistics update of the fused BatchNorm2d + LeakyReLU op.
//
// bn_act_forward has aten::native_batch_norm's schema plus the slope: training=True
// computes per-channel batch statistics (returned as mean and biased var, in fp32, or
// fp64 for fp64 input), normalises with them and, when running_mean / running_var are
// given, updates them in place (bn_act.h: update_running_stats) in the same call;
// training=False normalises with running_mean / running_var (returned as copies).
// The device registrations run their kernel and that update (bn_act.h:
// forward_and_update). bn_act_backward recomputes x_hat and the activation mask from the
// saved input and statistics. Outputs masked off by output_mask are empty.
// negative_slope = 1 is the identity: a BatchNorm alone. Kernels:
// csrc/cpu/kernels/bn_act*.cpp, csrc/cuda/bn_act.cu; Python side (checks, backend choice,
// reference, fake kernels): fastgan/ops/bn_act.py.
//
// Autograd lives here, once, at the Autograd key (as csrc/gan_loss.cpp's): a
// hand-written node that saves the input and the statistics (never the output) and
// calls bn_act_backward. That backward op is itself differentiable: its Autograd kernel
// runs the kernel when nothing needs its gradient, and otherwise (create_graph=True, as
// gradient penalties do) the same formula in differentiable ATen ops, whose graph
// autograd records for the second derivative. (StyleGAN2-ADA's bias_act has this
// shape.) So eager calls, torch.compile and opcheck all see one autograd.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include "bn_act.h"

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def(
      "bn_act_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float momentum, float eps, "
      "float negative_slope) -> (Tensor out, Tensor mean, Tensor var)");
  m.def(
      "bn_act_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor var, bool training, float eps, float negative_slope, "
      "bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}

namespace fastgan {

namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;
using Out3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ForwardFn = Out3(const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                       const OptTensor&, bool, double, double, double);
using BackwardFn = Out3(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                        const at::Tensor&, const at::Tensor&, bool, double, double,
                        std::array<bool, 3>);

const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::bn_act_forward", "")
                             .typed<ForwardFn>();
  return op;
}

const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::bn_act_backward", "")
                             .typed<BackwardFn>();
  return op;
}

at::Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : at::Tensor(); }

OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

// A per-channel (C,) tensor shaped to broadcast against (N, C, H, W).
at::Tensor per_channel(const at::Tensor& t) { return t.view({1, -1, 1, 1}); }

// ---------------------------------------------------------------------------
// bn_act_backward in differentiable ATen ops, for when its outputs need gradients.
//
// In training the statistics are recomputed from the input, so that their dependence
// on it is part of the graph. The activation's derivative is taken as eager's is, with
// leaky_relu_backward, whose own derivative in the pre-activation is zero: a bias then
// gets a zero gradient from a penalty, not none, exactly as eager BatchNorm2d +
// LeakyReLU/ReLU gives it (an optimizer moves a parameter with a zero gradient but
// skips one with none). Slope 1 (no activation) has no such step, as in eager.
Out3 backward_composite(const at::Tensor& grad_out, const at::Tensor& input,
                        const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
                        const at::Tensor& var, bool training, double eps, double slope,
                        std::array<bool, 3> mask) {
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const std::vector<int64_t> dims{0, 2, 3};
  const at::Tensor x = input.to(acc);
  at::Tensor mu = mean.to(acc), sigma2 = var.to(acc);
  if (training) std::tie(sigma2, mu) = at::var_mean(x, at::IntArrayRef(dims), c10::Scalar(0));
  const at::Tensor invstd = (sigma2 + eps).rsqrt();
  const at::Tensor xhat = (x - per_channel(mu)) * per_channel(invstd);
  const at::Tensor w = weight.defined() ? weight.to(acc) : at::Tensor();
  at::Tensor z = w.defined() ? xhat * per_channel(w) : xhat;
  if (bias.defined()) z = z + per_channel(bias.to(acc));
  const at::Tensor g = grad_out.to(acc);
  const at::Tensor dz = slope == 1.0 ? g : at::leaky_relu_backward(g, z, slope, false);
  const at::Tensor sum_dz = dz.sum(at::IntArrayRef(dims));
  const at::Tensor sum_dz_xhat = (dz * xhat).sum(at::IntArrayRef(dims));
  const auto empty = [&](const at::Tensor& like) {
    return at::empty({0}, input.options().dtype(like.defined() ? like.scalar_type()
                                                               : input.scalar_type()));
  };
  at::Tensor gx = empty(input), gw = empty(weight), gb = empty(bias);
  if (mask[0]) {
    at::Tensor d = dz;
    if (training) {
      const double n = static_cast<double>(input.numel() / input.size(1));
      d = dz - per_channel(sum_dz / n) - xhat * per_channel(sum_dz_xhat / n);
    }
    gx = (d * per_channel(w.defined() ? invstd * w : invstd)).to(input.scalar_type());
  }
  if (mask[1] && weight.defined()) gw = sum_dz_xhat.to(weight.scalar_type());
  if (mask[2] && bias.defined()) gb = sum_dz.to(bias.scalar_type());
  return {gx, gw, gb};
}

Out3 backward_autograd(const at::Tensor& grad_out, const at::Tensor& input,
                       const OptTensor& weight, const OptTensor& bias, const at::Tensor& mean,
                       const at::Tensor& var, bool training, double eps, double slope,
                       std::array<bool, 3> mask) {
  if (torch::autograd::compute_requires_grad(grad_out, input, weight, bias, mean, var)) {
    return backward_composite(grad_out, input, value_or_undefined(weight),
                              value_or_undefined(bias), mean, var, training, eps, slope, mask);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op().call(grad_out, input, weight, bias, mean, var, training, eps, slope,
                            mask);
}

// ---------------------------------------------------------------------------
// Forward autograd: one node per call, inputs (input, weight, bias), one differentiable
// output (out; mean and var have no gradient).

struct BnActBackward final : public torch::autograd::Node {
  SavedVariable input, weight, bias, mean, var;  // undefined weight / bias: affine=False
  bool training = true;
  double eps = 1e-5, slope = 0.0;

  std::string name() const override { return "BnActBackward"; }

  void release_variables() override {
    for (SavedVariable* v : {&input, &weight, &bias, &mean, &var}) v->reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    // (no edge, no output: an absent weight or bias is never asked for)
    const std::array<bool, 3> mask{task_should_compute_output(0), task_should_compute_output(1),
                                   task_should_compute_output(2)};
    variable_list out(3);
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2])) return out;
    // through the dispatcher: with create_graph=True the Autograd kernel above records
    // a differentiable graph, otherwise it goes straight to the kernel
    auto [gx, gw, gb] = backward_op().call(grads[0], input.unpack(), optional(weight.unpack()),
                                           optional(bias.unpack()), mean.unpack(), var.unpack(),
                                           training, eps, slope, mask);
    if (mask[0]) out[0] = std::move(gx);
    if (mask[1]) out[1] = std::move(gw);
    if (mask[2]) out[2] = std::move(gb);
    return out;
  }
};

Out3 forward_autograd(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                      const OptTensor& running_mean, const OptTensor& running_var, bool training,
                      double momentum, double eps, double slope) {
  TORCH_CHECK(!torch::autograd::isFwGradDefined(input) &&
                  !torch::autograd::isFwGradDefined(weight) &&
                  !torch::autograd::isFwGradDefined(bias),
              "fastgan::bn_act_forward: forward-mode AD (jvp) is not supported");
  Out3 out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = forward_op().call(input, weight, bias, running_mean, running_var, training, momentum,
                            eps, slope);
  }
  if (training) {  // updated in place (below the ADInplaceOrView key this guard skipped)
    for (const OptTensor* t : {&running_mean, &running_var}) {
      if (bn_act::present(*t)) torch::autograd::increment_version(**t);
    }
  }
  if (torch::autograd::compute_requires_grad(input, weight, bias)) {
    auto node = c10::make_intrusive<BnActBackward>();
    // an absent weight or bias gets an empty edge: inputs stay (input, weight, bias)
    node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias));
    node->input = SavedVariable(input, /*is_output=*/false);
    node->weight = SavedVariable(value_or_undefined(weight), false);
    node->bias = SavedVariable(value_or_undefined(bias), false);
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

// fastgan::bn_act_forward through the dispatcher (autograd included), from C++: what
// fastgan.ops.bn_act.forward_with_stats runs on the compiled backends in eager mode
// (fastgan._C.bn_act_eager, csrc/fastgan.cpp), without torch.ops' boxed call.
Out3 bn_act_forward_call(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                         const OptTensor& running_mean, const OptTensor& running_var,
                         bool training, double momentum, double eps, double slope) {
  return forward_op().call(input, weight, bias, running_mean, running_var, training, momentum,
                           eps, slope);
}

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("bn_act_forward", &forward_autograd);
  m.impl("bn_act_backward", &backward_autograd);
}

}  // namespace fastgan
