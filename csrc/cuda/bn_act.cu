// CUDA kernels of the fused BatchNorm2d + LeakyReLU op (schemas in csrc/bn_act.cpp).
//
// Same contract as the CPU kernels (csrc/cpu/kernels/bn_act*.cpp) and the same per-channel math (bn_act_math.h):
//   training forward : stats partials -> finalize (mean, var, scale, shift) -> apply
//   eval forward     : affine from running stats -> apply
//   backward         : sums partials -> finalize (coefficients, dweight, dbias) -> dx
// Statistics: per-thread Welford, merged across the warp, the block and the grid with
// Chan's count-weighted formula (partials merged in double). NCHW and channels_last
// (NHWC) have their own reduction kernels; the elementwise kernels take the channel
// stride into account and use 4-wide vector loads where alignment allows. Indices are
// 64-bit. Everything runs on the current stream with no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../bn_act.h"
#include "../bn_act_checks.h"
#include "../bn_act_math.h"
#include "../common.h"
#include "bn_act_stats.h"

namespace fastgan {
namespace cuda {
namespace {

using bn_act::GradCoeffs;

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// ---------------------------------------------------------------------------
// Welford per thread, Chan merge across threads.

template <typename acc_t>
struct Welford {
  acc_t mean;
  acc_t m2;
  acc_t count;  // exact for counts below 2^24 (fp32) per thread; merged in double later
};

template <typename acc_t>
__device__ __forceinline__ void welford_push(Welford<acc_t>& w, acc_t x) {
  w.count += acc_t(1);
  const acc_t d = x - w.mean;
  w.mean += d / w.count;
  w.m2 += d * (x - w.mean);
}

template <typename acc_t>
__device__ __forceinline__ Welford<acc_t> welford_merge(const Welford<acc_t>& a,
                                                        const Welford<acc_t>& b) {
  if (b.count == acc_t(0)) return a;
  if (a.count == acc_t(0)) return b;
  Welford<acc_t> r;
  r.count = a.count + b.count;
  const acc_t frac = b.count / r.count;
  const acc_t d = b.mean - a.mean;
  r.mean = a.mean + d * frac;
  r.m2 = a.m2 + b.m2 + d * d * a.count * frac;
  return r;
}

template <typename acc_t>
__device__ __forceinline__ Welford<acc_t> warp_welford(Welford<acc_t> w) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    Welford<acc_t> o;
    o.mean = __shfl_down_sync(0xffffffffu, w.mean, off);
    o.m2 = __shfl_down_sync(0xffffffffu, w.m2, off);
    o.count = __shfl_down_sync(0xffffffffu, w.count, off);
    w = welford_merge(w, o);
  }
  return w;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Block-wide merge of a 1-D block (blockDim.x == kThreads); result valid in thread 0.
template <typename acc_t>
__device__ Welford<acc_t> block_welford(Welford<acc_t> w) {
  __shared__ acc_t s_mean[kThreads / kWarp], s_m2[kThreads / kWarp], s_cnt[kThreads / kWarp];
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp;
  w = warp_welford(w);
  if (lane == 0) {
    s_mean[wid] = w.mean;
    s_m2[wid] = w.m2;
    s_cnt[wid] = w.count;
  }
  __syncthreads();
  if (wid == 0) {
    Welford<acc_t> v{acc_t(0), acc_t(0), acc_t(0)};
    if (lane < kThreads / kWarp) v = {s_mean[lane], s_m2[lane], s_cnt[lane]};
    w = warp_welford(v);
  }
  return w;
}

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
    a = lane < kThreads / kWarp ? s_a[lane] : acc_t(0);
    b = lane < kThreads / kWarp ? s_b[lane] : acc_t(0);
    a = warp_sum(a);
    b = warp_sum(b);
  }
}

// ---------------------------------------------------------------------------
// Reductions. Partials are laid out [C][S] (S = splits of each channel).

