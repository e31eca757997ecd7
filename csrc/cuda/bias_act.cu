// CUDA kernels of the bias_act op (schemas and autograd in csrc/bias_act.cpp, per-element
// math in csrc/bias_act_math.h, shared with csrc/cpu/kernels/bias_act.cpp; argument checks
// and the memory-order view in csrc/bias_act_checks.h).
//
// x is seen in memory order as (outer, channels, inner) with the bias indexed by the
// channel: any dense x (contiguous, channels_last, any permutation of dimensions) is
// viewed with its dimensions permuted into memory order, which is contiguous, and `dim`
// moved with them (bias_act::layout_of of that view; channels_last with dim == 1 gives
// inner == 1); a non-dense x is made contiguous first. y (and grad_x) get x's (grad's)
// strides, so they keep its memory format.
//
// Forward: one grid-stride elementwise launch, 16-byte vector loads and stores where the
//   channel of a whole vector is known (inner % V == 0, or inner == 1 and channels % V == 0),
//   numel % V == 0 and the pointers are aligned; one element per step otherwise.
// Backward: grad_x and, when asked for, grad_b = sum of grad_x over every dimension but
//   `dim`, in one pass over grad (and ref), grad_x computed even when it is not stored:
//   - inner >= kRowMin ("rows"): block (channel c, split s); each warp takes chunks of the
//     rows (o, c), 16-byte vectors where aligned, and the block's sum is one partial [s][c];
//   - small inner ("columns"): x as a matrix of `outer` rows by channels * inner columns;
//     threads own columns (coalesced across a warp) and walk rows; the block's per-column
//     sums are one partial row [s][col].
//   A second launch (one block per channel) adds the partials of each channel in a fixed
//   order, in double, and writes grad_b in b's dtype: deterministic, no atomics.
// Everything runs on the current stream with no host synchronisation; indices are 64-bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../bias_act_checks.h"
#include "../bias_act_math.h"
#include "../common.h"

namespace fastgan {
namespace cuda {
namespace {

using bias_act::Act;

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
constexpr int64_t kRowMin = 128;  // inner at and above which the backward walks rows
constexpr int kChunkVecs = 4;     // vectors per lane in one warp task of the rows kernel

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements per 16-byte vector.
template <typename scalar_t>
constexpr int vec_of() {
  return static_cast<int>(16 / sizeof(scalar_t));
}

// The op's scalar arguments in the compute type.
template <typename acc_t>
struct Params {
  acc_t alpha, gain, inv_gain, clamp;
  bool clamping;
  int order;
};

template <typename acc_t>
Params<acc_t> make_params(double alpha, double gain, double clamp, int64_t order) {
  return Params<acc_t>{static_cast<acc_t>(alpha), static_cast<acc_t>(gain),
                       static_cast<acc_t>(gain != 0 ? 1.0 / gain : 0.0), static_cast<acc_t>(clamp),
                       clamp >= 0, static_cast<int>(order)};
}

template <typename scalar_t>
__device__ __forceinline__ acc_of_t<scalar_t> load_or_zero(const scalar_t* p, int64_t i) {
  return p ? static_cast<acc_of_t<scalar_t>>(p[i]) : acc_of_t<scalar_t>(0);
}

template <Act A, typename acc_t>
__device__ __forceinline__ acc_t fwd(acc_t s, const Params<acc_t>& p) {
  return bias_act::forward<A, ScalarOps<acc_t>>(s, p.alpha, p.gain, p.clamp,
                                                          p.clamping);
}

template <Act A, typename acc_t>
__device__ __forceinline__ acc_t bwd(acc_t g, acc_t r, acc_t bias, const Params<acc_t>& p) {
  return bias_act::backward<A, ScalarOps<acc_t>>(p.order, g, r, bias, p.alpha, p.gain,
                                                           p.inv_gain, p.clamp, p.clamping);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum over a 1-D block of kThreads; the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T shared[kWarps];
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) shared[wid] = v;
  __syncthreads();
  v = threadIdx.x < kWarps ? shared[threadIdx.x] : T(0);
  if (wid == 0) v = warp_sum(v);
  return v;
}

// ---------------------------------------------------------------------------
// Forward. Element i (memory order) has channel (i / inner) % channels; b may be null.

template <Act A, typename scalar_t, bool kVec>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                   scalar_t* __restrict__ y, int64_t numel, int64_t channels, int64_t inner,
                   Params<acc_of_t<scalar_t>> p) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kVec) {
    // Whole vectors share a channel (inner % V == 0) or hold V consecutive channels
    // (inner == 1, channels % V == 0), so one division per vector.
    constexpr int V = vec_of<scalar_t>();
    const int64_t nvec = numel / V;
    for (int64_t v = tid; v < nvec; v += stride) {
      const int64_t i = v * V;
      const auto in = reinterpret_cast<const Pack<scalar_t, V>*>(x)[v];
      const int64_t c0 = b ? (i / inner) % channels : 0;
      Pack<scalar_t, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const acc_t bias = b ? static_cast<acc_t>(b[inner == 1 ? c0 + k : c0]) : acc_t(0);
        out.v[k] = static_cast<scalar_t>(fwd<A>(static_cast<acc_t>(in.v[k]) + bias, p));
      }
      reinterpret_cast<Pack<scalar_t, V>*>(y)[v] = out;
    }
  } else {
    for (int64_t i = tid; i < numel; i += stride) {
      const acc_t bias = b ? static_cast<acc_t>(b[(i / inner) % channels]) : acc_t(0);
      y[i] = static_cast<scalar_t>(fwd<A>(static_cast<acc_t>(x[i]) + bias, p));
    }
  }
}

