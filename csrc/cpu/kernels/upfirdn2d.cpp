// CPU kernel of the upfirdn2d op (schema and autograd in csrc/upfirdn2d.cpp, geometry in
// csrc/upfirdn2d_checks.h).
//
// Polyphase: an output reads only the taps that land on input pixels, never the zeros
// that upsampling inserts (the reference's zero-stuffed convolution multiplies those too:
// 4x the work for up=2 with a 4x4 filter). The filter is prepared once per call as
// w[ky][kx] = gain * f flipped (unless flip_filter), so out[oy][ox] = sum over taps of
// w[ky][kx] * upsampled_padded_x[oy * down_y + ky][ox * down_x + kx].
//
// NCHW: one (n, c) plane per task; an output row is accumulated in a row buffer, one
// valid filter row at a time, each a 1-D polyphase pass over one input row written as
// unit- or fixed-stride loops the compiler vectorises (up_x > 1: one contiguous buffer per
// output phase, interleaved at the end of the row). Both up and down > 1 on the x axis at
// once (rare) takes a plain per-output loop.
// channels_last: one output row of one image per task; each output pixel sums its taps
// over a vector of channels.
// bf16/fp16 are widened to float per plane (NCHW) or per load (channels_last); sums are
// in float (double for fp64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../../common.h"
#include "../../upfirdn2d_checks.h"
#include "kernels.h"
#include "vec_io.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using upfirdn2d::floor_div;
using upfirdn2d::Geometry;

constexpr int64_t kGrain = 16384;  // output elements per parallel task, at least

// gain * f, flipped unless flip_filter, as (fh, fw) values of acc_t.
template <typename acc_t>
std::vector<acc_t> prepare_filter(const at::Tensor& f, bool flip_filter, double gain) {
  const at::Tensor fc = f.to(at::kDouble).contiguous();
  const double* fp = fc.const_data_ptr<double>();
  const int64_t fh = f.size(0), fw = f.size(1);
  std::vector<acc_t> w(fh * fw);
  for (int64_t ky = 0; ky < fh; ++ky)
    for (int64_t kx = 0; kx < fw; ++kx) {
      const int64_t src = flip_filter ? ky * fw + kx : (fh - 1 - ky) * fw + (fw - 1 - kx);
      w[ky * fw + kx] = static_cast<acc_t>(fp[src] * gain);
    }
  return w;
}

// acc[ox] += sum_kx w[kx] * (upsampled, padded row)[ox * down + kx] for one input row
// `in` of `width` pixels; acc has `ow` entries. `phase` is scratch of at least ow + up.
template <typename acc_t>
void row_pass(acc_t* __restrict acc, const acc_t* __restrict in, int64_t width, int64_t ow,
              const acc_t* w, int64_t fw, int64_t up, int64_t down, int64_t pad0,
              acc_t* __restrict phase) {
  if (up == 1) {
    for (int64_t kx = 0; kx < fw; ++kx) {
      const acc_t wk = w[kx];
      const int64_t off = kx - pad0;  // input index of output 0
      // outputs whose input index ox * down + off lies in [0, width)
      const int64_t lo = std::max<int64_t>(0, floor_div(-off + down - 1, down));
      const int64_t hi = std::min<int64_t>(ow, floor_div(width - 1 - off, down) + 1);
      if (down == 1) {
        const acc_t* src = in + off;
        for (int64_t ox = lo; ox < hi; ++ox) acc[ox] += wk * src[ox];
      } else if (down == 2) {
        const acc_t* src = in + off;
        for (int64_t ox = lo; ox < hi; ++ox) acc[ox] += wk * src[2 * ox];
      } else {
        for (int64_t ox = lo; ox < hi; ++ox) acc[ox] += wk * in[ox * down + off];
      }
    }
    return;
  }
  if (down == 1) {
    // output ox = j + up * m reads input m + c for the taps kx of phase j
    for (int64_t j = 0; j < std::min(up, ow); ++j) {
      const int64_t count = (ow - j + up - 1) / up;  // outputs of phase j
      std::fill(phase, phase + count, acc_t(0));
      for (int64_t kx = 0; kx < fw; ++kx) {
        const int64_t q = j - pad0 + kx;
        if (((q % up) + up) % up != 0) continue;
        const int64_t c = floor_div(q, up);
        const acc_t wk = w[kx];
        const int64_t lo = std::max<int64_t>(0, -c);
        const int64_t hi = std::min<int64_t>(count, width - c);
        const acc_t* src = in + c;
        for (int64_t m = lo; m < hi; ++m) phase[m] += wk * src[m];
      }
      for (int64_t m = 0; m < count; ++m) acc[j + up * m] += phase[m];
    }
    return;
  }
  for (int64_t ox = 0; ox < ow; ++ox) {  // up > 1 and down > 1
    const int64_t s = ox * down - pad0;
    acc_t sum = acc_t(0);
    for (int64_t kx = 0; kx < fw; ++kx) {
      const int64_t u = s + kx;
      if (u < 0 || u % up != 0 || u / up >= width) continue;
      sum += w[kx] * in[u / up];
    }
    acc[ox] += sum;
  }
}