// NCHW: block (c, s) reduces elements j = s*kThreads + tid, stepping S*kThreads,
// of channel c's M = N*HW values.
template <typename scalar_t, typename acc_t>
__global__ void stats_nchw_kernel(const scalar_t* __restrict__ x, int64_t C, int64_t HW, int64_t M,
                                  acc_t* __restrict__ p_mean, acc_t* __restrict__ p_m2,
                                  acc_t* __restrict__ p_cnt) {
  const int64_t c = blockIdx.x, S = gridDim.y, s = blockIdx.y;
  Welford<acc_t> w{acc_t(0), acc_t(0), acc_t(0)};
  for (int64_t j = s * kThreads + threadIdx.x; j < M; j += S * kThreads) {
    const int64_t n = j / HW, hw = j - n * HW;
    welford_push(w, static_cast<acc_t>(x[(n * C + c) * HW + hw]));
  }
  w = block_welford(w);
  if (threadIdx.x == 0) {
    p_mean[c * S + s] = w.mean;
    p_m2[c * S + s] = w.m2;
    p_cnt[c * S + s] = w.count;
  }
}

// NHWC: block (32 channels x 8 rows); grid (ceil(C/32), S). Threads of a warp read 32
// adjacent channels of one row (coalesced).
constexpr int kTileC = 32, kTileR = 8;

template <typename scalar_t, typename acc_t>
__global__ void stats_nhwc_kernel(const scalar_t* __restrict__ x, int64_t C, int64_t R,
                                  acc_t* __restrict__ p_mean, acc_t* __restrict__ p_m2,
                                  acc_t* __restrict__ p_cnt) {
  __shared__ acc_t s_mean[kTileR][kTileC], s_m2[kTileR][kTileC], s_cnt[kTileR][kTileC];
  const int64_t c = blockIdx.x * kTileC + threadIdx.x;
  const int64_t S = gridDim.y, s = blockIdx.y;
  Welford<acc_t> w{acc_t(0), acc_t(0), acc_t(0)};
  if (c < C) {
    for (int64_t r = s * kTileR + threadIdx.y; r < R; r += S * kTileR) {
      welford_push(w, static_cast<acc_t>(x[r * C + c]));
    }
  }
  s_mean[threadIdx.y][threadIdx.x] = w.mean;
  s_m2[threadIdx.y][threadIdx.x] = w.m2;
  s_cnt[threadIdx.y][threadIdx.x] = w.count;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int i = 1; i < kTileR; ++i) {
      w = welford_merge(w, Welford<acc_t>{s_mean[i][threadIdx.x], s_m2[i][threadIdx.x],
                                          s_cnt[i][threadIdx.x]});
    }
    p_mean[c * S + s] = w.mean;
    p_m2[c * S + s] = w.m2;
    p_cnt[c * S + s] = w.count;
  }
}

// Per-channel parameters, read as acc_t (nullptr: weight 1, bias 0).
template <typename acc_t>
__device__ __forceinline__ acc_t param_or(const acc_t* p, int64_t c, acc_t dflt) {
  return p ? p[c] : dflt;
}

// Merge the S partials of each channel (in double, in order), write mean / biased
// var and the folded affine (scale, shift).
template <typename acc_t>
__global__ void stats_finalize_kernel(const acc_t* __restrict__ p_mean, const acc_t* __restrict__ p_m2,
                                      const acc_t* __restrict__ p_cnt, int64_t C, int64_t S,
                                      const acc_t* __restrict__ weight, const acc_t* __restrict__ bias,
                                      acc_t eps, acc_t* __restrict__ mean, acc_t* __restrict__ var,
                                      acc_t* __restrict__ scale, acc_t* __restrict__ shift) {
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double m = 0, m2 = 0;
  int64_t cnt = 0;
  for (int64_t s = 0; s < S; ++s) {
    bn_act::merge_moments<double>(m, m2, cnt, p_mean[c * S + s], p_m2[c * S + s],
                                  static_cast<int64_t>(p_cnt[c * S + s]));
  }
  const acc_t mu = static_cast<acc_t>(m);
  const acc_t v = static_cast<acc_t>(m2 / static_cast<double>(cnt));
  mean[c] = mu;
  var[c] = v;
  bn_act::fold_affine<acc_t>(mu, bn_act::inv_std<acc_t>(v, eps), param_or(weight, c, acc_t(1)),
                             param_or(bias, c, acc_t(0)), scale[c], shift[c]);
}