// ---------------------------------------------------------------------------
// Backward, rows: block (c = blockIdx.x, s = blockIdx.y). The channel's rows (o, c),
// o < outer, each `inner` long and contiguous, are cut into chunks of kChunk elements.
// The channel's warps w = s * kWarps + warp form a wr x wc grid (warps beyond it idle):
// warp (w / wc, w % wc) takes rows w / wc, stepping wr, and in each of them chunks w % wc,
// stepping wc (32-bit index arithmetic: no 64-bit division, which is a called routine).
// gx (grad_x) and partial ([gridDim.y][channels]) may each be null; bias (swish's b) and
// ref may be null.

// No __launch_bounds__ here: with it, ptxas (CUDA 13, sm_80) spills a few bytes in
// several instantiations at under 50 registers; without it, none.
template <Act A, typename scalar_t, bool kVec>
__global__ void backward_rows_kernel(const scalar_t* __restrict__ g,
                                     const scalar_t* __restrict__ ref,
                                     const scalar_t* __restrict__ b, scalar_t* __restrict__ gx,
                                     acc_of_t<scalar_t>* __restrict__ partial, int64_t outer,
                                     int64_t channels, int64_t inner, int wr, int wc,
                                     Params<acc_of_t<scalar_t>> p) {
  using acc_t = acc_of_t<scalar_t>;
  constexpr int V = kVec ? vec_of<scalar_t>() : 1;
  constexpr int64_t kChunk = static_cast<int64_t>(kWarp) * V * kChunkVecs;
  const int64_t c = blockIdx.x;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const acc_t bias = load_or_zero(b, c);
  acc_t sum = 0;
  const int w = static_cast<int>(blockIdx.y) * kWarps + warp;
  const int wo = w / wc;
  const int64_t o0 = wo < wr ? wo : outer;  // idle beyond the wr x wc grid
  for (int64_t o = o0; o < outer; o += wr) {
    const int64_t row = (o * channels + c) * inner;
    for (int64_t k0 = static_cast<int64_t>(w - wo * wc) * kChunk; k0 < inner;
         k0 += static_cast<int64_t>(wc) * kChunk) {
      const int64_t end = row + std::min(inner, k0 + kChunk);
      for (int64_t i = row + k0 + static_cast<int64_t>(lane) * V; i < end;
           i += static_cast<int64_t>(kWarp) * V) {
        if constexpr (kVec) {  // inner % V == 0: a vector never crosses a row
          const int64_t v = i / V;
          const auto gin = reinterpret_cast<const Pack<scalar_t, V>*>(g)[v];
          Pack<scalar_t, V> rin;
          if (ref) rin = reinterpret_cast<const Pack<scalar_t, V>*>(ref)[v];
          Pack<scalar_t, V> out;
#pragma unroll
          for (int k = 0; k < V; ++k) {
            const acc_t r = ref ? static_cast<acc_t>(rin.v[k]) : acc_t(0);
            const acc_t d = bwd<A>(static_cast<acc_t>(gin.v[k]), r, bias, p);
            sum += d;
            out.v[k] = static_cast<scalar_t>(d);
          }
          if (gx) reinterpret_cast<Pack<scalar_t, V>*>(gx)[v] = out;
        } else {
          const acc_t d = bwd<A>(static_cast<acc_t>(g[i]), load_or_zero(ref, i), bias, p);
          sum += d;
          if (gx) gx[i] = static_cast<scalar_t>(d);
        }
      }
    }
  }
  if (partial) {  // uniform across the block
    sum = block_sum(sum);
    if (threadIdx.x == 0) partial[static_cast<int64_t>(blockIdx.y) * channels + c] = sum;
  }
}

