// CPU kernel of the upfirdn2d op (schema and autograd in csrc/upfirdn2d.cpp, geometry in
// csrc/upfirdn2d_checks.h).
//
// Polyphase: an output reads only the taps that land on input pixels, never the zeros
// that upsampling inserts (the reference's zero-stuffed convolution multiplies those too:
// 4x the work for up=2 with a 4x4 filter). The filter is prepared once per call as
// w[ky][kx] = gain * f flipped (unless flip_filter), so out[oy][ox] = sum over taps of
// w[ky][kx] * upsampled_padded_x[oy * down_y + ky][ox * down_x + kx].
//
// NCHW: one (n, c) plane per task, following a plan of the taps worked out once per call
// (Plan). An output row (per output phase when upsampling along x, interleaved at the end)
// is one sum over (valid filter row, tap) terms, computed in vectors of outputs with one
// load and FMA per term (sum_terms); both up and down along x (rare) add runs one at a
// time.
// channels_last: one output row of one image per task; each output pixel sums its taps
// over a vector of channels (from 8 channels: fewer, e.g. RGB, run the planar kernel on a
// contiguous copy).
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

// The taps of one call, worked out once (integer division is the costliest part of
// the index arithmetic, and it is the same for every plane and row):
//  - along y, per output row, the filter rows that land on input rows (ky, iy);
//  - along x, runs: acc[base + m] += w[ky][kx] * in_row[src + m * step] for m in [lo, hi).
//    No upsampling along x: one run per tap kx, step = down. Upsampling (down 1): output
//    ox = j + up * m of phase j reads input m + c for each tap whose (j - pad0 + kx) is
//    divisible by up; runs write to per-phase buffers (base = j * stride, step 1) that
//    are interleaved once the row is done. Both along x (rare): one-element runs.
struct XRun {
  int64_t kx, base, src, step, lo, hi;
};

struct Plan {
  std::vector<int64_t> row_start;            // rows[row_start[oy] .. row_start[oy + 1])
  std::vector<std::pair<int64_t, int64_t>> rows;  // (ky, iy)
  std::vector<XRun> runs;
  bool phased = false;  // up along x, down 1: per-phase buffers
  int64_t stride = 0;   // per-phase buffer length
};

Plan make_plan(const Geometry& g) {
  Plan p;
  p.row_start.push_back(0);
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    const int64_t s = oy * g.downy - g.py0;
    for (int64_t ky = 0; ky < g.fh; ++ky) {
      const int64_t u = s + ky;
      if (u >= 0 && u % g.upy == 0 && u / g.upy < g.h) p.rows.emplace_back(ky, u / g.upy);
    }
    p.row_start.push_back(static_cast<int64_t>(p.rows.size()));
  }
  if (g.upx == 1) {
    for (int64_t kx = 0; kx < g.fw; ++kx) {
      const int64_t off = kx - g.px0;  // input index of output 0
      // outputs whose input index ox * down + off lies in [0, w)
      const int64_t lo = std::max<int64_t>(0, floor_div(-off + g.downx - 1, g.downx));
      const int64_t hi = std::min<int64_t>(g.ow, floor_div(g.w - 1 - off, g.downx) + 1);
      if (lo < hi) p.runs.push_back({kx, 0, off, g.downx, lo, hi});
    }
  } else if (g.downx == 1) {
    p.phased = true;
    p.stride = (g.ow + g.upx - 1) / g.upx;
    for (int64_t j = 0; j < std::min(g.upx, g.ow); ++j) {
      const int64_t count = (g.ow - j + g.upx - 1) / g.upx;  // outputs of phase j
      for (int64_t kx = 0; kx < g.fw; ++kx) {
        const int64_t q = j - g.px0 + kx;
        if (((q % g.upx) + g.upx) % g.upx != 0) continue;
        const int64_t c = floor_div(q, g.upx);
        const int64_t lo = std::max<int64_t>(0, -c), hi = std::min<int64_t>(count, g.w - c);
        if (lo < hi) p.runs.push_back({kx, j * p.stride, c, 1, lo, hi});
      }
    }
  } else {
    for (int64_t ox = 0; ox < g.ow; ++ox)
      for (int64_t kx = 0; kx < g.fw; ++kx) {
        const int64_t u = ox * g.downx - g.px0 + kx;
        if (u >= 0 && u % g.upx == 0 && u / g.upx < g.w) {
          p.runs.push_back({kx, 0, u / g.upx, 0, ox, ox + 1});
        }
      }
  }
  return p;
}

