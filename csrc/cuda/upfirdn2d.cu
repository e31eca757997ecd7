// CUDA kernels of the upfirdn2d op (schema and autograd in csrc/upfirdn2d.cpp, argument
// checks and geometry in csrc/upfirdn2d_checks.h).
//
// Polyphase gather, per axis (x shown): output o starts its filter window at upsampled
// position u = o * down - pad0; of the taps k in [0, fw) only those with u + k divisible
// by up land on input pixels, k = k0, k0 + up, ... with k0 = (-u) mod up, reading input
// column (u + k) / up (zero outside [0, w)). The filter is applied as a convolution: tap
// k multiplies f[fw - 1 - k], or f[k] with flip_filter. Sums in fp32 (fp64 for fp64 x),
// times gain.
//
// - NCHW ("tiled"): a block computes a tile_h x tile_w tile of output for one (n, c)
//   plane at a time (looping over planes): it stages the input window the tile reads
//   (zero where it lies outside the image) and the oriented filter in shared memory, then
//   each thread sums the taps of its outputs from shared memory with no bounds checks.
//   Compile-time variants for up == 2 / down == 1, up == 1 / down == 2 and up = down = 1
//   (both axes) with filters up to 4x4 or 8x8 unroll the tap loops; any other up, down
//   and filter size takes the generic variant.
// - channels_last, and NCHW where the tiled kernel does not pay (outputs smaller than a
//   tile) or its shared memory would not fit ("direct"): one thread per output element in
//   memory order, reading the input through the cache; in channels_last, neighbouring
//   threads are neighbouring channels, so each input read is coalesced.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "../common.h"
#include "../upfirdn2d_checks.h"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxSmem = 48 * 1024;  // no opt-in to larger dynamic shared memory

// The geometry as the kernels read it: sizes within a plane fit int (checked on the host).
struct Geo {
  int h, w, oh, ow;
  int upx, upy, downx, downy;
  int px0, py0;
  int fh, fw;
  int64_t c, planes;              // channels, n * c
  int64_t xs_n, xs_c, xs_h, xs_w;  // x strides
  int64_t ys_n, ys_c, ys_h, ys_w;  // y strides
};