// Eval: the affine from given statistics.
template <typename acc_t>
__global__ void affine_kernel(const acc_t* __restrict__ mean, const acc_t* __restrict__ var, int64_t C,
                              const acc_t* __restrict__ weight, const acc_t* __restrict__ bias,
                              acc_t eps, acc_t* __restrict__ scale, acc_t* __restrict__ shift) {
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  bn_act::fold_affine<acc_t>(mean[c], bn_act::inv_std<acc_t>(var[c], eps),
                             param_or(weight, c, acc_t(1)), param_or(bias, c, acc_t(0)), scale[c],
                             shift[c]);
}

// ---------------------------------------------------------------------------
// Elementwise passes. chan(i) = (i / inner) % C: inner = HW for NCHW, 1 for NHWC.

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

constexpr int kVec = 4;

template <typename scalar_t, typename acc_t, bool kVectorised>
__global__ void apply_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t numel,
                             int64_t C, int64_t inner, const acc_t* __restrict__ scale,
                             const acc_t* __restrict__ shift, acc_t slope) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if constexpr (kVectorised) {
    // Requires inner % kVec == 0 (NCHW) or C % kVec == 0 (NHWC) and aligned pointers.
    const int64_t nvec = numel / kVec;
    for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec; v += stride) {
      const int64_t i = v * kVec;
      const auto in = reinterpret_cast<const Pack<scalar_t, kVec>*>(x)[v];
      Pack<scalar_t, kVec> out;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int64_t c = ((i + k) / inner) % C;
        out.v[k] = static_cast<scalar_t>(
            bn_act::leaky<acc_t>(static_cast<acc_t>(in.v[k]) * scale[c] + shift[c], slope));
      }
      reinterpret_cast<Pack<scalar_t, kVec>*>(y)[v] = out;
    }
  } else {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel; i += stride) {
      const int64_t c = (i / inner) % C;
      y[i] = static_cast<scalar_t>(
          bn_act::leaky<acc_t>(static_cast<acc_t>(x[i]) * scale[c] + shift[c], slope));
    }
  }
}

// Backward sums: sum(dz), sum(dz * (x - mean)), dz = dy * act'(x * scale + shift).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void grad_terms(scalar_t dyv, scalar_t xv, acc_t sc, acc_t sh, acc_t mu,
                                           acc_t slope, acc_t& a, acc_t& b) {
  const acc_t xf = static_cast<acc_t>(xv);
  const acc_t dz = static_cast<acc_t>(dyv) * bn_act::leaky_grad<acc_t>(xf * sc + sh, slope);
  a += dz;
  b += dz * (xf - mu);
}

