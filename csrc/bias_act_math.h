// Per-element math of the bias_act op (StyleGAN's bias + activation + gain + clamp).
//
// Shared by the C++ CPU kernels (csrc/cpu/kernels/bias_act.cpp) and the CUDA kernels
// (csrc/cuda/bias_act.cu); kernels/bias_act.py (Triton) writes the same formulas. As in
// gan_loss_math.h, each formula is templated on the value type T and an `Ops` policy that
// supplies the primitives (ScalarOps of scalar_ops.h for float / double on the host and the GPU, a
// twin over at::vec::Vectorized in the CPU kernels), and the activation is a compile-time
// parameter.
//
// With s = x + b, the forward is y = clamp(act(s) * gain, -clamp, clamp) (no clamp when
// clamp < 0). Backward saves one tensor, `ref`, NVlabs' choice of it:
//   - activations whose derivative is a function of their output (relu, lrelu, tanh,
//     sigmoid, elu, selu, softplus: RefKind::kY) save y. With yy = y / gain,
//       dy/ds = gain * d1(yy)               (order 1)
//       d(gain * d1(yy)) / dy = d2(yy)      (order 2, the derivative of the order-1
//                                            factor with respect to the saved y)
//   - swish (RefKind::kX) saves x (and b, a parameter): d1 and d2 are of s = x + b.
//   - linear saves y when it clamps (for the clamp mask), else nothing.
// Where clamping is on, the gradient is zero wherever |y| >= clamp (y recomputed from x for
// swish). NVlabs' CUDA kernel skips that mask for swish; its reference (and autograd) apply
// it, and so does fastgan.
//
// Range guards follow NVlabs' kernels (expRange = 80, halfExpRange = 40): they keep exp()
// finite in fp32 and change results by less than an ulp.
#pragma once

#include <cmath>
#include <string_view>

#include "scalar_ops.h"

