// Schema and autograd of the upfirdn2d op (StyleGAN's upsample, pad, FIR filter,
// downsample).
//
// upfirdn2d(x, f, up, down, padding, flip_filter, gain) -> y
//     x (N, C, H, W); f a 2-D (fh, fw) filter (the Python front runs a separable 1-D
//     filter as two calls, one per axis, as NVlabs does); up, down = [x, y]; padding =
//     [x0, x1, y0, y1], negative crops. y = gain * (the filtered image), with x's dtype
//     and memory format. Geometry: csrc/upfirdn2d_checks.h.
// Kernels: csrc/cpu/kernels/upfirdn2d.cpp, csrc/cuda/upfirdn2d.cu; Python side, fake
// kernel and backend choice: fastgan/ops/upfirdn2d.py.
//
// Autograd (C++, as for the other ops): the op is linear in x, and its gradient is an
// upfirdn2d of the incoming gradient with up and down swapped, the filter flipped and the
// padding that maps the output grid back onto the input (NVlabs' derivation). The node
// saves the filter only (no activation-sized tensor) and calls the op through the
// dispatcher, so gradients of any order run the kernels.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <array>
#include <mutex>
#include <string>

TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def(
      "upfirdn2d(Tensor x, Tensor f, int[2] up, int[2] down, int[4] padding, bool flip_filter, "
      "float gain) -> Tensor");
}

namespace fastgan {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

using Fn = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                      at::IntArrayRef, bool, double);

const c10::TypedOperatorHandle<Fn>& op() {
  static const auto o =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastgan::upfirdn2d", "").typed<Fn>();
  return o;
}

struct Upfirdn2dBackward final : public torch::autograd::Node {
  SavedVariable f;
  std::array<int64_t, 2> up{}, down{};
  std::array<int64_t, 4> pad{};  // the gradient's padding
  bool flip_filter = false;
  double gain = 1;
  std::array<int64_t, 2> in_hw{};

  std::string name() const override { return "Upfirdn2dBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    f.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return out;
    // through the Autograd key, so a create_graph backward records this op again
    at::Tensor gx = op().call(grads[0], f.unpack(), down, up, pad, !flip_filter, gain);
    TORCH_INTERNAL_ASSERT(gx.size(2) == in_hw[0] && gx.size(3) == in_hw[1],
                          "upfirdn2d backward: gradient shape ", gx.sizes());
    out[0] = std::move(gx);
    return out;
  }
};

at::Tensor upfirdn2d_autograd(const at::Tensor& x, const at::Tensor& f, at::IntArrayRef up,
                              at::IntArrayRef down, at::IntArrayRef padding, bool flip_filter,
                              double gain) {
  TORCH_CHECK(!torch::autograd::isFwGradDefined(x), "fastgan::upfirdn2d: forward-mode AD (jvp) "
              "is not supported");
  TORCH_CHECK(!f.requires_grad(), "fastgan::upfirdn2d: f must not require grad (gradients "
              "flow to x only); pass f.detach()");
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = op().call(x, f, up, down, padding, flip_filter, gain);
  }
  if (!torch::autograd::compute_requires_grad(x)) return y;
  auto node = c10::make_intrusive<Upfirdn2dBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x));
  node->f = SavedVariable(f, /*is_output=*/false);
  node->up = {up[0], up[1]};
  node->down = {down[0], down[1]};
  const int64_t fw = f.size(1), fh = f.size(0);
  const int64_t iw = x.size(3), ih = x.size(2), ow = y.size(3), oh = y.size(2);
  node->pad = {fw - padding[0] - 1, iw * up[0] - ow * down[0] + padding[0] - up[0] + 1,
               fh - padding[2] - 1, ih * up[1] - oh * down[1] + padding[2] - up[1] + 1};
  node->flip_filter = flip_filter;
  node->gain = gain;
  node->in_hw = {ih, iw};
  torch::autograd::set_history(y, node);
  torch::autograd::fire_node_creation_hooks(node);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) { m.impl("upfirdn2d", &upfirdn2d_autograd); }

}  // namespace fastgan