template <typename scalar_t, typename acc_t>
__global__ void grad_sums_nchw_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                      int64_t C, int64_t HW, int64_t M,
                                      const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                                      const acc_t* __restrict__ mean, acc_t slope,
                                      acc_t* __restrict__ p_a, acc_t* __restrict__ p_b) {
  const int64_t c = blockIdx.x, S = gridDim.y, s = blockIdx.y;
  const acc_t sc = scale[c], sh = shift[c], mu = mean[c];
  acc_t a = 0, b = 0;
  for (int64_t j = s * kThreads + threadIdx.x; j < M; j += S * kThreads) {
    const int64_t n = j / HW, hw = j - n * HW;
    const int64_t i = (n * C + c) * HW + hw;
    grad_terms<scalar_t, acc_t>(dy[i], x[i], sc, sh, mu, slope, a, b);
  }
  block_sum2(a, b);
  if (threadIdx.x == 0) {
    p_a[c * S + s] = a;
    p_b[c * S + s] = b;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void grad_sums_nhwc_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                      int64_t C, int64_t R, const acc_t* __restrict__ scale,
                                      const acc_t* __restrict__ shift, const acc_t* __restrict__ mean,
                                      acc_t slope, acc_t* __restrict__ p_a, acc_t* __restrict__ p_b) {
  __shared__ acc_t s_a[kTileR][kTileC], s_b[kTileR][kTileC];
  const int64_t c = blockIdx.x * kTileC + threadIdx.x;
  const int64_t S = gridDim.y, s = blockIdx.y;
  acc_t a = 0, b = 0;
  if (c < C) {
    const acc_t sc = scale[c], sh = shift[c], mu = mean[c];
    for (int64_t r = s * kTileR + threadIdx.y; r < R; r += S * kTileR) {
      grad_terms<scalar_t, acc_t>(dy[r * C + c], x[r * C + c], sc, sh, mu, slope, a, b);
    }
  }
  s_a[threadIdx.y][threadIdx.x] = a;
  s_b[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int i = 1; i < kTileR; ++i) {
      a += s_a[i][threadIdx.x];
      b += s_b[i][threadIdx.x];
    }
    p_a[c * S + s] = a;
    p_b[c * S + s] = b;
  }
}

// Sums over the S partials (in double), then dweight, dbias and dx coefficients.
template <typename acc_t>
__global__ void grad_finalize_kernel(const acc_t* __restrict__ p_a, const acc_t* __restrict__ p_b,
                                     int64_t C, int64_t S, int64_t M, bool training,
                                     const acc_t* __restrict__ weight, const acc_t* __restrict__ var,
                                     acc_t eps, acc_t* __restrict__ dweight, acc_t* __restrict__ dbias,
                                     acc_t* __restrict__ gain, acc_t* __restrict__ proj,
                                     acc_t* __restrict__ mean_dz) {
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double a = 0, b = 0;
  for (int64_t s = 0; s < S; ++s) {
    a += p_a[c * S + s];
    b += p_b[c * S + s];
  }
  const acc_t invstd = bn_act::inv_std<acc_t>(var[c], eps);
  const GradCoeffs<acc_t> g = bn_act::grad_coeffs<acc_t>(
      training, param_or(weight, c, acc_t(1)), invstd, static_cast<acc_t>(a), static_cast<acc_t>(b), M);
  gain[c] = g.gain;
  proj[c] = g.proj;
  mean_dz[c] = g.mean_dz;
  dweight[c] = static_cast<acc_t>(b * static_cast<double>(invstd));
  dbias[c] = static_cast<acc_t>(a);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t dx_value(scalar_t dyv, scalar_t xv, int64_t c,
                                             const acc_t* scale, const acc_t* shift,
                                             const acc_t* mean, const acc_t* gain,
                                             const acc_t* proj, const acc_t* mean_dz, acc_t slope) {
  const acc_t xf = static_cast<acc_t>(xv);
  const acc_t dz = static_cast<acc_t>(dyv) * bn_act::leaky_grad<acc_t>(xf * scale[c] + shift[c], slope);
  return static_cast<scalar_t>(gain[c] * (dz - proj[c] * (xf - mean[c]) - mean_dz[c]));
}

template <typename scalar_t, typename acc_t, bool kVectorised>
__global__ void grad_input_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                  scalar_t* __restrict__ dx, int64_t numel, int64_t C, int64_t inner,
                                  const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                                  const acc_t* __restrict__ mean, const acc_t* __restrict__ gain,
                                  const acc_t* __restrict__ proj, const acc_t* __restrict__ mean_dz,
                                  acc_t slope) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if constexpr (kVectorised) {
    const int64_t nvec = numel / kVec;
    for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec; v += stride) {
      const int64_t i = v * kVec;
      const auto xin = reinterpret_cast<const Pack<scalar_t, kVec>*>(x)[v];
      const auto gin = reinterpret_cast<const Pack<scalar_t, kVec>*>(dy)[v];
      Pack<scalar_t, kVec> out;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int64_t c = ((i + k) / inner) % C;
        out.v[k] = dx_value<scalar_t, acc_t>(gin.v[k], xin.v[k], c, scale, shift, mean, gain, proj,
                                             mean_dz, slope);
      }
      reinterpret_cast<Pack<scalar_t, kVec>*>(dx)[v] = out;
    }
  } else {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel; i += stride) {
      const int64_t c = (i / inner) % C;
      dx[i] = dx_value<scalar_t, acc_t>(dy[i], x[i], c, scale, shift, mean, gain, proj, mean_dz,
                                        slope);
    }
  }
}