// Valid filter rows of output row oy: calls f(ky, iy).
template <typename F>
inline void for_rows(const Geometry& g, int64_t oy, const F& f) {
  const int64_t s = oy * g.downy - g.py0;
  for (int64_t ky = 0; ky < g.fh; ++ky) {
    const int64_t u = s + ky;
    if (u < 0 || u % g.upy != 0 || u / g.upy >= g.h) continue;
    f(ky, u / g.upy);
  }
}

template <typename scalar_t>
void nchw(const at::Tensor& x, at::Tensor& y, const Geometry& g, const std::vector<acc_of_t<scalar_t>>& w) {
  using acc_t = acc_of_t<scalar_t>;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t planes = g.n * g.c, in_plane = g.h * g.w, out_plane = g.oh * g.ow;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(out_plane, 1));
  at::parallel_for(0, planes, grain, [&](int64_t first, int64_t last) {
    std::vector<acc_t> row(g.ow), phase(g.ow + g.upx);
    std::vector<acc_t> widened(std::is_same_v<scalar_t, acc_t> ? 0 : in_plane);
    for (int64_t p = first; p < last; ++p) {
      const acc_t* in;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        in = xp + p * in_plane;
      } else {
        const scalar_t* src = xp + p * in_plane;
        for (int64_t i = 0; i < in_plane; ++i) widened[i] = static_cast<acc_t>(src[i]);
        in = widened.data();
      }
      scalar_t* out = yp + p * out_plane;
      for (int64_t oy = 0; oy < g.oh; ++oy) {
        std::fill(row.begin(), row.end(), acc_t(0));
        for_rows(g, oy, [&](int64_t ky, int64_t iy) {
          row_pass(row.data(), in + iy * g.w, g.w, g.ow, w.data() + ky * g.fw, g.fw, g.upx,
                   g.downx, g.px0, phase.data());
        });
        scalar_t* dst = out + oy * g.ow;
        for (int64_t ox = 0; ox < g.ow; ++ox) dst[ox] = static_cast<scalar_t>(row[ox]);
      }
    }
  });
}

template <typename scalar_t>
void channels_last(const at::Tensor& x, at::Tensor& y, const Geometry& g,
                   const std::vector<acc_of_t<scalar_t>>& w) {
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  using acc_t = typename IO::acc_t;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t C = g.c;
  const int64_t rows = g.n * g.oh;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(g.ow * C, 1));
  at::parallel_for(0, rows, grain, [&](int64_t first, int64_t last) {
    std::vector<std::pair<int64_t, acc_t>> taps;  // (input pixel offset, weight)
    std::vector<std::pair<int64_t, int64_t>> ys;  // (ky, iy)
    for (int64_t r = first; r < last; ++r) {
      const int64_t n = r / g.oh, oy = r % g.oh;
      ys.clear();
      for_rows(g, oy, [&](int64_t ky, int64_t iy) { ys.emplace_back(ky, iy); });
      const scalar_t* img = xp + n * g.h * g.w * C;
      scalar_t* out = yp + (n * g.oh + oy) * g.ow * C;
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        taps.clear();
        const int64_t s = ox * g.downx - g.px0;
        for (const auto& [ky, iy] : ys)
          for (int64_t kx = 0; kx < g.fw; ++kx) {
            const int64_t u = s + kx;
            if (u < 0 || u % g.upx != 0 || u / g.upx >= g.w) continue;
            taps.emplace_back((iy * g.w + u / g.upx) * C, w[ky * g.fw + kx]);
          }
        scalar_t* dst = out + ox * C;
        for (int64_t c = 0; c < C; c += IO::kSize) {
          const int64_t width = std::min<int64_t>(IO::kSize, C - c);
          Vec acc(acc_t(0));
          for (const auto& [off, wk] : taps) {
            const Vec v = width == IO::kSize ? IO::load(img + off + c) : IO::load(img + off + c, width);
            acc = at::vec::fmadd(Vec(wk), v, acc);
          }
          if (width == IO::kSize) {
            IO::store(dst + c, acc);
          } else {
            IO::store(dst + c, acc, width);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, at::IntArrayRef up,
                     at::IntArrayRef down, at::IntArrayRef padding, bool flip_filter,
                     double gain) {
  const Geometry g = upfirdn2d::check_and_geometry("fastgan::upfirdn2d", x, f, up, down, padding);
  const bool cl = is_channels_last(x);
  const at::Tensor xc = cl ? x : x.contiguous();
  at::Tensor y = at::empty({g.n, g.c, g.oh, g.ow}, x.options().memory_format(
                                                       cl ? at::MemoryFormat::ChannelsLast
                                                          : at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d", [&] {
    const auto w = prepare_filter<acc_of_t<scalar_t>>(f, flip_filter, gain);
    if (cl) {
      channels_last<scalar_t>(xc, y, g, w);
    } else {
      nchw<scalar_t>(xc, y, g, w);
    }
  });
  return y;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