// Backward, columns: the tensor as `rows` x `cols` (cols = channels * inner, column j of
// channel j / inner), block (TX, TY) = (blockDim.x, blockDim.y) with TX * TY == kThreads,
// grid (ceil(cols / TX), S). Thread (tx, ty) of block (bx, s) owns column bx * TX + tx and
// walks rows s * TY + ty, stepping S * TY; partial is [S][cols].

template <Act A, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_cols_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ ref,
                         const scalar_t* __restrict__ b, scalar_t* __restrict__ gx,
                         acc_of_t<scalar_t>* __restrict__ partial, int64_t rows, int64_t cols,
                         int64_t inner, Params<acc_of_t<scalar_t>> p) {
  using acc_t = acc_of_t<scalar_t>;
  __shared__ acc_t shared[kThreads];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  acc_t sum = 0;
  if (col < cols) {
    const acc_t bias = load_or_zero(b, col / inner);
    const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.y;
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < rows;
         r += step) {
      const int64_t i = r * cols + col;
      const acc_t d = bwd<A>(static_cast<acc_t>(g[i]), load_or_zero(ref, i), bias, p);
      sum += d;
      if (gx) gx[i] = static_cast<scalar_t>(d);
    }
  }
  if (partial) {  // uniform across the block
    shared[threadIdx.y * blockDim.x + threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
      for (unsigned y = 1; y < blockDim.y; ++y) sum += shared[y * blockDim.x + threadIdx.x];
      partial[static_cast<int64_t>(blockIdx.y) * cols + col] = sum;
    }
  }
}

// grad_b[c] = sum over s < splits, j < inner of partial[s][c * inner + j] (inner 1 for the
// rows kernel's partials), one block per channel, in double, in a fixed order.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    grad_b_kernel(const acc_t* __restrict__ partial, int64_t splits, int64_t channels,
                  int64_t inner, scalar_t* __restrict__ grad_b) {
  const int64_t c = blockIdx.x;
  const int64_t n = splits * inner;
  double v = 0;
  for (int64_t k = threadIdx.x; k < n; k += kThreads) {
    const int64_t s = k / inner, j = k - s * inner;
    v += static_cast<double>(partial[(s * channels + c) * inner + j]);
  }
  v = block_sum(v);
  if (threadIdx.x == 0) grad_b[c] = static_cast<scalar_t>(v);
}

// ---------------------------------------------------------------------------
// Host side.