// ---------------------------------------------------------------------------
// Host side.

int num_sms() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return std::max(sms, 1);
}

// Splits per channel: enough blocks to fill the GPU, at least ~4 values per thread.
int64_t splits(int64_t channel_blocks, int64_t per_channel, int64_t threads_per_block) {
  const int64_t want = std::max<int64_t>(1, (4 * num_sms() + channel_blocks - 1) / channel_blocks);
  const int64_t useful = std::max<int64_t>(1, per_channel / (threads_per_block * 4));
  return std::min<int64_t>({want, useful, 1024});
}

// Launch shape of the per-channel reductions and the number S of partials per channel:
// NCHW, blocks (C, S) of kThreads; NHWC, blocks (ceil(C / kTileC), S) of kTileC x kTileR.
struct ReduceGrid {
  dim3 grid, block;
  int64_t splits;
};

ReduceGrid reduce_grid(bool channels_last, int64_t C, int64_t numel) {
  const int64_t per_channel = numel / C;
  if (channels_last) {
    const int64_t ctiles = (C + kTileC - 1) / kTileC;
    const int64_t S = splits(ctiles, per_channel, kTileR);
    return {dim3(ctiles, S), dim3(kTileC, kTileR), S};
  }
  const int64_t S = splits(C, per_channel, kThreads);
  return {dim3(C, S), dim3(kThreads), S};
}

int64_t elementwise_blocks(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 32LL * num_sms()));
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename acc_t>
const acc_t* opt_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

