// What the per-element math headers (bn_act_math.h, gan_loss_math.h, bias_act_math.h)
// share: FASTGAN_HD (host and device inline functions under nvcc, plain inline otherwise)
// and ScalarOps, the primitives their formulas are written on, for float / double on the
// host and the GPU. The CPU kernels' vector twin is VecOps (csrc/cpu/kernels/vec_io.h).
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTGAN_HD __host__ __device__ __forceinline__
#else
#define FASTGAN_HD inline
#endif

namespace fastgan {

template <typename T>
struct ScalarOps {
  using Mask = bool;
  static FASTGAN_HD T exp(T x) { return std::exp(x); }
  static FASTGAN_HD T log1p(T x) { return std::log1p(x); }
  static FASTGAN_HD T tanh(T x) { return std::tanh(x); }
  static FASTGAN_HD T abs(T x) { return std::abs(x); }
  static FASTGAN_HD T relu(T x) { return x > T(0) ? x : T(0); }
  static FASTGAN_HD T min(T a, T b) { return a < b ? a : b; }
  static FASTGAN_HD T max(T a, T b) { return a > b ? a : b; }
  static FASTGAN_HD Mask gt(T a, T b) { return a > b; }
  static FASTGAN_HD Mask ge(T a, T b) { return a >= b; }
  static FASTGAN_HD T where(Mask m, T a, T b) { return m ? a : b; }
};

}  // namespace fastgan
