// Per-channel math of the conditional BatchNorm2d + LeakyReLU op (cbn_act), shared by its
// CPU (csrc/cpu/kernels/cbn_act*.cpp) and CUDA (csrc/cuda/cbn_act.cu) kernels. The
// per-element pieces (leaky, leaky_grad, fold_affine, merge_moments, inv_std) are
// bn_act's (bn_act_math.h): cbn_act is that op with the affine taken per (sample,
// channel) instead of per channel.
//
// Forward: z = x * A[n,c] + B[n,c] with A = scale[n,c] * invstd[c] and
// B = shift[n,c] - mean[c] * A (bn_act::fold_affine per (n, c)), y = leaky(z).
//
// Backward, with dz = dy * leaky'(z), per (n, c) over H*W
//   S1[n,c] = sum dz,  S2[n,c] = sum dz * (x - mean)
// gives grad_shift = S1 and grad_scale = invstd * S2 (x_hat = (x - mean) * invstd).
// The per-channel sums of g' = dz * scale[n,c] that the training-mode input gradient needs
// follow from them without another pass: T1[c] = sum_n scale[n,c] * S1[n,c],
// T2[c] = sum_n scale[n,c] * S2[n,c]. Then, with M = N*H*W values per channel,
//   dx = invstd * (g' - T1/M - (x - mean) * invstd^2 * T2/M)
//      = A[n,c] * dz - (proj * (x - mean) + mean_dz) * invstd
// i.e. bn_act's coefficients (bn_act::grad_coeffs with weight 1, sums T1, T2) applied to
// scale[n,c] * dz instead of dz. In eval mode dx = A[n,c] * dz.
#pragma once

#include "bn_act_math.h"

namespace fastgan {
namespace cbn_act {

using bn_act::fold_affine;
using bn_act::GradCoeffs;
using bn_act::inv_std;
using bn_act::leaky;
using bn_act::leaky_grad;

// The per-channel coefficients of dx = gain * (scale[n,c] * dz - proj * (x - mean) - mean_dz):
// gain = invstd, and in training proj = invstd^2 * T2 / M, mean_dz = T1 / M.
template <typename acc_t>
FASTGAN_HD GradCoeffs<acc_t> grad_coeffs(bool training, acc_t invstd, acc_t t1, acc_t t2,
                                         int64_t count) {
  return bn_act::grad_coeffs<acc_t>(training, acc_t(1), invstd, t1, t2, count);
}

// dx of one element from its dz, its (n, c) scale and its channel's coefficients.
template <typename T>
FASTGAN_HD T grad_input(T dz, T scale, T xc, T gain, T proj, T mean_dz) {
  return gain * (dz * scale - (proj * xc + mean_dz));
}

}  // namespace cbn_act
}  // namespace fastgan