int num_sms() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return std::max(sms, 1);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned(const void* p, size_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

bool has(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

at::Tensor bias_act_forward_cuda(const at::Tensor& x_in, const c10::optional<at::Tensor>& b_in,
                                 int64_t dim, c10::string_view act_name, double alpha,
                                 double gain, double clamp) {
  const int act = bias_act::check_forward("fastgan::bias_act_forward", x_in, b_in, dim, act_name);
  c10::cuda::CUDAGuard guard(x_in.device());
  const bool has_b = has(b_in);
  const bias_act::View v = bias_act::memory_view(x_in, dim, has_b);
  const at::Tensor& x = v.t;
  const bias_act::Layout& l = v.l;
  at::Tensor y = bias_act::empty_as(x);
  const int64_t numel = x.numel();
  if (numel == 0) return y;
  const at::Tensor b = has_b ? b_in->contiguous() : at::Tensor();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t max_blocks = 32LL * num_sms();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_act_forward_cuda", [&] {
    using acc_t = acc_of_t<scalar_t>;
    constexpr int V = vec_of<scalar_t>();
    const auto p = make_params<acc_t>(alpha, gain, clamp, 1);
    const bool vec = numel % V == 0 &&
                     (!has_b || l.inner % V == 0 || (l.inner == 1 && l.channels % V == 0)) &&
                     aligned(x.const_data_ptr(), 16) && aligned(y.const_data_ptr(), 16);
    const int blocks = static_cast<int>(
        std::clamp<int64_t>(ceil_div(vec ? numel / V + 1 : numel, kThreads), 1, max_blocks));
    const scalar_t* bp = ptr_or_null<scalar_t>(b);
    bias_act::dispatch_act(act, [&](auto a) {
      constexpr Act A = decltype(a)::value;
      if (vec) {
        forward_kernel<A, scalar_t, true><<<blocks, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), bp, y.mutable_data_ptr<scalar_t>(), numel, l.channels,
            l.inner, p);
      } else {
        forward_kernel<A, scalar_t, false><<<blocks, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), bp, y.mutable_data_ptr<scalar_t>(), numel, l.channels,
            l.inner, p);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward_cuda(
    const at::Tensor& grad, const c10::optional<at::Tensor>& ref_in,
    const c10::optional<at::Tensor>& b_in, int64_t dim, c10::string_view act_name, double alpha,
    double gain, double clamp, int64_t order, std::array<bool, 2> output_mask) {
  constexpr const char* op = "fastgan::bias_act_backward";
  const int act = bias_act::check_forward(op, grad, b_in, dim, act_name);
  TORCH_CHECK(order == 1 || order == 2, op, ": order must be 1 or 2, got ", order);
  const bool has_b = has(b_in);
  const auto kind = bias_act::ref_kind(static_cast<Act>(act), clamp >= 0);
  const bool use_ref = kind != bias_act::RefKind::kNone;
  TORCH_CHECK(!use_ref || has(ref_in), op, ": act '", act_name, "'",
              clamp >= 0 ? " with clamp" : "", " needs ref (the saved ",
              kind == bias_act::RefKind::kX ? "x" : "y", "), got None");
  if (has(ref_in)) {
    TORCH_CHECK(ref_in->sizes() == grad.sizes(), op, ": ref has shape ", ref_in->sizes(),
                " but grad has shape ", grad.sizes());
    TORCH_CHECK(ref_in->scalar_type() == grad.scalar_type(), op, ": ref has dtype ",
                ref_in->scalar_type(), " but grad has dtype ", grad.scalar_type());
    TORCH_CHECK(ref_in->device() == grad.device(), op, ": ref is on ", ref_in->device(),
                " but grad is on ", grad.device());
  }
  c10::cuda::CUDAGuard guard(grad.device());
  // grad in memory order; ref copied into grad's strides where they differ
  const bias_act::View v = bias_act::memory_view(grad, dim, has_b);
  const at::Tensor& g = v.t;
  const bias_act::Layout& l = v.l;
  at::Tensor r;
  if (use_ref) {
    r = *ref_in;
    if (r.strides() != g.strides()) r = bias_act::empty_as(g).copy_(r);
  }
  const bool want_b = output_mask[1] && has_b;
  at::Tensor gx = output_mask[0] ? bias_act::empty_as(g) : at::empty({0}, grad.options());
  at::Tensor gb = want_b ? at::empty({l.channels}, b_in->options()) : at::empty({0}, grad.options());
  const int64_t numel = g.numel();
  if (numel == 0) {
    if (want_b) gb.zero_();
    return {gx, gb};
  }
  if (!output_mask[0] && !want_b) return {gx, gb};
  // swish adds b to the saved x; the others never read it
  const at::Tensor b = has_b && kind == bias_act::RefKind::kX ? b_in->contiguous() : at::Tensor();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t target = 4LL * num_sms();  // blocks that fill the GPU a few times over
  const auto acc = acc_scalar_type(g.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "bias_act_backward_cuda", [&] {
    using acc_t = acc_of_t<scalar_t>;
    constexpr int V = vec_of<scalar_t>();
    const auto p = make_params<acc_t>(alpha, gain, clamp, order);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* rp = ptr_or_null<scalar_t>(r);
    const scalar_t* bp = ptr_or_null<scalar_t>(b);
    scalar_t* gxp = output_mask[0] ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    at::Tensor partial;
    int64_t splits = 1, partial_inner = 1;
    if (l.inner >= kRowMin) {
      // rows: grid (channels, S)
      // wc warps across a row's chunks, wr across rows: about `target` blocks in all
      const int64_t chunk = static_cast<int64_t>(kWarp) * V * kChunkVecs;
      const int64_t max_warps = 65535LL * kWarps;
      const int64_t want = std::clamp<int64_t>(ceil_div(target, l.channels), 1, 65535) * kWarps;
      const int wc = static_cast<int>(std::min(ceil_div(l.inner, chunk), want));
      const int wr = static_cast<int>(std::clamp<int64_t>(ceil_div(want, wc), 1,
                                                          std::min(l.outer, max_warps / wc)));
      splits = ceil_div(static_cast<int64_t>(wr) * wc, kWarps);
      if (want_b) partial = at::empty({splits, l.channels}, g.options().dtype(acc));
      acc_t* pp = want_b ? partial.mutable_data_ptr<acc_t>() : nullptr;
      const bool vec = l.inner % V == 0 && aligned(gp, 16) && aligned(rp, 16) && aligned(gxp, 16);
      const dim3 grid(static_cast<unsigned>(l.channels), static_cast<unsigned>(splits));
      bias_act::dispatch_act(act, [&](auto a) {
        constexpr Act A = decltype(a)::value;
        if (vec) {
          backward_rows_kernel<A, scalar_t, true><<<grid, kThreads, 0, stream>>>(
              gp, rp, bp, gxp, pp, l.outer, l.channels, l.inner, wr, wc, p);
        } else {
          backward_rows_kernel<A, scalar_t, false><<<grid, kThreads, 0, stream>>>(
              gp, rp, bp, gxp, pp, l.outer, l.channels, l.inner, wr, wc, p);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    } else {
      // columns: outer rows of channels * inner columns
      const int64_t cols = l.channels * l.inner;
      int tx = 1;
      while (tx < kWarp && tx < cols) tx *= 2;
      const int ty = kThreads / tx;
      const int64_t bx = ceil_div(cols, tx);
      splits = std::clamp<int64_t>(ceil_div(target, bx), 1,
                                   std::min<int64_t>(ceil_div(l.outer, ty), 65535));
      partial_inner = l.inner;
      if (want_b) partial = at::empty({splits, cols}, g.options().dtype(acc));
      acc_t* pp = want_b ? partial.mutable_data_ptr<acc_t>() : nullptr;
      const dim3 grid(static_cast<unsigned>(bx), static_cast<unsigned>(splits));
      const dim3 block(tx, ty);
      bias_act::dispatch_act(act, [&](auto a) {
        constexpr Act A = decltype(a)::value;
        backward_cols_kernel<A, scalar_t><<<grid, block, 0, stream>>>(
            gp, rp, bp, gxp, pp, l.outer, cols, l.inner, p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    if (want_b) {
      grad_b_kernel<scalar_t, acc_t><<<static_cast<unsigned>(l.channels), kThreads, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), splits, l.channels, partial_inner,
          gb.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {gx, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("bias_act_forward", &bias_act_forward_cuda);
  m.impl("bias_act_backward", &bias_act_backward_cuda);
}

}  // namespace cuda
}  // namespace fastgan
