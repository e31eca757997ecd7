// Host-side helpers of the bias_act op shared by its CPU and CUDA kernels: argument
// checks, the memory-order view of x around `dim`, and the switch from the runtime
// activation to a compile-time one. Python-side checks with the same messages:
// fastgan/ops/bias_act_reference.py.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "bias_act_math.h"
#include "common.h"

namespace fastgan {
namespace bias_act {

// Checks what the kernels rely on; returns the activation index.
inline int check_forward(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& b,
                         int64_t dim, c10::string_view act_name) {
  const int act = act_from_name(std::string_view(act_name.data(), act_name.size()));
  TORCH_CHECK(act >= 0, op, ": unknown act '", act_name,
              "'; expected one of 'linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', "
              "'selu', 'softplus', 'swish'");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": x must be a floating-point tensor, got ", x.scalar_type());
  if (b.has_value() && b->defined()) {
    TORCH_CHECK(x.dim() > 0 && dim >= 0 && dim < x.dim(), op, ": dim must be in [0, ", x.dim(),
                ") for ", x.dim(), "-D x, got ", dim);
    TORCH_CHECK(b->dim() == 1 && b->size(0) == x.size(dim), op, ": b must have shape (",
                x.size(dim), ",) to match dimension dim=", dim, " of x (shape ", x.sizes(),
                "), got shape ", b->sizes());
    TORCH_CHECK(b->scalar_type() == x.scalar_type(), op, ": b has dtype ", b->scalar_type(),
                " but x has dtype ", x.scalar_type());
    TORCH_CHECK(b->device() == x.device(), op, ": b is on ", b->device(), " but x is on ",
                x.device());
  }
  return act;
}

// x in memory order as (outer, channels, inner) with the bias indexed by `channels`:
// a contiguous x around `dim`, or a 4-D channels_last x with dim == 1 (inner == 1).
// Without a bias (or with a single channel) the whole tensor is one run (channels == 1).
// `ok` is false for any other layout (memory_view below views any dense x as contiguous).
struct Layout {
  int64_t outer = 1, channels = 1, inner = 1;
  bool ok = false;
};

inline Layout layout_of(const at::Tensor& x, int64_t dim, bool has_bias) {
  Layout l;
  if (!has_bias) {
    l.inner = x.numel();
    l.ok = x.is_contiguous() || is_channels_last(x);
    return l;
  }
  l.channels = x.size(dim);
  if (x.is_contiguous()) {
    for (int64_t i = 0; i < dim; ++i) l.outer *= x.size(i);
    for (int64_t i = dim + 1; i < x.dim(); ++i) l.inner *= x.size(i);
    l.ok = true;
  } else if (dim == 1 && is_channels_last(x)) {
    l.outer = x.numel() / std::max<int64_t>(l.channels, 1);
    l.ok = true;
  }
  if (l.channels == 1) {  // one bias value: the whole tensor is one run
    l.inner *= l.outer;
    l.outer = 1;
  }
  return l;
}

// The dimensions of a dense, non-overlapping t in memory order (outermost first), so that
// t.permute(order) is contiguous; nullopt for any other t.
inline c10::optional<std::vector<int64_t>> memory_order(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return c10::nullopt;
  std::vector<int64_t> order(t.dim());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return t.stride(a) > t.stride(b); });
  if (!t.permute(order).is_contiguous()) return c10::nullopt;
  return order;
}

// t as the kernels walk it: any dense t in place (its dimensions viewed in memory order,
// which is contiguous, with `dim` moved along), any other t made contiguous; and that
// view's (outer, channels, inner) around dim. Outputs take t's strides (empty_as), so y
// keeps x's memory format whatever it is.
struct View {
  at::Tensor t;
  Layout l;
};

inline View memory_view(const at::Tensor& t_in, int64_t dim, bool has_b) {
  at::Tensor t = t_in;
  auto order = memory_order(t);
  if (!order) {
    t = t_in.contiguous();
    order = std::vector<int64_t>(t.dim());
    std::iota(order->begin(), order->end(), 0);
  }
  int64_t vdim = 0;  // dim in the view (only read with a bias)
  if (has_b) vdim = std::find(order->begin(), order->end(), dim) - order->begin();
  const Layout l = layout_of(t.permute(*order), vdim, has_b);
  TORCH_INTERNAL_ASSERT(l.ok, "bias_act: unexpected layout of a tensor of shape ", t.sizes(),
                        " and strides ", t.strides());
  return {t, l};
}

// An uninitialised tensor with t's sizes and strides (t dense).
inline at::Tensor empty_as(const at::Tensor& t) {
  return at::empty_strided(t.sizes(), t.strides(), t.options());
}

// Calls f(std::integral_constant<Act, A>{}) for the runtime activation index.
template <typename F>
void dispatch_act(int act, F&& f) {
  switch (act) {
    case kLinear: f(std::integral_constant<Act, kLinear>{}); break;
    case kRelu: f(std::integral_constant<Act, kRelu>{}); break;
    case kLrelu: f(std::integral_constant<Act, kLrelu>{}); break;
    case kTanh: f(std::integral_constant<Act, kTanh>{}); break;
    case kSigmoid: f(std::integral_constant<Act, kSigmoid>{}); break;
    case kElu: f(std::integral_constant<Act, kElu>{}); break;
    case kSelu: f(std::integral_constant<Act, kSelu>{}); break;
    case kSoftplus: f(std::integral_constant<Act, kSoftplus>{}); break;
    default: f(std::integral_constant<Act, kSwish>{}); break;
  }
}

}  // namespace bias_act
}  // namespace fastgan
