// Per-element math of the combined GAN loss op: loss terms, D(x) and derivatives.
//
// Shared by the C++ CPU kernels (csrc/cpu/kernels/gan_loss.cpp) and the CUDA kernels
// (csrc/cuda/gan_loss.cu), so the formulas tested on the CPU are the ones the GPU
// runs. Each formula is written once, templated on the value type T and on an `Ops`
// policy that supplies the few primitives it needs (exp, log1p, abs, max(x, 0), a
// comparison and a select): ScalarOps (scalar_ops.h) for float / double, and a twin over
// at::vec::Vectorized in the CPU kernels. Every kind is a compile-time parameter so
// the per-element loops carry no branch on it.
//
// Stability: everything logistic starts from e = exp(-|x|), which is in (0, 1], so
//   softplus(x)  = max(x, 0) + log1p(e)
//   sigmoid(x)   = 1 / (1 + e)      for x >= 0,   e / (1 + e)  otherwise
// never overflow, and logits of +-1e4 give finite losses and gradients in any dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "scalar_ops.h"

namespace fastgan {
namespace gan_loss {

// The loss kinds of docs/ARCHITECTURE.md ("Loss kinds"). minimax and ns are logistic: their
// inputs are logits and the real term may use a smoothed target `label`. rpgan is the one
// paired kind: its terms are functions of r[i] - f[i], so its kernels walk the two inputs
// together (pair_terms / pair_grads below) instead of each on its own.
enum Kind : int { kMinimax = 0, kNs = 1, kLsgan = 2, kHinge = 3, kWgan = 4, kRpgan = 5 };

constexpr bool is_logistic(Kind k) { return k == kMinimax || k == kNs; }
constexpr bool is_paired(Kind k) { return k == kRpgan; }

// Host-side parsing of the op's string arguments; -1 when unknown (the caller raises,
// naming the argument).
inline int kind_from_name(std::string_view name) {
  if (name == "ns") return kNs;
  if (name == "minimax") return kMinimax;
  if (name == "lsgan") return kLsgan;
  if (name == "hinge") return kHinge;
  if (name == "wgan") return kWgan;
  if (name == "rpgan") return kRpgan;
  return -1;
}

// reduction "mean" -> 1, "sum" -> 0, anything else -> -1.
inline int reduction_is_mean(std::string_view name) {
  if (name == "mean") return 1;
  if (name == "sum") return 0;
  return -1;
}

// sigmoid(x) and sigmoid(-x) from e = exp(-|x|); q = 1 / (1 + e).
template <class Ops, class T>
FASTGAN_HD T sigmoid_pos(T x, T e, T q) {
  return Ops::where(Ops::gt(T(0), x), e * q, q);
}
template <class Ops, class T>
FASTGAN_HD T sigmoid_neg(T x, T e, T q) {
  return Ops::where(Ops::gt(T(0), x), q, e * q);
}

// ---------------------------------------------------------------------------
// Forward terms, before the reduction.

template <class T>
struct RealTerms {
  T d_loss;   // the real half of d_loss
  T sigmoid;  // sigmoid(r), averaged into d_real
};

template <class T>
struct FakeTerms {
  T d_loss;   // the fake half of d_loss
  T g_loss;
  T sigmoid;  // sigmoid(f), averaged into d_fake
};

// `label` is the real target of the logistic kinds (1, or e.g. 0.9 when smoothed):
// label * softplus(-r) + (1 - label) * softplus(r) == softplus(-r) + (1 - label) * r,
// which is how binary_cross_entropy_with_logits evaluates it too.
template <Kind K, class Ops, class T>
FASTGAN_HD RealTerms<T> real_terms(T r, T label) {
  const T e = Ops::exp(-Ops::abs(r));
  const T q = T(1) / (T(1) + e);
  const T s = sigmoid_pos<Ops>(r, e, q);
  if constexpr (is_logistic(K)) {
    return {Ops::relu(-r) + Ops::log1p(e) + (T(1) - label) * r, s};
  } else if constexpr (K == kLsgan) {
    const T d = r - T(1);
    return {T(0.5) * d * d, s};
  } else if constexpr (K == kHinge) {
    return {Ops::relu(T(1) - r), s};
  } else {  // wgan
    return {-r, s};
  }
}

template <Kind K, class Ops, class T>
FASTGAN_HD FakeTerms<T> fake_terms(T f) {
  const T e = Ops::exp(-Ops::abs(f));
  const T q = T(1) / (T(1) + e);
  const T s = sigmoid_pos<Ops>(f, e, q);
  if constexpr (K == kMinimax) {
    const T sp = Ops::relu(f) + Ops::log1p(e);
    return {sp, -sp, s};
  } else if constexpr (K == kNs) {
    const T lp = Ops::log1p(e);
    return {Ops::relu(f) + lp, Ops::relu(-f) + lp, s};
  } else if constexpr (K == kLsgan) {
    const T d = f - T(1);
    return {T(0.5) * f * f, T(0.5) * d * d, s};
  } else if constexpr (K == kHinge) {
    return {Ops::relu(T(1) + f), -f, s};
  } else {  // wgan
    return {f, -f, s};
  }
}

// ---------------------------------------------------------------------------
// Derivatives of the per-element terms (before the 1/N of "mean").

// d(real term of d_loss)/dr. Logistic: sigmoid(r) - label, evaluated as
// (1 - label) - sigmoid(-r) so that label == 1 has no cancellation for large r.
// Hinge: relu'(1 - r) with relu'(0) = 0, as torch's threshold_backward.
template <Kind K, class Ops, class T>
FASTGAN_HD T real_grad(T r, T label) {
  if constexpr (is_logistic(K)) {
    const T e = Ops::exp(-Ops::abs(r));
    const T q = T(1) / (T(1) + e);
    return (T(1) - label) - sigmoid_neg<Ops>(r, e, q);
  } else if constexpr (K == kLsgan) {
    return r - T(1);
  } else if constexpr (K == kHinge) {
    return Ops::where(Ops::gt(T(1) - r, T(0)), T(-1), T(0));
  } else {  // wgan
    return T(-1);
  }
}

template <class T>
struct FakeGrads {
  T d;  // d(fake term of d_loss)/df
  T g;  // d(g_loss term)/df
};

template <Kind K, class Ops, class T>
FASTGAN_HD FakeGrads<T> fake_grads(T f) {
  if constexpr (is_logistic(K)) {
    const T e = Ops::exp(-Ops::abs(f));
    const T q = T(1) / (T(1) + e);
    const T s = sigmoid_pos<Ops>(f, e, q);
    if constexpr (K == kMinimax) {
      return {s, -s};
    } else {  // ns: d softplus(-f)/df = -sigmoid(-f), without the cancellation of s - 1
      return {s, -sigmoid_neg<Ops>(f, e, q)};
    }
  } else if constexpr (K == kLsgan) {
    return {f, f - T(1)};
  } else if constexpr (K == kHinge) {
    return {Ops::where(Ops::gt(T(1) + f, T(0)), T(1), T(0)), T(-1)};
  } else {  // wgan
    return {T(1), T(-1)};
  }
}

// ---------------------------------------------------------------------------
// The paired kind (rpgan, R3GAN's relativistic pairing loss), per pair (r, f):
//   d_loss term softplus(u),  g_loss term softplus(-u),  with u = f - r.
// Both share e = exp(-|u|): softplus(+-u) = relu(+-u) + log1p(e). sigmoid(r) and
// sigmoid(f) (for d_real / d_fake) need their own exponentials.

template <class T>
struct PairTerms {
  T d_loss;
  T g_loss;
  T sigmoid_real;
  T sigmoid_fake;
};

template <class Ops, class T>
FASTGAN_HD PairTerms<T> pair_terms(T r, T f) {
  const T u = f - r;
  const T lp = Ops::log1p(Ops::exp(-Ops::abs(u)));
  const T er = Ops::exp(-Ops::abs(r));
  const T ef = Ops::exp(-Ops::abs(f));
  const T qr = T(1) / (T(1) + er);
  const T qf = T(1) / (T(1) + ef);
  return {Ops::relu(u) + lp, Ops::relu(-u) + lp, sigmoid_pos<Ops>(r, er, qr),
          sigmoid_pos<Ops>(f, ef, qf)};
}

// Derivatives of a pair's terms: d softplus(u)/df = sigmoid(u) = s, and
// d softplus(-u)/df = -sigmoid(-u) = -t; d/dr is the negative of each. s and t are each
// taken from e = exp(-|u|) (never t as 1 - s, which cancels to 0 or worse for large u).
template <class T>
struct PairGrads {
  T s;  // sigmoid(f - r): d(d_loss term)/df = s, d/dr = -s
  T t;  // sigmoid(r - f): d(g_loss term)/dr = t, d/df = -t
};

template <class Ops, class T>
FASTGAN_HD PairGrads<T> pair_grads(T r, T f) {
  const T u = f - r;
  const T e = Ops::exp(-Ops::abs(u));
  const T q = T(1) / (T(1) + e);
  return {sigmoid_pos<Ops>(u, e, q), sigmoid_neg<Ops>(u, e, q)};
}

}  // namespace gan_loss
}  // namespace fastgan
