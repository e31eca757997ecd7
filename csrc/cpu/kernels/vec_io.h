// Typed vector loads and stores for the CPU kernels.
//
// Every CPU kernel computes in an accumulation type (float for fp32/bf16/fp16,
// double for fp64) on at::vec::Vectorized<acc_t>. VecIo<scalar_t> hides how a
// storage type becomes such a vector: a plain load for float/double, a widening
// load for bf16/fp16, and the narrowing store back. Tail loads zero the missing
// lanes; reductions must still mask them (see masked()).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "../../common.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {

template <typename scalar_t, typename Enable = void>
struct VecIo {
  // float and double: storage type == accumulation type.
  using acc_t = scalar_t;
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t kSize = Vec::size();
  static Vec load(const scalar_t* p) { return Vec::loadu(p); }
  static Vec load(const scalar_t* p, int64_t n) { return Vec::loadu(p, n); }
  static void store(scalar_t* p, const Vec& v) { v.store(p); }
  static void store(scalar_t* p, const Vec& v, int64_t n) { v.store(p, n); }
};

template <typename scalar_t>
struct VecIo<scalar_t, std::enable_if_t<at::vec::is_reduced_floating_point_v<scalar_t>>> {
  // bf16 / fp16: widen to float on load, round to nearest on store.
  using acc_t = float;
  using Vec = at::vec::Vectorized<float>;
  using RVec = at::vec::Vectorized<scalar_t>;
  static constexpr int64_t kSize = Vec::size();
  static Vec load(const scalar_t* p) {
    Vec out;
    at::vec::load_to_float<scalar_t>(p, out);
    return out;
  }
  static Vec load(const scalar_t* p, int64_t n) {
    auto halves = at::vec::convert_to_float<scalar_t>(RVec::loadu(p, n));
    return std::get<0>(halves);
  }
  static void store(scalar_t* p, const Vec& v) {
    at::vec::convert_from_float<scalar_t>(v, v).store(p, static_cast<int>(kSize));
  }
  static void store(scalar_t* p, const Vec& v, int64_t n) {
    at::vec::convert_from_float<scalar_t>(v, v).store(p, static_cast<int>(n));
  }
};

// Non-temporal (streaming) stores for large float outputs: they skip the read-for-
// ownership of each output line and do not evict the inputs the next pass still
// needs. Used only where the output is far larger than the cache (see callers),
// and only on 64-byte aligned addresses; callers fence with stream_fence().
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kCanStream = true;
inline void stream_store(float* p, const at::vec::Vectorized<float>& v) {
  _mm512_stream_ps(p, static_cast<__m512>(v));
}
#elif defined(CPU_CAPABILITY_AVX2)
constexpr bool kCanStream = true;
inline void stream_store(float* p, const at::vec::Vectorized<float>& v) {
  _mm256_stream_ps(p, static_cast<__m256>(v));
}
#else
constexpr bool kCanStream = false;
inline void stream_store(float* p, const at::vec::Vectorized<float>& v) { v.store(p); }
#endif

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

inline bool aligned64(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 63) == 0; }

// Keeps the first n lanes of v and zeroes the rest (for reductions over tails).
template <typename acc_t>
inline at::vec::Vectorized<acc_t> masked(const at::vec::Vectorized<acc_t>& v, int64_t n) {
  return at::vec::Vectorized<acc_t>::set(at::vec::Vectorized<acc_t>(acc_t(0)), v, n);
}

template <typename acc_t>
inline acc_t lane_sum(const at::vec::Vectorized<acc_t>& v) {
  alignas(64) acc_t buf[at::vec::Vectorized<acc_t>::size()];
  v.store(buf);
  acc_t s = acc_t(0);
  for (int64_t i = 0; i < at::vec::Vectorized<acc_t>::size(); ++i) s += buf[i];
  return s;
}

// The primitives of the per-element math headers (gan_loss_math.h, bias_act_math.h) on
// at::vec vectors: the vector twin of their ScalarOps.
template <typename acc_t>
struct VecOps {
  using T = at::vec::Vectorized<acc_t>;
  using Mask = T;
  static T exp(const T& x) { return x.exp(); }
  static T log1p(const T& x) {
    if constexpr (std::is_same_v<acc_t, float>) {
      // ATen's vectorised float log1p runs ~10x slower than its log (AVX512 build of
      // torch 2.14); this is log1p to a few ulp from log: with u = 1 + x,
      // log1p(x) = log(u) * x / (u - 1), and x itself where u rounds to 1.
      const T u = x + T(1.0f);
      const T d = u - T(1.0f);
      return T::blendv(u.log() * x / d, x, d == T(0.0f));
    } else {
      return x.log1p();
    }
  }
  static T tanh(const T& x) { return x.tanh(); }
  static T abs(const T& x) { return x.abs(); }
  static T relu(const T& x) { return at::vec::maximum(x, T(acc_t(0))); }
  static T min(const T& a, const T& b) { return at::vec::minimum(a, b); }
  static T max(const T& a, const T& b) { return at::vec::maximum(a, b); }
  static Mask gt(const T& a, const T& b) { return a > b; }
  static Mask ge(const T& a, const T& b) { return a >= b; }
  static T where(const Mask& m, const T& a, const T& b) { return T::blendv(b, a, m); }
};

// LeakyReLU and its derivative on vectors; the scalar forms live in bn_act_math.h.
template <typename acc_t>
inline at::vec::Vectorized<acc_t> leaky_vec(const at::vec::Vectorized<acc_t>& z,
                                            const at::vec::Vectorized<acc_t>& slope) {
  using Vec = at::vec::Vectorized<acc_t>;
  return Vec::blendv(z * slope, z, z > Vec(acc_t(0)));
}

template <typename acc_t>
inline at::vec::Vectorized<acc_t> leaky_grad_vec(const at::vec::Vectorized<acc_t>& z,
                                                 const at::vec::Vectorized<acc_t>& slope) {
  using Vec = at::vec::Vectorized<acc_t>;
  return Vec::blendv(slope, Vec(acc_t(1)), z > Vec(acc_t(0)));
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
