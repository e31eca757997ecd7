// Host-side helpers of the upfirdn2d op shared by its CPU and CUDA kernels: argument
// checks and the geometry of one call. Python-side checks with the same messages:
// fastgan/ops/upfirdn2d_reference.py.
//
// Per axis (x shown), with the filter window of output o starting at upsampled, padded
// position o * down: output o reads the upsampled input at u = o * down - pad0 + k for
// taps k in [0, taps), of which only u divisible by `up` are input pixels (u / up), and
// only those in [0, in) are not zero padding. The filter is applied as a convolution
// (flipped) unless flip_filter: tap k multiplies f[taps - 1 - k].
#pragma once

#include <ATen/ATen.h>

namespace fastgan {
namespace upfirdn2d {

struct Geometry {
  int64_t n, c, h, w;            // input
  int64_t oh, ow;                // output
  int64_t upx, upy, downx, downy;
  int64_t px0, px1, py0, py1;    // padding (negative crops)
  int64_t fh, fw;                // filter
};

// floor(a / b) for b > 0.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

inline Geometry check_and_geometry(const char* op, const at::Tensor& x, const at::Tensor& f,
                                   at::IntArrayRef up, at::IntArrayRef down,
                                   at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D of shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(f.dim() == 2 && f.size(0) >= 1 && f.size(1) >= 1, op,
              ": f must be a non-empty 2-D (fh, fw) filter, got shape ", f.sizes());
  TORCH_CHECK(at::isFloatingType(f.scalar_type()), op,
              ": f must be a floating-point tensor, got ", f.scalar_type());
  TORCH_CHECK(f.device() == x.device(), op, ": f is on ", f.device(), " but x is on ",
              x.device());
  TORCH_CHECK(up.size() == 2 && up[0] >= 1 && up[1] >= 1, op,
              ": up must be two ints >= 1 [x, y], got ", up);
  TORCH_CHECK(down.size() == 2 && down[0] >= 1 && down[1] >= 1, op,
              ": down must be two ints >= 1 [x, y], got ", down);
  TORCH_CHECK(padding.size() == 4, op, ": padding must be four ints [x0, x1, y0, y1], got ",
              padding);
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), 0, 0, up[0], up[1], down[0],
             down[1], padding[0], padding[1], padding[2], padding[3], f.size(0), f.size(1)};
  const int64_t ph = g.h * g.upy + g.py0 + g.py1;
  const int64_t pw = g.w * g.upx + g.px0 + g.px1;
  TORCH_CHECK(pw >= g.fw && ph >= g.fh, op, ": f (", g.fh, "x", g.fw,
              ") is larger than the upsampled, padded image (", ph, "x", pw, " from x ", g.h,
              "x", g.w, ", up=", up, ", padding=", padding, ")");
  g.oh = (ph - g.fh) / g.downy + 1;
  g.ow = (pw - g.fw) / g.downx + 1;
  return g;
}

}  // namespace upfirdn2d
}  // namespace fastgan