__host__ __device__ __forceinline__ int floor_div_i(int a, int b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
__host__ __device__ __forceinline__ int ceil_div_i(int a, int b) { return -floor_div_i(-a, b); }
// a mod b in [0, b), b > 0.
__device__ __forceinline__ int pos_mod(int a, int b) {
  const int m = a % b;
  return m < 0 ? m + b : m;
}

// Index of tap (ky, kx) in f as stored: convolution order unless flip.
__device__ __forceinline__ int tap_index(int ky, int kx, int fh, int fw, bool flip) {
  return flip ? ky * fw + kx : (fh - 1 - ky) * fw + (fw - 1 - kx);
}

// ---------------------------------------------------------------------------
// Tiled NCHW kernel. UP, DOWN > 0: both axes use them (compile time) and the filter is at
// most KMAX x KMAX; UP == 0: everything from g at run time.
//
// Shared memory: the oriented filter (fh * fw) then the input window (in_h x in_w rows of
// in_w), in the compute type. The host sizes it for the largest window of a tile:
// ceil(((tile - 1) * down + taps) / up) per axis.

template <typename scalar_t, int UP, int DOWN, int KMAX>
__global__ void __launch_bounds__(kThreads)
    tiled_kernel(const scalar_t* __restrict__ x, const acc_of_t<scalar_t>* __restrict__ f,
                 scalar_t* __restrict__ y, Geo g, int tile_h, int tile_w, int tiles_x, bool flip,
                 acc_of_t<scalar_t> gain) {
  using acc_t = acc_of_t<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* filt = reinterpret_cast<acc_t*>(smem_raw);
  const int fh = g.fh, fw = g.fw;
  acc_t* tile = filt + fh * fw;
  const int upx = UP ? UP : g.upx, upy = UP ? UP : g.upy;
  const int downx = UP ? DOWN : g.downx, downy = UP ? DOWN : g.downy;

  for (int i = threadIdx.x; i < fh * fw; i += kThreads) {
    const int ky = i / fw, kx = i - ky * fw;
    filt[i] = f[tap_index(ky, kx, fh, fw, flip)];
  }
  // This tile's outputs and the input window they read.
  const int oy0 = static_cast<int>(blockIdx.x / tiles_x) * tile_h;
  const int ox0 = static_cast<int>(blockIdx.x % tiles_x) * tile_w;
  const int uy0 = oy0 * downy - g.py0, ux0 = ox0 * downx - g.px0;
  const int iy0 = ceil_div_i(uy0, upy), ix0 = ceil_div_i(ux0, upx);
  const int iy1 = floor_div_i(uy0 + (tile_h - 1) * downy + fh - 1, upy);
  const int ix1 = floor_div_i(ux0 + (tile_w - 1) * downx + fw - 1, upx);
  const int in_h = iy1 - iy0 + 1, in_w = ix1 - ix0 + 1;
  const int th = min(tile_h, g.oh - oy0), tw = min(tile_w, g.ow - ox0);  // outputs that exist

  for (int64_t plane = blockIdx.y; plane < g.planes; plane += gridDim.y) {
    const int64_t n = plane / g.c, c = plane - n * g.c;
    const scalar_t* xp = x + n * g.xs_n + c * g.xs_c;
    scalar_t* yp = y + n * g.ys_n + c * g.ys_c;
    __syncthreads();  // the previous plane's window is read (and the filter is stored)
    for (int i = threadIdx.x; i < in_h * in_w; i += kThreads) {
      const int r = i / in_w, q = i - r * in_w;
      const int iy = iy0 + r, ix = ix0 + q;
      tile[i] = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
                    ? static_cast<acc_t>(xp[iy * g.xs_h + ix * g.xs_w])
                    : acc_t(0);
    }
    __syncthreads();
    for (int p = threadIdx.x; p < th * tw; p += kThreads) {
      const int ty = p / tw, tx = p - ty * tw;
      const int oy = oy0 + ty, ox = ox0 + tx;
      const int uy = oy * downy - g.py0, ux = ox * downx - g.px0;
      const int ky0 = pos_mod(-uy, upy), kx0 = pos_mod(-ux, upx);
      const int ry = (uy + ky0) / upy - iy0, rx = (ux + kx0) / upx - ix0;  // exact divisions
      const acc_t* trow = tile + ry * in_w + rx;
      acc_t acc = 0;
      if constexpr (KMAX > 0) {
        constexpr int NY = (KMAX + UP - 1) / UP;  // taps per axis that can land on pixels
#pragma unroll
        for (int j = 0; j < NY; ++j) {
          const int ky = ky0 + j * UP;
          if (ky < fh) {
#pragma unroll
            for (int i = 0; i < NY; ++i) {
              const int kx = kx0 + i * UP;
              if (kx < fw) acc += trow[j * in_w + i] * filt[ky * fw + kx];
            }
          }
        }
      } else {
        for (int ky = ky0, j = 0; ky < fh; ky += upy, ++j) {
          const acc_t* tr = trow + j * in_w;
          const acc_t* fr = filt + ky * fw;
          for (int kx = kx0, i = 0; kx < fw; kx += upx, ++i) acc += tr[i] * fr[kx];
        }
      }
      yp[oy * g.ys_h + ox * g.ys_w] = static_cast<scalar_t>(acc * gain);
    }
  }
}

// ---------------------------------------------------------------------------
// Direct kernel: one output element per thread step, in y's memory order (channels last:
// c fastest; else x fastest). y is dense in that order.

template <typename scalar_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    direct_kernel(const scalar_t* __restrict__ x, const acc_of_t<scalar_t>* __restrict__ f,
                  scalar_t* __restrict__ y, Geo g, int64_t total, bool flip,
                  acc_of_t<scalar_t> gain) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    int64_t t = idx, n, c;
    int oy, ox;
    if constexpr (kChannelsLast) {
      c = t % g.c;
      t /= g.c;
      ox = static_cast<int>(t % g.ow);
      t /= g.ow;
      oy = static_cast<int>(t % g.oh);
      n = t / g.oh;
    } else {
      ox = static_cast<int>(t % g.ow);
      t /= g.ow;
      oy = static_cast<int>(t % g.oh);
      t /= g.oh;
      c = t % g.c;
      n = t / g.c;
    }
    const scalar_t* xp = x + n * g.xs_n + c * g.xs_c;
    const int uy = oy * g.downy - g.py0, ux = ox * g.downx - g.px0;
    const int ky0 = pos_mod(-uy, g.upy), kx0 = pos_mod(-ux, g.upx);
    const int iy0 = (uy + ky0) / g.upy, ix0 = (ux + kx0) / g.upx;
    acc_t acc = 0;
    for (int ky = ky0, iy = iy0; ky < g.fh; ky += g.upy, ++iy) {
      if (iy < 0 || iy >= g.h) continue;
      for (int kx = kx0, ix = ix0; kx < g.fw; kx += g.upx, ++ix) {
        if (ix < 0 || ix >= g.w) continue;
        acc += static_cast<acc_t>(xp[iy * g.xs_h + ix * g.xs_w]) *
               f[tap_index(ky, kx, g.fh, g.fw, flip)];
      }
    }
    y[idx] = static_cast<scalar_t>(acc * gain);
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

int pow2_at_least(int64_t v, int cap) {
  int p = 1;
  while (p < cap && p < v) p *= 2;
  return p;
}

// Shared memory of the tiled kernel for a tile of tile_h x tile_w outputs, in elements.
int64_t tiled_smem_elems(const upfirdn2d::Geometry& g, int tile_h, int tile_w) {
  const int64_t in_h = ((tile_h - 1) * g.downy + g.fh + g.upy - 1) / g.upy + 1;
  const int64_t in_w = ((tile_w - 1) * g.downx + g.fw + g.upx - 1) / g.upx + 1;
  return g.fh * g.fw + in_h * in_w;
}

template <typename scalar_t, int UP, int DOWN, int KMAX>
void launch_tiled(const at::Tensor& x, const at::Tensor& f, at::Tensor& y, const Geo& geo,
                  int tile_h, int tile_w, size_t smem, bool flip, double gain,
                  cudaStream_t stream) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t tiles_x = (geo.ow + tile_w - 1) / tile_w, tiles_y = (geo.oh + tile_h - 1) / tile_h;
  const dim3 grid(static_cast<unsigned>(tiles_x * tiles_y),
                  static_cast<unsigned>(std::min<int64_t>(geo.planes, 65535)));
  tiled_kernel<scalar_t, UP, DOWN, KMAX><<<grid, kThreads, smem, stream>>>(
      x.const_data_ptr<scalar_t>(), f.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>(),
      geo, tile_h, tile_w, static_cast<int>(tiles_x), flip, static_cast<acc_t>(gain));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor upfirdn2d_cuda(const at::Tensor& x_in, const at::Tensor& f_in, at::IntArrayRef up,
                          at::IntArrayRef down, at::IntArrayRef padding, bool flip_filter,
                          double gain) {
  constexpr const char* op = "fastgan::upfirdn2d";
  const upfirdn2d::Geometry g = upfirdn2d::check_and_geometry(op, x_in, f_in, up, down, padding);
  // Per-plane coordinates, taps and padded sizes in int.
  for (int64_t v : {g.h * g.upy + std::abs(g.py0) + std::abs(g.py1) + g.fh,
                    g.w * g.upx + std::abs(g.px0) + std::abs(g.px1) + g.fw, g.fh * g.fw,
                    g.oh * g.downy + g.fh, g.ow * g.downx + g.fw}) {
    TORCH_CHECK(v < INT_MAX / 2, op, ": image, filter or padding too large for the CUDA kernel");
  }
  c10::cuda::CUDAGuard guard(x_in.device());
  const bool cl = is_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor y = at::empty({g.n, g.c, g.oh, g.ow}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const auto acc = acc_scalar_type(x.scalar_type());
  const at::Tensor f = f_in.to(acc).contiguous();
  Geo geo{};
  geo.h = static_cast<int>(g.h);
  geo.w = static_cast<int>(g.w);
  geo.oh = static_cast<int>(g.oh);
  geo.ow = static_cast<int>(g.ow);
  geo.upx = static_cast<int>(g.upx);
  geo.upy = static_cast<int>(g.upy);
  geo.downx = static_cast<int>(g.downx);
  geo.downy = static_cast<int>(g.downy);
  geo.px0 = static_cast<int>(g.px0);
  geo.py0 = static_cast<int>(g.py0);
  geo.fh = static_cast<int>(g.fh);
  geo.fw = static_cast<int>(g.fw);
  geo.c = g.c;
  geo.planes = g.n * g.c;
  geo.xs_n = x.stride(0);
  geo.xs_c = x.stride(1);
  geo.xs_h = x.stride(2);
  geo.xs_w = x.stride(3);
  geo.ys_n = y.stride(0);
  geo.ys_c = y.stride(1);
  geo.ys_h = y.stride(2);
  geo.ys_w = y.stride(3);
  auto stream = c10::cuda::getCurrentCUDAStream();

  // The tiled kernel for NCHW when a tile is mostly used and its window fits.
  int tile_w = pow2_at_least(g.ow, 32);
  int tile_h = pow2_at_least(g.oh, 2 * kThreads / tile_w);
  while (tiled_smem_elems(g, tile_h, tile_w) * static_cast<int64_t>(at::elementSize(acc)) >
             kMaxSmem &&
         (tile_h > 1 || tile_w > 1)) {
    if (tile_h >= tile_w) tile_h /= 2; else tile_w /= 2;
  }
  const size_t smem = tiled_smem_elems(g, tile_h, tile_w) * at::elementSize(acc);
  const bool tiled = !cl && tile_h * tile_w >= kThreads && smem <= kMaxSmem;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "upfirdn2d_cuda", [&] {
    using acc_t = acc_of_t<scalar_t>;
    if (tiled) {
      const bool same = g.upx == g.upy && g.downx == g.downy;
      const int64_t k = std::max(g.fh, g.fw);
      auto go = [&](auto up_c, auto down_c) {
        constexpr int U = decltype(up_c)::value, D = decltype(down_c)::value;
        if (k <= 4) {
          launch_tiled<scalar_t, U, D, 4>(x, f, y, geo, tile_h, tile_w, smem, flip_filter, gain, stream);
        } else {
          launch_tiled<scalar_t, U, D, 8>(x, f, y, geo, tile_h, tile_w, smem, flip_filter, gain, stream);
        }
      };
      using I1 = std::integral_constant<int, 1>;
      using I2 = std::integral_constant<int, 2>;
      if (same && k <= 8 && g.upx == 2 && g.downx == 1) {
        go(I2{}, I1{});
      } else if (same && k <= 8 && g.upx == 1 && g.downx == 2) {
        go(I1{}, I2{});
      } else if (same && k <= 8 && g.upx == 1 && g.downx == 1) {
        go(I1{}, I1{});
      } else {
        launch_tiled<scalar_t, 0, 0, 0>(x, f, y, geo, tile_h, tile_w, smem, flip_filter, gain, stream);
      }
    } else {
      const int64_t total = y.numel();
      const int blocks = static_cast<int>(std::clamp<int64_t>((total + kThreads - 1) / kThreads, 1,
                                                              32LL * num_sms()));
      if (cl) {
        direct_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), f.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>(),
            geo, total, flip_filter, static_cast<acc_t>(gain));
      } else {
        direct_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), f.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>(),
            geo, total, flip_filter, static_cast<acc_t>(gain));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) { m.impl("upfirdn2d", &upfirdn2d_cuda); }

}  // namespace cuda
}  // namespace fastgan