at::Tensor as_acc(const c10::optional<at::Tensor>& t, at::ScalarType acc) {
  return t.has_value() && t->defined() ? t->to(acc).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_forward_cuda(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool training, double eps,
    double negative_slope) {
  bn_act::check_forward(input, weight, bias, running_mean, running_var, training);
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = is_channels_last(input);
  const at::Tensor x = cl ? input : input.contiguous();
  const auto acc = acc_scalar_type(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), numel = x.numel();
  at::Tensor y = at::empty_like(x);
  const at::Tensor w = as_acc(weight, acc), b = as_acc(bias, acc);
  at::Tensor mean, var;
  at::Tensor affine = at::empty({2, C}, x.options().dtype(acc));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int cblocks = static_cast<int>((C + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_act_forward_cuda", [&] {
    using acc_t = acc_of_t<scalar_t>;
    acc_t* scale = affine.mutable_data_ptr<acc_t>();
    acc_t* shift = scale + C;
    if (training) {
      mean = at::empty({C}, x.options().dtype(acc));
      var = at::empty({C}, x.options().dtype(acc));
      const ReduceGrid rg = reduce_grid(cl, C, numel);
      const int64_t S = rg.splits;
      at::Tensor part = at::empty({3, C, S}, x.options().dtype(acc));
      acc_t* pw = part.mutable_data_ptr<acc_t>();
      if (cl) {
        stats_nhwc_kernel<scalar_t, acc_t><<<rg.grid, rg.block, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), C, numel / C, pw, pw + C * S, pw + 2 * C * S);
      } else {
        stats_nchw_kernel<scalar_t, acc_t><<<rg.grid, rg.block, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), C, HW, N * HW, pw, pw + C * S, pw + 2 * C * S);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const acc_t* pp = part.const_data_ptr<acc_t>();
      stats_finalize_kernel<acc_t><<<cblocks, kThreads, 0, stream>>>(
          pp, pp + C * S, pp + 2 * C * S, C, S, opt_ptr<acc_t>(w), opt_ptr<acc_t>(b),
          static_cast<acc_t>(eps), mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>(),
          scale, shift);
    } else {
      mean = running_mean->to(acc, false, true).contiguous();
      var = running_var->to(acc, false, true).contiguous();
      affine_kernel<acc_t><<<cblocks, kThreads, 0, stream>>>(
          mean.const_data_ptr<acc_t>(), var.const_data_ptr<acc_t>(), C, opt_ptr<acc_t>(w),
          opt_ptr<acc_t>(b), static_cast<acc_t>(eps), scale, shift);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t inner = cl ? 1 : HW;
    const bool vec = (cl ? C % kVec == 0 : HW % kVec == 0) && numel % kVec == 0 &&
                     aligned(x.const_data_ptr(), sizeof(scalar_t) * kVec) &&
                     aligned(y.const_data_ptr(), sizeof(scalar_t) * kVec);
    const int64_t blocks = elementwise_blocks(vec ? numel / kVec : numel);
    if (vec) {
      apply_kernel<scalar_t, acc_t, true><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), numel, C, inner, scale, shift,
          static_cast<acc_t>(negative_slope));
    } else {
      apply_kernel<scalar_t, acc_t, false><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), numel, C, inner, scale, shift,
          static_cast<acc_t>(negative_slope));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean_in, const at::Tensor& var_in,
    bool training, double eps, double negative_slope, std::array<bool, 3> output_mask) {
  bn_act::check_backward(grad_out, input, weight, bias, mean_in, var_in);
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = is_channels_last(input);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(fmt), dy = grad_out.contiguous(fmt);
  const auto acc = acc_scalar_type(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), numel = x.numel();
  const at::Tensor mean = mean_in.to(acc).contiguous(), var = var_in.to(acc).contiguous();
  const at::Tensor w = as_acc(weight, acc), b = as_acc(bias, acc);
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor work = at::empty({7, C}, x.options().dtype(acc));  // scale shift gain proj mdz dw db
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int cblocks = static_cast<int>((C + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_act_backward_cuda", [&] {
    using acc_t = acc_of_t<scalar_t>;
    acc_t* wp = work.mutable_data_ptr<acc_t>();
    acc_t *scale = wp, *shift = wp + C, *gain = wp + 2 * C, *proj = wp + 3 * C, *mdz = wp + 4 * C,
          *dw = wp + 5 * C, *db = wp + 6 * C;
    const acc_t aeps = static_cast<acc_t>(eps), slope = static_cast<acc_t>(negative_slope);
    affine_kernel<acc_t><<<cblocks, kThreads, 0, stream>>>(
        mean.const_data_ptr<acc_t>(), var.const_data_ptr<acc_t>(), C, opt_ptr<acc_t>(w),
        opt_ptr<acc_t>(b), aeps, scale, shift);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const ReduceGrid rg = reduce_grid(cl, C, numel);
    const int64_t S = rg.splits;
    at::Tensor part = at::empty({2, C, S}, x.options().dtype(acc));
    acc_t* pw = part.mutable_data_ptr<acc_t>();
    if (cl) {
      grad_sums_nhwc_kernel<scalar_t, acc_t><<<rg.grid, rg.block, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), C, numel / C, scale, shift,
          mean.const_data_ptr<acc_t>(), slope, pw, pw + C * S);
    } else {
      grad_sums_nchw_kernel<scalar_t, acc_t><<<rg.grid, rg.block, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), C, HW, N * HW, scale, shift,
          mean.const_data_ptr<acc_t>(), slope, pw, pw + C * S);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const acc_t* pp = part.const_data_ptr<acc_t>();
    grad_finalize_kernel<acc_t><<<cblocks, kThreads, 0, stream>>>(
        pp, pp + C * S, C, S, numel / C, training, opt_ptr<acc_t>(w), var.const_data_ptr<acc_t>(),
        aeps, dw, db, gain, proj, mdz);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (output_mask[0]) {
      const int64_t inner = cl ? 1 : HW;
      const bool vec = (cl ? C % kVec == 0 : HW % kVec == 0) && numel % kVec == 0 &&
                       aligned(x.const_data_ptr(), sizeof(scalar_t) * kVec) &&
                       aligned(dy.const_data_ptr(), sizeof(scalar_t) * kVec) &&
                       aligned(dx.const_data_ptr(), sizeof(scalar_t) * kVec);
      const int64_t blocks = elementwise_blocks(vec ? numel / kVec : numel);
      const acc_t* mp = mean.const_data_ptr<acc_t>();
      if (vec) {
        grad_input_kernel<scalar_t, acc_t, true><<<blocks, kThreads, 0, stream>>>(
            dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
            numel, C, inner, scale, shift, mp, gain, proj, mdz, slope);
      } else {
        grad_input_kernel<scalar_t, acc_t, false><<<blocks, kThreads, 0, stream>>>(
            dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
            numel, C, inner, scale, shift, mp, gain, proj, mdz, slope);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  const bool have_w = weight.has_value() && weight->defined();
  const bool have_b = bias.has_value() && bias->defined();
  at::Tensor gw = output_mask[1] && have_w ? work[5].to(weight->scalar_type(), false, true)
                                           : at::empty({0}, x.options().dtype(have_w ? weight->scalar_type() : x.scalar_type()));
  at::Tensor gb = output_mask[2] && have_b ? work[6].to(bias->scalar_type(), false, true)
                                           : at::empty({0}, x.options().dtype(have_b ? bias->scalar_type() : x.scalar_type()));
  return {dx, gw, gb};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_forward_update_cuda(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    double negative_slope) {
  return bn_act::forward_and_update(&bn_act_forward_cuda, input, weight, bias, running_mean,
                                    running_var, training, momentum, eps, negative_slope);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> bn_act_batch_stats(const at::Tensor& x) {
  c10::cuda::CUDAGuard guard(x.device());
  const bool cl = is_channels_last(x);
  TORCH_CHECK(cl || x.is_contiguous(), "bn_act_batch_stats: x must be NCHW-contiguous or "
              "channels_last");
  const auto acc = acc_scalar_type(x.scalar_type());
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3), numel = x.numel();
  at::Tensor mean = at::empty({C}, x.options().dtype(acc));
  at::Tensor var = at::empty({C}, x.options().dtype(acc));
  at::Tensor affine = at::empty({2, C}, x.options().dtype(acc));  // unused fold (no weight)
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_act_batch_stats", [&] {
    using acc_t = acc_of_t<scalar_t>;
    const ReduceGrid rg = reduce_grid(cl, C, numel);
    const int64_t S = rg.splits;
    at::Tensor part = at::empty({3, C, S}, x.options().dtype(acc));
    acc_t* pw = part.mutable_data_ptr<acc_t>();
    if (cl) {
      stats_nhwc_kernel<scalar_t, acc_t><<<rg.grid, rg.block, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), C, numel / C, pw, pw + C * S, pw + 2 * C * S);
    } else {
      stats_nchw_kernel<scalar_t, acc_t><<<rg.grid, rg.block, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), C, HW, numel / C, pw, pw + C * S, pw + 2 * C * S);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const acc_t* pp = part.const_data_ptr<acc_t>();
    acc_t* fold = affine.mutable_data_ptr<acc_t>();
    stats_finalize_kernel<acc_t><<<static_cast<int>((C + kThreads - 1) / kThreads), kThreads, 0,
                                   stream>>>(pp, pp + C * S, pp + 2 * C * S, C, S, nullptr,
                                             nullptr, acc_t(1), mean.mutable_data_ptr<acc_t>(),
                                             var.mutable_data_ptr<acc_t>(), fold, fold + C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mean, var};
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("bn_act_forward", &bn_act_forward_update_cuda);
  m.impl("bn_act_backward", &bn_act_backward_cuda);
}

}  // namespace cuda
}  // namespace fastgan
