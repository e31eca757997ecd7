// Per-element and per-channel math of the fused BatchNorm2d + LeakyReLU op.
//
// Shared by the C++ CPU kernels (csrc/cpu/kernels/) and the CUDA kernels
// (csrc/cuda/bn_act.cu), so the formulas tested on the CPU are the ones the GPU
// runs. Everything is templated on the accumulation type `acc_t` (float for
// fp32/bf16/fp16 inputs, double for fp64) and works equally on scalars and on
// at::vec::Vectorized<acc_t> where the operations allow it.
#pragma once

#include <cmath>
#include <cstdint>

#include "scalar_ops.h"

namespace fastgan {
namespace bn_act {

// Running (count, mean, M2) triple of a Welford/Chan reduction. M2 is the sum of
// squared deviations from `mean`; the biased variance is M2 / count.
template <typename acc_t>
struct Moments {
  acc_t mean;
  acc_t m2;
  int64_t count;
};

// Chan et al.'s pairwise merge of two partial moments: exact in exact arithmetic
// and free of the catastrophic cancellation of sum/sum-of-squares when
// |mean| >> std.
template <typename acc_t>
FASTGAN_HD void merge_moments(acc_t& mean, acc_t& m2, int64_t& count,
                              acc_t mean_b, acc_t m2_b, int64_t count_b) {
  if (count_b == 0) return;
  if (count == 0) {
    mean = mean_b;
    m2 = m2_b;
    count = count_b;
    return;
  }
  const int64_t n = count + count_b;
  const acc_t frac_b = static_cast<acc_t>(count_b) / static_cast<acc_t>(n);
  const acc_t delta = mean_b - mean;
  mean = mean + delta * frac_b;
  m2 = m2 + m2_b + delta * delta * static_cast<acc_t>(count) * frac_b;
  count = n;
}

// 1 / sqrt(var + eps) in the accumulation type.
template <typename acc_t>
FASTGAN_HD acc_t inv_std(acc_t var, acc_t eps) {
  return acc_t(1) / std::sqrt(var + eps);
}

// Folds normalisation and the affine transform into z = x * scale + shift.
template <typename acc_t>
FASTGAN_HD void fold_affine(acc_t mean, acc_t invstd, acc_t weight, acc_t bias,
                            acc_t& scale, acc_t& shift) {
  scale = weight * invstd;
  shift = bias - mean * scale;
}

// LeakyReLU (slope 0 is ReLU). The derivative at z == 0 is `slope`, as in
// torch's leaky_relu_backward / threshold_backward, which test `z > 0`.
template <typename acc_t>
FASTGAN_HD acc_t leaky(acc_t z, acc_t slope) {
  return z > acc_t(0) ? z : z * slope;
}

template <typename acc_t>
FASTGAN_HD acc_t leaky_grad(acc_t z, acc_t slope) {
  return z > acc_t(0) ? acc_t(1) : slope;
}

// Backward coefficients for one channel. With dz = dy * act'(z) and M values per
// channel, training-mode BatchNorm backward is
//   dx = w * invstd * (dz - sum(dz)/M - (x - mean) * invstd^2 * sum(dz*(x-mean))/M)
// which we evaluate as dx = gain * (dz - proj * (x - mean) - mean_dz).
// In eval mode the statistics are constants: dx = gain * dz.
template <typename acc_t>
struct GradCoeffs {
  acc_t gain;     // w * invstd
  acc_t proj;     // invstd^2 * sum(dz * (x - mean)) / M   (0 in eval)
  acc_t mean_dz;  // sum(dz) / M                          (0 in eval)
};

template <typename acc_t>
FASTGAN_HD GradCoeffs<acc_t> grad_coeffs(bool training, acc_t weight, acc_t invstd,
                                         acc_t sum_dz, acc_t sum_dz_xc,
                                         int64_t count) {
  GradCoeffs<acc_t> g;
  g.gain = weight * invstd;
  if (training) {
    const acc_t inv_m = acc_t(1) / static_cast<acc_t>(count);
    g.proj = invstd * invstd * sum_dz_xc * inv_m;
    g.mean_dz = sum_dz * inv_m;
  } else {
    g.proj = acc_t(0);
    g.mean_dz = acc_t(0);
  }
  return g;
}

}  // namespace bn_act
}  // namespace fastgan
