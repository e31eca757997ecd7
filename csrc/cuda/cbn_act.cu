// CUDA kernels of the fused conditional BatchNorm2d + LeakyReLU op (schemas in
// csrc/cbn_act.cpp, math in csrc/cbn_act_math.h), with the contract of the CPU kernels
// (csrc/cpu/kernels/cbn_act.cpp):
//   training forward : bn_act's batch statistics (bn_act_batch_stats, csrc/cuda/bn_act.cu)
//                      -> fold (A, B per (n, c)) -> apply
//   eval forward     : fold from the running statistics -> apply
//   backward         : per-(n, c) sums S1, S2 (one block per plane, or per sample and 32
//                      channels for channels_last; no atomics) -> per-channel finalize
//                      (T1, T2 summed over n in double, in order; grad_scale, grad_shift)
//                      -> dx
// Indices are 64-bit. Everything runs on the current stream with no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../bn_act.h"
#include "../cbn_act_checks.h"
#include "../cbn_act_math.h"
#include "../common.h"
#include "bn_act_stats.h"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kTileC = 32, kTileR = 8;

// The (n, c) index of element i: NCHW planes are (n * C + c) = i / HW; channels_last rows
// hold C channels of sample i / (HW * C).
__device__ __forceinline__ int64_t plane_of(int64_t i, int64_t C, int64_t HW, bool cl) {
  return cl ? (i / (HW * C)) * C + i % C : i / HW;
}

// A[n,c] = scale[n,c] * invstd[c], B[n,c] = shift[n,c] - mean[c] * A[n,c].
template <typename acc_t>
__global__ void fold_kernel(const acc_t* __restrict__ mean, const acc_t* __restrict__ var,
                            const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                            int64_t NC, int64_t C, acc_t eps, acc_t* __restrict__ A,
                            acc_t* __restrict__ B) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= NC) return;
  const int64_t c = i % C;
  cbn_act::fold_affine<acc_t>(mean[c], cbn_act::inv_std<acc_t>(var[c], eps), scale[i], shift[i],
                              A[i], B[i]);
}