// One run of the x pass (see XRun).
template <typename acc_t>
inline void run_x(acc_t* __restrict acc, const acc_t* __restrict in, acc_t wk, const XRun& r) {
  acc_t* __restrict dst = acc + r.base;
  const acc_t* src = in + r.src;
  if (r.step == 1) {
    for (int64_t m = r.lo; m < r.hi; ++m) dst[m] += wk * src[m];
  } else if (r.step == 2) {
    for (int64_t m = r.lo; m < r.hi; ++m) dst[m] += wk * src[2 * m];
  } else {
    for (int64_t m = r.lo; m < r.hi; ++m) dst[m] += wk * src[m * r.step];
  }
}

// out[j + up * m] = phase[j * stride + m], converted to the storage type.
template <typename scalar_t, typename acc_t>
void interleave(scalar_t* __restrict out, const acc_t* __restrict phase, int64_t stride,
                int64_t ow, int64_t up) {
  if (up == 2) {
    const acc_t* p0 = phase;
    const acc_t* p1 = phase + stride;
    const int64_t pairs = ow / 2;
    for (int64_t m = 0; m < pairs; ++m) {
      out[2 * m] = static_cast<scalar_t>(p0[m]);
      out[2 * m + 1] = static_cast<scalar_t>(p1[m]);
    }
    if (ow % 2) out[ow - 1] = static_cast<scalar_t>(p0[pairs]);
    return;
  }
  for (int64_t j = 0; j < std::min(up, ow); ++j) {
    const acc_t* pj = phase + j * stride;
    for (int64_t ox = j, m = 0; ox < ow; ox += up, ++m) out[ox] = static_cast<scalar_t>(pj[m]);
  }
}

// One term of an output row's sum: out[m] += w * in_plane[off + m * step], m in [lo, hi).
template <typename acc_t>
struct Term {
  int64_t off;
  acc_t w;
  int64_t lo, hi;
};

// An output row of one phase: dst = acc + base, `count` outputs, the terms [t0, t1), all
// valid on [lo, hi).
struct Group {
  int64_t base, count, lo, hi, t0, t1;
};

// dst[m] = the sum of the terms at m, for m in [0, count); every term has stride `step`.
// Where all terms are valid (nearly all of the row) in vectors of m, one load and one FMA
// per term (step 2: two loads deinterleaved), the last vector partial; at the edges, per
// element.
template <typename acc_t>
void sum_terms(acc_t* __restrict dst, const acc_t* in, const Group& gr,
               const Term<acc_t>* terms, int64_t step) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t K = Vec::size();
  const Term<acc_t>* t0 = terms + gr.t0;
  const Term<acc_t>* t1 = terms + gr.t1;
  auto scalar = [&](int64_t m) {
    acc_t sum = acc_t(0);
    for (const auto* t = t0; t != t1; ++t)
      if (m >= t->lo && m < t->hi) sum += t->w * in[t->off + m * step];
    dst[m] = sum;
  };
  int64_t m = 0;
  for (; m < std::min(gr.lo, gr.count); ++m) scalar(m);
  if (step == 1 || step == 2) {
    // full vectors, then one partial vector (loads and stores of n lanes read and write
    // n elements only: step 2 reads the 2n - 1 elements up to the last even one)
    for (; m < gr.hi; m += K) {
      const int64_t n = std::min(K, gr.hi - m);
      Vec acc(acc_t(0));
      for (const auto* t = t0; t != t1; ++t) {
        const acc_t* src = in + t->off;
        Vec v;
        if (step == 1) {
          v = n == K ? Vec::loadu(src + m) : Vec::loadu(src + m, n);
        } else {
          const int64_t e = 2 * n - 1;  // elements to read
          const Vec a = e >= K ? Vec::loadu(src + 2 * m) : Vec::loadu(src + 2 * m, e);
          const Vec b = e > K ? Vec::loadu(src + 2 * m + K, e - K) : Vec(acc_t(0));
          v = std::get<0>(at::vec::deinterleave2(a, b));
        }
        acc = at::vec::fmadd(Vec(t->w), v, acc);
      }
      if (n == K) {
        acc.store(dst + m);
      } else {
        acc.store(dst + m, n);
      }
    }
    m = std::min(m, std::max<int64_t>(gr.hi, 0));  // the partial vector stopped at hi
  }
  for (; m < gr.count; ++m) scalar(m);
}

