// Schemas and autograd of the combined GAN loss op.
//
// gan_loss_forward(real, fake, kind, reduction, real_label) returns the four 0-dim
// tensors (d_loss, g_loss, d_real, d_fake), in fp32 (fp64 for fp64 input) whatever
// the input dtype; d_real / d_fake are batch means of sigmoid and not differentiable.
// gan_loss_backward(grad_d_loss, grad_g_loss, real, fake, ...) recomputes the
// per-element derivatives from the logits and returns (grad_real, grad_fake) in the
// inputs' dtypes; outputs masked off by output_mask are empty.
// Kernels: csrc/cpu/gan_loss.cpp (math in csrc/gan_loss_math.h); Python side,
// reference and fake kernels: fastgan/ops/gan_loss.py.
//
// Autograd is registered here, in C++, rather than with torch.library.register_autograd:
// the op is meant for batches of 64 to 512 logits, where a Python autograd.Function's
// own overhead (forward and backward) would exceed the whole fused computation.
// Double backward is not supported: when the backward runs with create_graph=True its
// outputs carry a node that raises "not implemented" if differentiated.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <string>

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

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, c10::string_view, c10::string_view, double);
using BackwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
    c10::string_view, double, std::array<bool, 2>);

class GanLossFunction : public torch::autograd::Function<GanLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& real,
                               const at::Tensor& fake, c10::string_view kind,
                               c10::string_view reduction, double real_label) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastgan::gan_loss_forward", "")
                         .typed<ForwardFn>();
    at::Tensor d_loss, g_loss, d_real, d_fake;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(d_loss, g_loss, d_real, d_fake) = op.call(real, fake, kind, reduction, real_label);
    }
    ctx->save_for_backward({real, fake});
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["real_label"] = real_label;
    ctx->mark_non_differentiable({d_real, d_fake});
    return {d_loss, g_loss, d_real, d_fake};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastgan::gan_loss_backward", "")
                         .typed<BackwardFn>();
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    const std::string kind = ctx->saved_data["kind"].toStringRef();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    const double real_label = ctx->saved_data["real_label"].toDouble();
    at::Tensor grad_real, grad_fake;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: go through the Autograd key, whose not-implemented kernel
      // makes differentiating these gradients an error instead of a silent zero.
      std::tie(grad_real, grad_fake) =
          op.call(grads[0], grads[1], saved[0], saved[1], kind, reduction, real_label, mask);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(grad_real, grad_fake) =
          op.call(grads[0], grads[1], saved[0], saved[1], kind, reduction, real_label, mask);
    }
    return {mask[0] ? grad_real : at::Tensor(), mask[1] ? grad_fake : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_autograd(
    const at::Tensor& real, const at::Tensor& fake, c10::string_view kind,
    c10::string_view reduction, double real_label) {
  auto out = GanLossFunction::apply(real, fake, kind, reduction, real_label);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("gan_loss_forward", &gan_loss_autograd);
  m.impl("gan_loss_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fastgan