template <typename scalar_t, typename acc_t>
__global__ void apply_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                             int64_t numel, int64_t C, int64_t HW, bool cl,
                             const acc_t* __restrict__ A, const acc_t* __restrict__ B,
                             acc_t slope) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += stride) {
    const int64_t q = plane_of(i, C, HW, cl);
    y[i] = static_cast<scalar_t>(
        cbn_act::leaky<acc_t>(static_cast<acc_t>(x[i]) * A[q] + B[q], slope));
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sums a and b over a 1-D block of kThreads; results valid in thread 0.
template <typename acc_t>
__device__ void block_sum2(acc_t& a, acc_t& b) {
  __shared__ acc_t s_a[kThreads / kWarp], s_b[kThreads / kWarp];
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    s_a[wid] = a;
    s_b[wid] = b;
  }
  __syncthreads();
  if (wid == 0) {
    a = warp_sum(lane < kThreads / kWarp ? s_a[lane] : acc_t(0));
    b = warp_sum(lane < kThreads / kWarp ? s_b[lane] : acc_t(0));
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void grad_terms(scalar_t dyv, scalar_t xv, acc_t a, acc_t b, acc_t mu,
                                           acc_t slope, acc_t& s1, acc_t& s2) {
  const acc_t xf = static_cast<acc_t>(xv);
  const acc_t dz = static_cast<acc_t>(dyv) * cbn_act::leaky_grad<acc_t>(xf * a + b, slope);
  s1 += dz;
  s2 += dz * (xf - mu);
}

// NCHW: block q = n * C + c reduces its plane of HW values.
template <typename scalar_t, typename acc_t>
__global__ void grad_sums_nchw_kernel(const scalar_t* __restrict__ dy,
                                      const scalar_t* __restrict__ x, int64_t C, int64_t HW,
                                      const acc_t* __restrict__ A, const acc_t* __restrict__ B,
                                      const acc_t* __restrict__ mean, acc_t slope,
                                      acc_t* __restrict__ S1, acc_t* __restrict__ S2) {
  const int64_t q = blockIdx.x, base = q * HW;
  const acc_t a = A[q], b = B[q], mu = mean[q % C];
  acc_t s1 = 0, s2 = 0;
  for (int64_t j = threadIdx.x; j < HW; j += kThreads) {
    grad_terms<scalar_t, acc_t>(dy[base + j], x[base + j], a, b, mu, slope, s1, s2);
  }
  block_sum2(s1, s2);
  if (threadIdx.x == 0) {
    S1[q] = s1;
    S2[q] = s2;
  }
}

// Channels_last: block (32 channels x 8 rows) per (channel tile, sample n); a warp reads
// 32 adjacent channels of one row (coalesced).
template <typename scalar_t, typename acc_t>
__global__ void grad_sums_nhwc_kernel(const scalar_t* __restrict__ dy,
                                      const scalar_t* __restrict__ x, int64_t C, int64_t HW,
                                      const acc_t* __restrict__ A, const acc_t* __restrict__ B,
                                      const acc_t* __restrict__ mean, acc_t slope,
                                      acc_t* __restrict__ S1, acc_t* __restrict__ S2) {
  __shared__ acc_t s_a[kTileR][kTileC], s_b[kTileR][kTileC];
  const int64_t c = blockIdx.x * kTileC + threadIdx.x, n = blockIdx.y;
  acc_t s1 = 0, s2 = 0;
  if (c < C) {
    const int64_t q = n * C + c;
    const acc_t a = A[q], b = B[q], mu = mean[c];
    const int64_t base = n * HW * C + c;
    for (int64_t r = threadIdx.y; r < HW; r += kTileR) {
      grad_terms<scalar_t, acc_t>(dy[base + r * C], x[base + r * C], a, b, mu, slope, s1, s2);
    }
  }
  s_a[threadIdx.y][threadIdx.x] = s1;
  s_b[threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int i = 1; i < kTileR; ++i) {
      s1 += s_a[i][threadIdx.x];
      s2 += s_b[i][threadIdx.x];
    }
    S1[n * C + c] = s1;
    S2[n * C + c] = s2;
  }
}

// Per channel: T1 = sum_n scale * S1, T2 = sum_n scale * S2 (double, in order) -> the
// input gradient's coefficients; grad_scale = invstd * S2, grad_shift = S1 per (n, c).
template <typename acc_t>
__global__ void grad_finalize_kernel(const acc_t* __restrict__ S1, const acc_t* __restrict__ S2,
                                     const acc_t* __restrict__ scale,
                                     const acc_t* __restrict__ var, int64_t N, int64_t C,
                                     int64_t count, bool training, acc_t eps,
                                     acc_t* __restrict__ gs, acc_t* __restrict__ gb,
                                     acc_t* __restrict__ gain, acc_t* __restrict__ proj,
                                     acc_t* __restrict__ mdz) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const acc_t invstd = cbn_act::inv_std<acc_t>(var[c], eps);
  double t1 = 0, t2 = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t q = n * C + c;
    t1 += static_cast<double>(scale[q]) * static_cast<double>(S1[q]);
    t2 += static_cast<double>(scale[q]) * static_cast<double>(S2[q]);
    gs[q] = S2[q] * invstd;
    gb[q] = S1[q];
  }
  const auto g = cbn_act::grad_coeffs<acc_t>(training, invstd, static_cast<acc_t>(t1),
                                             static_cast<acc_t>(t2), count);
  gain[c] = g.gain;
  proj[c] = g.proj;
  mdz[c] = g.mean_dz;
}

template <typename scalar_t, typename acc_t>
__global__ void grad_input_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                  scalar_t* __restrict__ dx, int64_t numel, int64_t C,
                                  int64_t HW, bool cl, const acc_t* __restrict__ A,
                                  const acc_t* __restrict__ B, const acc_t* __restrict__ scale,
                                  const acc_t* __restrict__ mean, const acc_t* __restrict__ gain,
                                  const acc_t* __restrict__ proj, const acc_t* __restrict__ mdz,
                                  acc_t slope) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += stride) {
    const int64_t q = plane_of(i, C, HW, cl), c = q % C;
    const acc_t xf = static_cast<acc_t>(x[i]);
    const acc_t dz = static_cast<acc_t>(dy[i]) * cbn_act::leaky_grad<acc_t>(xf * A[q] + B[q], slope);
    dx[i] = static_cast<scalar_t>(
        cbn_act::grad_input<acc_t>(dz, scale[q], xf - mean[c], gain[c], proj[c], mdz[c]));
  }
}

// ---------------------------------------------------------------------------
// Host side.