template <typename scalar_t>
void nchw(const at::Tensor& x, at::Tensor& y, const Geometry& g,
          const std::vector<acc_of_t<scalar_t>>& w) {
  using acc_t = acc_of_t<scalar_t>;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t planes = g.n * g.c, in_plane = g.h * g.w, out_plane = g.oh * g.ow;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(out_plane, 1));
  const Plan plan = make_plan(g);
  // up or down along x (not both): each output row (per phase) is one sum of terms
  // (filter rows x taps), the same for every plane, so worked out here; otherwise runs
  // are added one at a time
  const bool grouped = g.upx == 1 || g.downx == 1;
  const int64_t phases = plan.phased ? std::min(g.upx, g.ow) : 1;
  const int64_t step = plan.phased ? 1 : g.downx;
  std::vector<Term<acc_t>> terms;
  std::vector<Group> groups;  // phases per output row
  if (grouped) {
    for (int64_t oy = 0; oy < g.oh; ++oy)
      for (int64_t j = 0; j < phases; ++j) {
        Group gr{j * plan.stride, plan.phased ? (g.ow - j + g.upx - 1) / g.upx : g.ow, 0, 0,
                 static_cast<int64_t>(terms.size()), 0};
        gr.hi = gr.count;
        for (int64_t i = plan.row_start[oy]; i < plan.row_start[oy + 1]; ++i) {
          const auto [ky, iy] = plan.rows[i];
          for (const XRun& r : plan.runs)
            if (r.base == gr.base) {
              terms.push_back({iy * g.w + r.src, w[ky * g.fw + r.kx], r.lo, r.hi});
              gr.lo = std::max(gr.lo, r.lo);
              gr.hi = std::min(gr.hi, r.hi);
            }
        }
        gr.t1 = static_cast<int64_t>(terms.size());
        groups.push_back(gr);
      }
  }
  at::parallel_for(0, planes, grain, [&](int64_t first, int64_t last) {
    std::vector<acc_t> acc(plan.phased ? plan.stride * g.upx : g.ow);
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
        if (grouped) {
          for (int64_t j = 0; j < phases; ++j) {
            const Group& gr = groups[oy * phases + j];
            sum_terms(acc.data() + gr.base, in, gr, terms.data(), step);
          }
        } else {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t i = plan.row_start[oy]; i < plan.row_start[oy + 1]; ++i) {
            const auto [ky, iy] = plan.rows[i];
            const acc_t* wk = w.data() + ky * g.fw;
            for (const XRun& r : plan.runs) run_x(acc.data(), in + iy * g.w, wk[r.kx], r);
          }
        }
        scalar_t* dst = out + oy * g.ow;
        if (plan.phased) {
          interleave(dst, acc.data(), plan.stride, g.ow, g.upx);
        } else {
          for (int64_t ox = 0; ox < g.ow; ++ox) dst[ox] = static_cast<scalar_t>(acc[ox]);
        }
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
  const Plan plan = make_plan(g);
  // along x, per output column: the taps (kx, ix) that land on input pixels, worked out
  // once per call (no division per pixel)
  std::vector<int64_t> xstart{0};
  std::vector<std::pair<int64_t, int64_t>> xtaps;
  for (int64_t ox = 0; ox < g.ow; ++ox) {
    for (int64_t kx = 0; kx < g.fw; ++kx) {
      const int64_t u = ox * g.downx - g.px0 + kx;
      if (u >= 0 && u % g.upx == 0 && u / g.upx < g.w) xtaps.emplace_back(kx, u / g.upx);
    }
    xstart.push_back(static_cast<int64_t>(xtaps.size()));
  }
  at::parallel_for(0, rows, grain, [&](int64_t first, int64_t last) {
    std::vector<std::pair<int64_t, acc_t>> taps;  // (input pixel offset, weight)
    for (int64_t r = first; r < last; ++r) {
      const int64_t n = r / g.oh, oy = r % g.oh;
      const auto* ys_begin = plan.rows.data() + plan.row_start[oy];
      const auto* ys_end = plan.rows.data() + plan.row_start[oy + 1];
      const scalar_t* img = xp + n * g.h * g.w * C;
      scalar_t* out = yp + (n * g.oh + oy) * g.ow * C;
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        taps.clear();
        for (const auto* yi = ys_begin; yi != ys_end; ++yi)
          for (int64_t t = xstart[ox]; t < xstart[ox + 1]; ++t) {
            const auto [ky, iy] = *yi;
            const auto [kx, ix] = xtaps[t];
            taps.emplace_back((iy * g.w + ix) * C, w[ky * g.fw + kx]);
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
  // channels_last is vectorised over C: below a vector of channels (RGB images), the
  // planar kernel on a contiguous copy is faster; the output keeps x's format either way
  const bool cl_kernel = cl && g.c >= 8;
  const at::Tensor xc = cl_kernel ? x : x.contiguous();
  at::Tensor y = at::empty({g.n, g.c, g.oh, g.ow}, x.options().memory_format(
                                                       cl_kernel ? at::MemoryFormat::ChannelsLast
                                                                 : at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return cl ? y.contiguous(at::MemoryFormat::ChannelsLast) : y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d", [&] {
    const auto w = prepare_filter<acc_of_t<scalar_t>>(f, flip_filter, gain);
    if (cl_kernel) {
      channels_last<scalar_t>(xc, y, g, w);
    } else {
      nchw<scalar_t>(xc, y, g, w);
    }
  });
  return cl && !cl_kernel ? y.contiguous(at::MemoryFormat::ChannelsLast) : y;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
