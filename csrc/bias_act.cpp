// Schemas and autograd of the bias_act op (StyleGAN's bias + activation + gain + clamp).
//
// bias_act_forward(x, b, dim, act, alpha, gain, clamp) -> y
//     y = clamp(act(x + b) * gain, -clamp, clamp), b broadcast along `dim`; clamp < 0 is
//     no clamp. alpha and gain are the values to use (the Python front fills NVlabs'
//     defaults in). y has x's shape, dtype and memory format.
// bias_act_backward(grad, ref, b, dim, act, alpha, gain, clamp, order, output_mask)
//     -> (grad_x, grad_b)
//     order 1: grad_x = dL/dx from grad = dL/dy, with `ref` the one tensor the forward
//     saved (y, x or none: csrc/bias_act_math.h, RefKind); order 2: the derivative of
//     the order-1 result with respect to `ref`, times grad. grad_b (when b is given) is
//     grad_x summed over every dimension but `dim` (in double, then cast to b's dtype),
//     computed in the same pass; outputs masked off by output_mask, or grad_b without b,
//     are empty.
// Kernels: csrc/cpu/kernels/bias_act.cpp, csrc/cuda/bias_act.cu (math in
// csrc/bias_act_math.h); Python side, fake kernels and backend choice:
// fastgan/ops/bias_act.py.
//
// Autograd, in C++ as for gan_loss (csrc/gan_loss.cpp): the forward's node saves the one
// activation-sized tensor `ref` (and b, a parameter) and calls bias_act_backward of order 1.
// That call, made with create_graph, records a second hand-written node, so gradients of
// gradients (R1 penalties) run the kernels too: the gradient of the order-1 result with
// respect to grad is an order-1 call again (it is linear in grad), with respect to ref
// (and b) the order-2 call (zeros where the activation is piecewise linear, as eager
// gives). Third order is not supported: differentiating an order-2
// result raises.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <mutex>
#include <string>

#include "bias_act_math.h"

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def(
      "bias_act_forward(Tensor x, Tensor? b, int dim, str act, float alpha, float gain, "
      "float clamp) -> Tensor");
  m.def(
      "bias_act_backward(Tensor grad, Tensor? ref, Tensor? b, int dim, str act, float alpha, "
      "float gain, float clamp, int order, bool[2] output_mask) -> (Tensor grad_x, "
      "Tensor grad_b)");
}

namespace fastgan {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

using ForwardFn = at::Tensor(const at::Tensor&, const OptTensor&, int64_t, c10::string_view,
                             double, double, double);
using BackwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&,
                                                      const OptTensor&, int64_t,
                                                      c10::string_view, double, double, double,
                                                      int64_t, std::array<bool, 2>);

const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::bias_act_forward", "")
                             .typed<ForwardFn>();
  return op;
}

const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::bias_act_backward", "")
                             .typed<BackwardFn>();
  return op;
}

// The op's non-tensor arguments, as both nodes keep them.
struct Params {
  int64_t dim = 1;
  std::string act;
  double alpha = 0, gain = 1, clamp = -1;
};

OptTensor opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