namespace fastgan {
namespace bias_act {

// NVlabs' activation indices (their `cuda_idx`).
enum Act : int {
  kLinear = 1,
  kRelu = 2,
  kLrelu = 3,
  kTanh = 4,
  kSigmoid = 5,
  kElu = 6,
  kSelu = 7,
  kSoftplus = 8,
  kSwish = 9,
};

// Which tensor the backward reads.
enum class RefKind { kNone, kX, kY };

constexpr RefKind ref_kind(Act a, bool clamping) {
  return a == kSwish ? RefKind::kX
         : (a == kLinear) ? (clamping ? RefKind::kY : RefKind::kNone)
                          : RefKind::kY;
}

// Whether the second derivative is nonzero somewhere (relu, lrelu, linear: zero almost
// everywhere, so their order-2 term is zero and is never computed).
constexpr bool has_2nd_grad(Act a) { return !(a == kLinear || a == kRelu || a == kLrelu); }

// Host-side parsing of the op's `act` string; -1 when unknown (the caller raises).
inline int act_from_name(std::string_view name) {
  if (name == "linear") return kLinear;
  if (name == "relu") return kRelu;
  if (name == "lrelu") return kLrelu;
  if (name == "tanh") return kTanh;
  if (name == "sigmoid") return kSigmoid;
  if (name == "elu") return kElu;
  if (name == "selu") return kSelu;
  if (name == "softplus") return kSoftplus;
  if (name == "swish") return kSwish;
  return -1;
}

constexpr double kSeluLambda = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kExpRange = 80.0;
constexpr double kHalfExpRange = 40.0;

// act(s): the activation alone (no gain, no clamp).
template <Act A, class Ops, class T>
FASTGAN_HD T activate(T s, T alpha) {
  if constexpr (A == kLinear) {
    return s;
  } else if constexpr (A == kRelu) {
    return Ops::max(s, T(0));
  } else if constexpr (A == kLrelu) {
    return Ops::where(Ops::gt(s, T(0)), s, s * alpha);
  } else if constexpr (A == kTanh) {
    return Ops::tanh(s);
  } else if constexpr (A == kSigmoid) {
    return T(1) / (T(1) + Ops::exp(Ops::min(-s, T(kExpRange))));
  } else if constexpr (A == kElu) {
    return Ops::where(Ops::ge(s, T(0)), s, Ops::exp(Ops::min(s, T(0))) - T(1));
  } else if constexpr (A == kSelu) {
    return Ops::where(Ops::ge(s, T(0)), T(kSeluLambda) * s,
                      T(kSeluLambda * kSeluAlpha) * (Ops::exp(Ops::min(s, T(0))) - T(1)));
  } else if constexpr (A == kSoftplus) {
    // max(s, 0) + log1p(exp(-|s|)): never overflows
    return Ops::max(s, T(0)) + Ops::log1p(Ops::exp(-Ops::abs(s)));
  } else {  // swish: s * sigmoid(s)
    return s / (T(1) + Ops::exp(Ops::min(-s, T(kExpRange))));
  }
}

// clamp(v, -c, c), for c >= 0.
template <class Ops, class T>
FASTGAN_HD T clamp_to(T v, T c) {
  return Ops::max(Ops::min(v, c), -c);
}

// The forward: clamp(act(x + b) * gain) with `clamping` = (clamp >= 0).
template <Act A, class Ops, class T>
FASTGAN_HD T forward(T s, T alpha, T gain, T clamp, bool clamping) {
  const T y = activate<A, Ops>(s, alpha) * gain;
  return clamping ? clamp_to<Ops>(y, clamp) : y;
}

// d act / d s for RefKind::kY activations, from yy = y / gain.
template <Act A, class Ops, class T>
FASTGAN_HD T d1_from_y(T yy, T alpha) {
  if constexpr (A == kLinear) {
    return T(1);
  } else if constexpr (A == kRelu) {
    return Ops::where(Ops::gt(yy, T(0)), T(1), T(0));
  } else if constexpr (A == kLrelu) {
    return Ops::where(Ops::gt(yy, T(0)), T(1), alpha);
  } else if constexpr (A == kTanh) {
    return T(1) - yy * yy;
  } else if constexpr (A == kSigmoid) {
    return yy - yy * yy;
  } else if constexpr (A == kElu) {
    return Ops::where(Ops::ge(yy, T(0)), T(1), yy + T(1));
  } else if constexpr (A == kSelu) {
    return Ops::where(Ops::ge(yy, T(0)), T(kSeluLambda), yy + T(kSeluLambda * kSeluAlpha));
  } else {  // softplus: sigmoid(s) = 1 - exp(-softplus(s))
    return T(1) - Ops::exp(-yy);
  }
}

// d d1 / d yy for the RefKind::kY activations with a second derivative.
template <Act A, class Ops, class T>
FASTGAN_HD T d2_from_y(T yy) {
  if constexpr (A == kTanh) {
    return T(-2) * yy;
  } else if constexpr (A == kSigmoid) {
    return T(1) - T(2) * yy;
  } else if constexpr (A == kElu || A == kSelu) {
    return Ops::where(Ops::ge(yy, T(0)), T(0), T(1));
  } else if constexpr (A == kSoftplus) {
    return Ops::exp(-yy);
  } else {
    return T(0);
  }
}

// Swish's first and second derivatives of s (NVlabs' closed forms, c = exp(s), d = c + 1).
template <class Ops, class T>
FASTGAN_HD T swish_d1(T s) {
  const T c = Ops::exp(Ops::min(s, T(kHalfExpRange)));
  const T d = c + T(1);
  return Ops::where(Ops::gt(s, T(kHalfExpRange)), T(1), c * (s + d) / (d * d));
}
template <class Ops, class T>
FASTGAN_HD T swish_d2(T s) {
  const T c = Ops::exp(Ops::min(s, T(kHalfExpRange)));
  const T d = c + T(1);
  return Ops::where(Ops::gt(s, T(kHalfExpRange)), T(0),
                    c * (s * (T(2) - d) + T(2) * d) / (d * d * d));
}

// The backward of order 1 (dL/dx from dL/dy = g) and order 2 (the derivative of the
// order-1 result with respect to the saved tensor, times g), per element.
//   ref: y (RefKind::kY), x (RefKind::kX; b is added here), unused (kNone).
//   inv_gain: 1 / gain, or 0 when gain is 0 (a host-side scalar, so T may be a vector).
template <Act A, class Ops, class T>
FASTGAN_HD T backward(int order, T g, T ref, T b, T alpha, T gain, T inv_gain, T clamp,
                      bool clamping) {
  constexpr RefKind kind_unclamped = ref_kind(A, false);
  T out;
  if constexpr (kind_unclamped == RefKind::kX) {  // swish
    const T s = ref + b;
    out = order == 1 ? g * gain * swish_d1<Ops>(s) : g * gain * swish_d2<Ops>(s);
    if (clamping) {
      const T y = activate<A, Ops>(s, alpha) * gain;
      out = Ops::where(Ops::gt(clamp, Ops::abs(y)), out, T(0));
    }
  } else {
    // yy is only read by activations whose derivative depends on it; for linear the
    // saved tensor exists only when clamping.
    const T yy = ref * inv_gain;
    if (order == 1) {
      out = A == kLinear ? g * gain : g * gain * d1_from_y<A, Ops>(yy, alpha);
    } else {
      out = g * d2_from_y<A, Ops>(yy);
    }
    if (clamping) out = Ops::where(Ops::gt(clamp, Ops::abs(ref)), out, T(0));
  }
  return out;
}

}  // namespace bias_act
}  // namespace fastgan
