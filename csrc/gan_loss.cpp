// Schemas and autograd of the combined GAN loss op.
//
// gan_loss_forward(real, fake, kind, reduction, real_label) returns the four 0-dim
// tensors (d_loss, g_loss, d_real, d_fake), in fp32 (fp64 for fp64 input) whatever
// the input dtype; d_real / d_fake are batch means of sigmoid and not differentiable.
// gan_loss_backward(grad_d_loss, grad_g_loss, real, fake, ...) recomputes the
// per-element derivatives from the logits and returns (grad_real, grad_fake) in the
// inputs' dtypes; outputs masked off by output_mask are empty.
// Kernels: csrc/cpu/kernels/gan_loss.cpp (math in csrc/gan_loss_math.h); Python side,
// reference and fake kernels: fastgan/ops/gan_loss.py.
//
// Autograd is registered here, in C++, as a hand-written autograd Node (the way
// PyTorch's generated ops do it) rather than with torch.library.register_autograd or a
// torch::autograd::Function: the op is meant for batches of 64 to 512 logits, where
// the bookkeeping of either would cost more than the whole fused computation.
// The node saves only the two inputs. Double backward is not supported: when the
// backward runs with create_graph=True its outputs carry a node that raises
// "not implemented" if differentiated, instead of a silently wrong zero.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <mutex>
#include <string>

#include "gan_loss_math.h"

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def(
      "gan_loss_forward(Tensor real_logits, Tensor fake_logits, str kind, str reduction, "
      "float real_label) -> (Tensor d_loss, Tensor g_loss, Tensor d_real, Tensor d_fake)");
  m.def(
      "gan_loss_backward(Tensor grad_d_loss, Tensor grad_g_loss, Tensor real_logits, "
      "Tensor fake_logits, str kind, str reduction, float real_label, bool[2] output_mask) "
      "-> (Tensor grad_real, Tensor grad_fake)");
}

namespace fastgan {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using ForwardFn = Outputs(const at::Tensor&, const at::Tensor&, c10::string_view,
                          c10::string_view, double);
using BackwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
    c10::string_view, double, std::array<bool, 2>);

const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::gan_loss_forward", "")
                             .typed<ForwardFn>();
  return op;
}

const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::gan_loss_backward", "")
                             .typed<BackwardFn>();
  return op;
}

// Backward of gan_loss_forward. Inputs: the gradients of (d_loss, g_loss), either of
// which is undefined when that loss took no part in the backward. Outputs: the
// gradients of (real_logits, fake_logits).
struct GanLossBackward final : public torch::autograd::Node {
  SavedVariable real_logits, fake_logits;
  std::string kind, reduction;
  double real_label = 1.0;
  // rpgan: g_loss depends on both inputs (softplus(r - f)), so its gradient reaches the
  // real logits too; for the other kinds g_loss is a function of the fake logits only.
  bool paired = false;

  std::string name() const override { return "GanLossBackward"; }

  // Not released after a backward: d_loss and g_loss share this node, and as in eager
  // (where they are separate graphs) each may be backpropagated on its own, e.g.
  // d_loss.backward() then g_loss.backward(). What is kept is just the two logit
  // tensors, freed with the node when both losses are gone.
  void release_variables() override {}

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor& gd = grads[0];
    const at::Tensor& gg = grads[1];
    // real_logits reach only d_loss (except for the paired kind): no gradient for them
    // when only g_loss flows.
    const bool any = gd.defined() || gg.defined();
    const std::array<bool, 2> mask{task_should_compute_output(0) && (paired ? any : gd.defined()),
                                   task_should_compute_output(1) && any};
    variable_list out(2);
    if (!(mask[0] || mask[1])) return out;
    const at::Tensor zero = gd.defined() && gg.defined()
                                ? at::Tensor()
                                : at::zeros({}, (gd.defined() ? gd : gg).options());
    const at::Tensor real = real_logits.unpack();
    const at::Tensor fake = fake_logits.unpack();
    auto call = [&] {
      return backward_op().call(gd.defined() ? gd : zero, gg.defined() ? gg : zero, real, fake,
                                kind, reduction, real_label, mask);
    };
    at::Tensor grad_real, grad_fake;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: through the Autograd key, whose not-implemented kernel makes
      // differentiating these gradients an error.
      std::tie(grad_real, grad_fake) = call();
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(grad_real, grad_fake) = call();
    }
    if (mask[0]) out[0] = std::move(grad_real);
    if (mask[1]) out[1] = std::move(grad_fake);
    return out;
  }
};

Outputs gan_loss_autograd(const at::Tensor& real, const at::Tensor& fake, c10::string_view kind,
                          c10::string_view reduction, double real_label) {
  TORCH_CHECK(!torch::autograd::isFwGradDefined(real) && !torch::autograd::isFwGradDefined(fake),
              "fastgan::gan_loss_forward: forward-mode AD (jvp) is not supported");
  Outputs out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = forward_op().call(real, fake, kind, reduction, real_label);
  }
  if (torch::autograd::compute_requires_grad(real, fake)) {
    auto node = c10::make_intrusive<GanLossBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(real, fake));
    node->real_logits = SavedVariable(real, /*is_output=*/false);
    node->fake_logits = SavedVariable(fake, /*is_output=*/false);
    node->kind = std::string(kind);
    node->reduction = std::string(reduction);
    node->real_label = real_label;
    node->paired = gan_loss::is_paired(gan_loss::Kind(gan_loss::kind_from_name(kind)));
    // d_loss and g_loss are the node's inputs 0 and 1; d_real / d_fake get no history.
    // g_loss depends on fake_logits only (both logits for the paired kind): as in eager,
    // it requires grad only if they do.
    torch::autograd::set_history(std::get<0>(out), node);
    if (fake.requires_grad() || (node->paired && real.requires_grad())) {
      torch::autograd::set_history(std::get<1>(out), node);
    } else {
      node->add_input_metadata(torch::autograd::Node::undefined_input());
    }
    torch::autograd::fire_node_creation_hooks(node);
  }
  return out;
}

}  // namespace

// fastgan::gan_loss_forward called from C++ (through the dispatcher, autograd
// included), for fastgan._C.gan_loss_eager (csrc/fastgan.cpp).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_forward_call(
    const at::Tensor& real, const at::Tensor& fake, c10::string_view kind,
    c10::string_view reduction, double real_label) {
  return forward_op().call(real, fake, kind, reduction, real_label);
}

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("gan_loss_forward", &gan_loss_autograd);
  m.impl("gan_loss_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fastgan