// backward_op() through the Autograd key when the caller records a graph (create_graph),
// else below it.
std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad, const at::Tensor& ref,
                                                 const at::Tensor& b, const Params& p,
                                                 int64_t order, std::array<bool, 2> mask) {
  if (at::GradMode::is_enabled()) {
    return backward_op().call(grad, opt(ref), opt(b), p.dim, p.act, p.alpha, p.gain, p.clamp,
                              order, mask);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op().call(grad, opt(ref), opt(b), p.dim, p.act, p.alpha, p.gain, p.clamp,
                            order, mask);
}

// Backward of bias_act_forward. Input: dL/dy. Outputs: dL/dx, dL/db.
struct BiasActBackward final : public torch::autograd::Node {
  SavedVariable ref, b;
  Params p;

  std::string name() const override { return "BiasActBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    ref.reset_data();
    b.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(2);
    const std::array<bool, 2> mask{task_should_compute_output(0),
                                   task_should_compute_output(1)};
    if (!grads[0].defined() || !(mask[0] || mask[1])) return out;
    const at::Tensor r = ref.unpack(getptr());
    const at::Tensor bias = b.unpack();
    auto [gx, gb] = call_backward(grads[0], r, bias, p, 1, mask);
    if (mask[0]) out[0] = std::move(gx);
    if (mask[1]) out[1] = std::move(gb);
    return out;
  }
};

// Backward of bias_act_backward (order 1). Inputs: dL/d(grad_x), dL/d(grad_b). Outputs:
// dL/d(grad), dL/d(ref), dL/d(b).
struct BiasActGradBackward final : public torch::autograd::Node {
  SavedVariable grad, ref, b;
  Params p;
  bool second = false;  // the activation has a second derivative
  bool ref_is_x = false;

  std::string name() const override { return "BiasActGradBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    grad.reset_data();
    ref.reset_data();
    b.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(3);
    // grad_b = sum of grad_x over all dims but `dim`: its gradient joins grad_x's,
    // broadcast back along `dim`.
    at::Tensor u = grads[0];
    if (grads[1].defined()) {
      const at::Tensor g = grad.unpack();
      std::vector<int64_t> shape(g.dim(), 1);
      shape[p.dim] = -1;
      at::Tensor gb = grads[1].reshape(shape).to(g.scalar_type());
      u = u.defined() ? u + gb : gb.expand(g.sizes());
    }
    if (!u.defined()) return out;
    const at::Tensor r = ref.unpack();
    const at::Tensor bias = b.unpack();
    if (task_should_compute_output(0)) {
      out[0] = std::get<0>(call_backward(u, r, bias, p, 1, {true, false}));
    }
    const bool want_b = ref_is_x && task_should_compute_output(2);
    if (!second && task_should_compute_output(1)) {
      // the order-1 factor is piecewise constant: its derivative is zero, and as eager
      // (leaky_relu_backward's derivative is zeros_like) it is a zero tensor rather than
      // none, so x and b get zero gradients from this path instead of none at all (an
      // optimizer treats a zero gradient and a missing one differently)
      out[1] = at::zeros_like(r);
    }
    if (second && (task_should_compute_output(1) || want_b)) {
      auto [gr, gb] = call_backward(u * grad.unpack(), r, bias, p, 2, {true, want_b});
      if (task_should_compute_output(1)) out[1] = std::move(gr);
      if (want_b) out[2] = std::move(gb);
    }
    return out;
  }
};

void check_no_forward_ad(const char* op, const at::Tensor& t) {
  TORCH_CHECK(!t.defined() || !torch::autograd::isFwGradDefined(t), op,
              ": forward-mode AD (jvp) is not supported");
}

at::Tensor bias_act_autograd(const at::Tensor& x, const OptTensor& b, int64_t dim,
                             c10::string_view act, double alpha, double gain, double clamp) {
  const at::Tensor bias = b.value_or(at::Tensor());
  check_no_forward_ad("fastgan::bias_act_forward", x);
  check_no_forward_ad("fastgan::bias_act_forward", bias);
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = forward_op().call(x, b, dim, act, alpha, gain, clamp);
  }
  if (!torch::autograd::compute_requires_grad(x, bias)) return y;
  const int a = bias_act::act_from_name(std::string_view(act.data(), act.size()));
  const auto kind = bias_act::ref_kind(static_cast<bias_act::Act>(a), clamp >= 0);
  auto node = c10::make_intrusive<BiasActBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, bias));
  node->p = Params{dim, std::string(act), alpha, gain, clamp};
  torch::autograd::set_history(y, node);
  if (kind == bias_act::RefKind::kY) node->ref = SavedVariable(y, /*is_output=*/true);
  if (kind == bias_act::RefKind::kX) node->ref = SavedVariable(x, /*is_output=*/false);
  // b, a parameter, costs nothing to keep: swish's backward adds it to x, and grad_b
  // takes its dtype from it
  if (bias.defined()) node->b = SavedVariable(bias, /*is_output=*/false);
  torch::autograd::fire_node_creation_hooks(node);
  return y;
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward_autograd(
    const at::Tensor& grad, const OptTensor& ref, const OptTensor& b, int64_t dim,
    c10::string_view act, double alpha, double gain, double clamp, int64_t order,
    std::array<bool, 2> output_mask) {
  const at::Tensor r = ref.value_or(at::Tensor());
  const at::Tensor bias = b.value_or(at::Tensor());
  for (const auto* t : {&grad, &r, &bias}) check_no_forward_ad("fastgan::bias_act_backward", *t);
  std::tuple<at::Tensor, at::Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = backward_op().call(grad, ref, b, dim, act, alpha, gain, clamp, order, output_mask);
  }
  if (!torch::autograd::compute_requires_grad(grad, r, bias)) return out;
  c10::intrusive_ptr<torch::autograd::Node> node;
  if (order == 1) {
    const int a = bias_act::act_from_name(std::string_view(act.data(), act.size()));
    auto n = c10::make_intrusive<BiasActGradBackward>();
    n->p = Params{dim, std::string(act), alpha, gain, clamp};
    n->second = bias_act::has_2nd_grad(static_cast<bias_act::Act>(a));
    n->ref_is_x = bias_act::ref_kind(static_cast<bias_act::Act>(a), clamp >= 0) ==
                  bias_act::RefKind::kX;
    n->grad = SavedVariable(grad, false);
    if (r.defined()) n->ref = SavedVariable(r, false);
    if (bias.defined()) n->b = SavedVariable(bias, false);
    node = n;
  } else {
    node = c10::make_intrusive<torch::autograd::NotImplemented>(
        "fastgan::bias_act_backward (third-order gradients of bias_act)",
        torch::autograd::edge_list{});
  }
  node->set_next_edges(torch::autograd::collect_next_edges(grad, r, bias));
  // output_mask decides which outputs exist; each defined one gets this node's history
  std::vector<at::Tensor*> outs{&std::get<0>(out), &std::get<1>(out)};
  for (size_t i = 0; i < outs.size(); ++i) {
    if (output_mask[i] && outs[i]->defined()) {
      torch::autograd::set_history(*outs[i], node);
    } else {
      node->add_input_metadata(torch::autograd::Node::undefined_input());
    }
  }
  torch::autograd::fire_node_creation_hooks(node);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("bias_act_forward", &bias_act_autograd);
  m.impl("bias_act_backward", &bias_act_backward_autograd);
}

}  // namespace fastgan