int64_t elementwise_blocks(int64_t n) {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 32LL * std::max(sms, 1)));
}

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> cbn_act_forward_cuda(
    const at::Tensor& input, const c10::optional<at::Tensor>& scale_opt,
    const c10::optional<at::Tensor>& shift_opt, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool training, double eps,
    double negative_slope) {
  const at::Tensor& scale = *scale_opt;
  const at::Tensor& shift = *shift_opt;
  cbn_act::check_forward(input, scale, shift, running_mean, running_var, training);
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = is_channels_last(input);
  const at::Tensor x = cl ? input : input.contiguous();
  const auto acc = acc_scalar_type(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), numel = x.numel();
  at::Tensor mean, var;
  if (training) {
    std::tie(mean, var) = bn_act_batch_stats(x);
  } else {
    mean = running_mean->to(acc, false, true).contiguous();
    var = running_var->to(acc, false, true).contiguous();
  }
  const at::Tensor sc = scale.to(acc).contiguous(), sh = shift.to(acc).contiguous();
  at::Tensor folded = at::empty({2, N, C}, x.options().dtype(acc));
  at::Tensor y = at::empty_like(x);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cbn_act_forward_cuda", [&] {
    using acc_t = acc_of_t<scalar_t>;
    acc_t* A = folded.mutable_data_ptr<acc_t>();
    acc_t* B = A + N * C;
    fold_kernel<acc_t><<<blocks_for(N * C), kThreads, 0, stream>>>(
        mean.const_data_ptr<acc_t>(), var.const_data_ptr<acc_t>(), sc.const_data_ptr<acc_t>(),
        sh.const_data_ptr<acc_t>(), N * C, C, static_cast<acc_t>(eps), A, B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    apply_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), numel, C, HW, cl, A, B,
        static_cast<acc_t>(negative_slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cbn_act_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& scale,
    const at::Tensor& shift, const at::Tensor& mean_in, const at::Tensor& var_in, bool training,
    double eps, double negative_slope, std::array<bool, 3> output_mask) {
  cbn_act::check_backward(grad_out, input, scale, shift, mean_in, var_in);
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = is_channels_last(input);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(fmt), dy = grad_out.contiguous(fmt);
  const auto acc = acc_scalar_type(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), numel = x.numel();
  const at::Tensor mean = mean_in.to(acc).contiguous(), var = var_in.to(acc).contiguous();
  const at::Tensor sc = scale.to(acc).contiguous(), sh = shift.to(acc).contiguous();
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor nc = at::empty({6, N, C}, x.options().dtype(acc));  // A B S1 S2 gs gb
  at::Tensor coef = at::empty({3, C}, x.options().dtype(acc));   // gain proj mdz
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cbn_act_backward_cuda", [&] {
    using acc_t = acc_of_t<scalar_t>;
    acc_t* p = nc.mutable_data_ptr<acc_t>();
    const int64_t NC = N * C;
    acc_t *A = p, *B = p + NC, *S1 = p + 2 * NC, *S2 = p + 3 * NC, *gs = p + 4 * NC,
          *gb = p + 5 * NC;
    acc_t* cp = coef.mutable_data_ptr<acc_t>();
    const acc_t aeps = static_cast<acc_t>(eps), slope = static_cast<acc_t>(negative_slope);
    const acc_t* mp = mean.const_data_ptr<acc_t>();
    fold_kernel<acc_t><<<blocks_for(NC), kThreads, 0, stream>>>(
        mp, var.const_data_ptr<acc_t>(), sc.const_data_ptr<acc_t>(), sh.const_data_ptr<acc_t>(),
        NC, C, aeps, A, B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (cl) {
      grad_sums_nhwc_kernel<scalar_t, acc_t>
          <<<dim3((C + kTileC - 1) / kTileC, N), dim3(kTileC, kTileR), 0, stream>>>(
              dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), C, HW, A, B, mp,
              slope, S1, S2);
    } else {
      grad_sums_nchw_kernel<scalar_t, acc_t><<<NC, kThreads, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), C, HW, A, B, mp, slope,
          S1, S2);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_finalize_kernel<acc_t><<<blocks_for(C), kThreads, 0, stream>>>(
        S1, S2, sc.const_data_ptr<acc_t>(), var.const_data_ptr<acc_t>(), N, C, numel / C,
        training, aeps, gs, gb, cp, cp + C, cp + 2 * C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (output_mask[0]) {
      grad_input_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreads, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
          dx.mutable_data_ptr<scalar_t>(), numel, C, HW, cl, A, B, sc.const_data_ptr<acc_t>(), mp,
          cp, cp + C, cp + 2 * C, slope);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  at::Tensor gs = output_mask[1] ? nc[4].to(scale.scalar_type(), false, true)
                                 : at::empty({0}, x.options().dtype(scale.scalar_type()));
  at::Tensor gb = output_mask[2] ? nc[5].to(shift.scalar_type(), false, true)
                                 : at::empty({0}, x.options().dtype(shift.scalar_type()));
  return {dx, gs, gb};
}

// bn_act's forward-and-update, with the per-sample affine in place of weight and bias.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cbn_act_forward_update_cuda(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    bool training, double momentum, double eps, double negative_slope) {
  return bn_act::forward_and_update(&cbn_act_forward_cuda, input,
                                    c10::optional<at::Tensor>(scale),
                                    c10::optional<at::Tensor>(shift), running_mean, running_var,
                                    training, momentum, eps, negative_slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("cbn_act_forward", &cbn_act_forward_update_cuda);
  m.impl("cbn_act_backward", &cbn_act_backward_cuda);
}

}  // namespace cuda
}  // namespace fastgan
