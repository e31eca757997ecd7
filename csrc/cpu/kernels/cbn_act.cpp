// CPU kernels of the fused conditional BatchNorm2d + LeakyReLU op (schemas in
// csrc/cbn_act.cpp, math in csrc/cbn_act_math.h): bn_act's kernels with the affine taken
// per (sample, channel). They reuse bn_act's runs, cache blocking and block merges
// (bn_act_common.h); what differs is that the folded affine z = x * A + B is a table of
// N x C entries, and that backward reduces per (n, c) plane: grad_scale and grad_shift
// are those sums, and the per-channel sums of the training-mode input gradient are
// weighted sums of them over n (no second reduction pass).
//
// Layouts: NCHW-contiguous (cache-blocked groups of channels, as bn_act_nchw.cpp) and
// channels_last (blocks of rows vectorised over channels, as bn_act_nhwc.cpp; fewer
// channels than a vector take partial-width vectors) are read in place; anything else
// is made contiguous first. Partials are merged in a fixed order (planes n = 0..N-1,
// blocks in row order), so results do not depend on the thread count.
#include <ATen/Dispatch.h>

#include "../../cbn_act_checks.h"
#include "../../cbn_act_math.h"
#include "bn_act_common.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// One call as the kernels see it; per-(n, c) tables are (N, C) row-major in acc_t.
template <typename acc_t>
struct Call {
  int64_t N, C, HW;
  bool channels_last, training;
  acc_t slope;
  std::vector<acc_t> sc, sh;  // scale, shift
  std::vector<acc_t> invstd;  // (C)
  std::vector<acc_t> A, B;    // folded: z = x * A[n,c] + B[n,c]

  Call(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, bool training_,
       double slope_)
      : N(x.size(0)), C(x.size(1)), HW(x.size(2) * x.size(3)),
        channels_last(is_channels_last(x)), training(training_),
        slope(static_cast<acc_t>(slope_)), sc(table(scale)), sh(table(shift)), invstd(C),
        A(N * C), B(N * C) {}

  // invstd and the folded affine of channel c, from its statistics.
  void fold(int64_t c, acc_t mean, acc_t var, double eps) {
    invstd[c] = cbn_act::inv_std<acc_t>(var, static_cast<acc_t>(eps));
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = n * C + c;
      cbn_act::fold_affine<acc_t>(mean, invstd[c], sc[i], sh[i], A[i], B[i]);
    }
  }

 private:
  static std::vector<acc_t> table(const at::Tensor& t) {
    const auto v = t.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    return std::vector<acc_t>(v.template const_data_ptr<acc_t>(),
                              v.template const_data_ptr<acc_t>() + v.numel());
  }
};

inline int64_t block_rows(int64_t R, int64_t C) {
  return std::max<int64_t>(1, std::min(R, kBlockElems / C));
}

// ---------------------------------------------------------------------------
// Forward.

template <typename scalar_t>
class Forward {
  using acc_t = acc_of_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;

 public:
  Forward(Call<acc_t>& k, const at::Tensor& x, at::Tensor& y, at::Tensor& mean, at::Tensor& var,
          double eps)
      : k_(k), x_(x.const_data_ptr<scalar_t>()), y_(y.mutable_data_ptr<scalar_t>()),
        mean_(mean.mutable_data_ptr<acc_t>()), var_(var.mutable_data_ptr<acc_t>()), eps_(eps),
        nbytes_(x.nbytes()) {}

  void run() { k_.channels_last ? nhwc() : nchw(); }

 private:
  // NCHW: per group of channels, the statistics of its planes, then the planes
  // normalised while cached; a channel too large for the cache streams over all planes.
  void nchw() {
    const int64_t N = k_.N, C = k_.C, HW = k_.HW;
    const bool stream = nbytes_ >= kStreamBytes;
    auto apply_plane = [&](int64_t q) {
      run_apply<scalar_t, acc_t>(x_ + q * HW, y_ + q * HW, HW, k_.A[q], k_.B[q], k_.slope,
                                 stream);
    };
    std::vector<Moments<double>> planes(k_.training ? N * C : 0);
    auto finish = [&](int64_t c) {
      if (k_.training) {
        double m = 0, m2 = 0;
        int64_t cnt = 0;
        for (int64_t n = 0; n < N; ++n) {
          const auto& p = planes[n * C + c];
          merge_moments(m, m2, cnt, p.mean, p.m2, p.count);
        }
        mean_[c] = static_cast<acc_t>(m);
        var_[c] = static_cast<acc_t>(m2 / static_cast<double>(cnt));
      }
      k_.fold(c, mean_[c], var_[c], eps_);
    };
    const int64_t G = cache_group(N, C, HW, 2 * sizeof(scalar_t));
    if (G > 0) {
      at::parallel_for(0, C, G, [&](int64_t c0, int64_t c1) {
        for (int64_t g0 = c0; g0 < c1; g0 += G) {
          const int64_t g1 = std::min(c1, g0 + G);
          for (int64_t n = 0; k_.training && n < N; ++n) {
            for (int64_t c = g0; c < g1; ++c) {
              planes[n * C + c] = plane_moments(x_ + (n * C + c) * HW, HW);
            }
          }
          for (int64_t c = g0; c < g1; ++c) finish(c);
          for (int64_t n = 0; n < N; ++n) {
            for (int64_t c = g0; c < g1; ++c) apply_plane(n * C + c);
          }
        }
        if (stream) stream_fence();
      });
      return;
    }
    const int64_t P = N * C, grain = plane_grain(HW);
    if (k_.training) {
      at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
        for (int64_t q = p0; q < p1; ++q) planes[q] = plane_moments(x_ + q * HW, HW);
      });
    }
    for (int64_t c = 0; c < C; ++c) finish(c);
    at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) apply_plane(q);
      if (stream) stream_fence();
    });
  }

  // Channels_last: statistics from blocks of rows merged in order (bn_act_nhwc.cpp's
  // walk), then rows normalised, vectorised over the channels.
  void nhwc() {
    const int64_t C = k_.C, R = k_.N * k_.HW;
    if (k_.training) {
      const int64_t Bk = block_rows(R, C), nblk = (R + Bk - 1) / Bk;
      std::vector<acc_t> bmean(nblk * C), bm2(nblk * C);
      at::parallel_for(0, nblk, serial_if_small(R * C, nblk, 1), [&](int64_t b0, int64_t b1) {
        for (int64_t blk = b0; blk < b1; ++blk) {
          block_moments(blk * Bk, std::min(R, (blk + 1) * Bk), bmean.data() + blk * C,
                        bm2.data() + blk * C);
        }
      });
      merge_blocks<acc_t>(bmean, bm2, nblk, Bk, R, C, mean_, var_);
    }
    for (int64_t c = 0; c < C; ++c) k_.fold(c, mean_[c], var_[c], eps_);
    const int64_t grain = std::max<int64_t>(1, kBlockElems / C);
    if (stream_rows(y_, C, nbytes_)) {
      at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
        apply_rows<true>(r0, r1);
        stream_fence();
      });
    } else {
      at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) { apply_rows<false>(r0, r1); });
    }
  }

  // Per-channel mean and M2 of rows [r0, r1), shifted by the first row.
  void block_moments(int64_t r0, int64_t r1, acc_t* bm, acc_t* bq) const {
    const scalar_t* x = x_;
    const int64_t C = k_.C;
    const Vec inv_rows(acc_t(1) / static_cast<acc_t>(r1 - r0));
    for_channel_vectors<scalar_t>(C, [&](int64_t c, auto width) {
      const scalar_t* col = x + c;
      const Vec pivot = width.load(col + r0 * C);
      Vec s(acc_t(0));
      for (int64_t r = r0; r < r1; ++r) s += width.load(col + r * C) - pivot;
      const Vec vm = at::vec::fmadd(s, inv_rows, pivot);
      Vec q(acc_t(0));
      for (int64_t r = r0; r < r1; ++r) {
        const Vec d = width.load(col + r * C) - vm;
        q = at::vec::fmadd(d, d, q);
      }
      width.store_acc(bm + c, vm);
      width.store_acc(bq + c, q);
    });
  }

  template <bool Stream>
  void apply_rows(int64_t r0, int64_t r1) const {
    const int64_t C = k_.C, HW = k_.HW;
    const Vec vslope(k_.slope);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / HW;
      const acc_t *A = k_.A.data() + n * C, *B = k_.B.data() + n * C;
      const scalar_t* xr = x_ + r * C;
      scalar_t* yr = y_ + r * C;
      for_channel_vectors<scalar_t, Stream>(C, [&](int64_t c, auto width) {
        const Vec z = at::vec::fmadd(width.load(xr + c), width.load_acc(A + c),
                                     width.load_acc(B + c));
        width.store(yr + c, leaky_vec<acc_t>(z, vslope));
      });
    }
  }

  Call<acc_t>& k_;
  const scalar_t* x_;
  scalar_t* y_;
  acc_t* mean_;
  acc_t* var_;
  const double eps_;
  const int64_t nbytes_;
};

// ---------------------------------------------------------------------------
// Backward: per (n, c) sums S1 = sum(dz), S2 = sum(dz * (x - mean)) (double), then the
// per-channel coefficients, then dx.

template <typename scalar_t>
class Backward {
  using acc_t = acc_of_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;

 public:
  Backward(Call<acc_t>& k, const at::Tensor& dy, const at::Tensor& x, at::Tensor* dx,
           const at::Tensor& mean, const at::Tensor& var, double eps, double* s1, double* s2)
      : k_(k), dy_(dy.const_data_ptr<scalar_t>()), x_(x.const_data_ptr<scalar_t>()),
        dx_(dx ? dx->mutable_data_ptr<scalar_t>() : nullptr), mean_(mean.const_data_ptr<acc_t>()),
        s1_(s1), s2_(s2), nbytes_(x.nbytes()), gain_(k.C), proj_(k.C), mdz_(k.C) {
    const acc_t* v = var.const_data_ptr<acc_t>();
    for (int64_t c = 0; c < k_.C; ++c) k_.fold(c, mean_[c], v[c], eps);
  }

  void run() { k_.channels_last ? nhwc() : nchw(); }

 private:
  // T1 = sum_n scale * S1, T2 = sum_n scale * S2 (in order), then the coefficients.
  void finish(int64_t c) {
    double t1 = 0, t2 = 0;
    for (int64_t n = 0; n < k_.N; ++n) {
      const int64_t i = n * k_.C + c;
      t1 += static_cast<double>(k_.sc[i]) * s1_[i];
      t2 += static_cast<double>(k_.sc[i]) * s2_[i];
    }
    const auto g = cbn_act::grad_coeffs<acc_t>(k_.training, k_.invstd[c], static_cast<acc_t>(t1),
                                               static_cast<acc_t>(t2), k_.N * k_.HW);
    gain_[c] = g.gain;
    proj_[c] = g.proj;
    mdz_[c] = g.mean_dz;
  }

  void nchw() {
    const int64_t N = k_.N, C = k_.C, HW = k_.HW;
    const bool stream = nbytes_ >= kStreamBytes;
    auto sums = [&](int64_t q) {
      const int64_t c = q % C;
      double s = 0, sx = 0;
      for (int64_t off = 0; off < HW; off += kChunk) {
        run_grad_sums<scalar_t, acc_t>(dy_ + q * HW + off, x_ + q * HW + off,
                                       std::min(kChunk, HW - off), k_.A[q], k_.B[q], k_.slope,
                                       mean_[c], s, sx);
      }
      s1_[q] = s;
      s2_[q] = sx;
    };
    auto plane_dx = [&](int64_t q) { run_dx(q, q % C, q * HW, HW, stream); };
    const int64_t G = cache_group(N, C, HW, (dx_ ? 3 : 2) * sizeof(scalar_t));
    if (G > 0) {
      at::parallel_for(0, C, G, [&](int64_t c0, int64_t c1) {
        for (int64_t g0 = c0; g0 < c1; g0 += G) {
          const int64_t g1 = std::min(c1, g0 + G);
          for (int64_t n = 0; n < N; ++n) {
            for (int64_t c = g0; c < g1; ++c) sums(n * C + c);
          }
          if (!dx_) continue;
          for (int64_t c = g0; c < g1; ++c) finish(c);
          for (int64_t n = 0; n < N; ++n) {
            for (int64_t c = g0; c < g1; ++c) plane_dx(n * C + c);
          }
        }
        if (stream) stream_fence();
      });
      return;
    }
    const int64_t P = N * C, grain = plane_grain(HW);
    at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) sums(q);
    });
    if (!dx_) return;
    for (int64_t c = 0; c < C; ++c) finish(c);
    at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) plane_dx(q);
      if (stream) stream_fence();
    });
  }

  // dx over a run of n values of plane (sample, channel) `q` / `c` at offset `base`.
  void run_dx(int64_t q, int64_t c, int64_t base, int64_t n, bool stream) const {
    using IO = VecIo<scalar_t>;
    constexpr int64_t K = IO::kSize;
    const Vec vA(k_.A[q]), vB(k_.B[q]), vs(k_.sc[q]), vslope(k_.slope), vmean(mean_[c]),
        vgain(gain_[c]), vproj(proj_[c]), vmdz(mdz_[c]);
    const scalar_t *x = x_ + base, *dy = dy_ + base;
    scalar_t* dx = dx_ + base;
    auto body = [&](const Vec& xv, const Vec& dyv) {
      const Vec dz = dyv * leaky_grad_vec<acc_t>(at::vec::fmadd(xv, vA, vB), vslope);
      return cbn_act::grad_input<Vec>(dz, vs, xv - vmean, vgain, vproj, vmdz);
    };
    int64_t i = 0;
    if constexpr (std::is_same_v<scalar_t, float> && kCanStream) {
      if (stream && aligned64(dx)) {
        for (; i + K <= n; i += K) stream_store(dx + i, body(IO::load(x + i), IO::load(dy + i)));
      }
    }
    for (; i + K <= n; i += K) IO::store(dx + i, body(IO::load(x + i), IO::load(dy + i)));
    if (i < n) IO::store(dx + i, body(IO::load(x + i, n - i), IO::load(dy + i, n - i)), n - i);
  }

  // Channels_last: each sample's H*W rows in fixed blocks (parallel over all blocks),
  // block sums added per (n, c) in block order; then rows of dx.
  void nhwc() {
    const int64_t N = k_.N, C = k_.C, HW = k_.HW, R = N * HW;
    const int64_t Bk = block_rows(HW, C), per = (HW + Bk - 1) / Bk, nblk = N * per;
    std::vector<acc_t> bs(nblk * C), bsx(nblk * C);
    at::parallel_for(0, nblk, serial_if_small(R * C, nblk, 1), [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n = blk / per, h0 = (blk % per) * Bk;
        block_sums(n, h0, std::min(HW, h0 + Bk), bs.data() + blk * C, bsx.data() + blk * C);
      }
    });
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        double s = 0, sx = 0;
        for (int64_t b = n * per; b < (n + 1) * per; ++b) {
          s += bs[b * C + c];
          sx += bsx[b * C + c];
        }
        s1_[n * C + c] = s;
        s2_[n * C + c] = sx;
      }
    }
    if (!dx_) return;
    for (int64_t c = 0; c < C; ++c) finish(c);
    const int64_t grain = std::max<int64_t>(1, kBlockElems / C);
    if (stream_rows(dx_, C, nbytes_)) {
      at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
        dx_rows<true>(r0, r1);
        stream_fence();
      });
    } else {
      at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) { dx_rows<false>(r0, r1); });
    }
  }

  // Per-channel sum(dz) and sum(dz * (x - mean)) over rows [h0, h1) of sample n.
  void block_sums(int64_t n, int64_t h0, int64_t h1, acc_t* bs, acc_t* bsx) const {
    const int64_t C = k_.C;
    const scalar_t *x = x_ + n * k_.HW * C, *dy = dy_ + n * k_.HW * C;
    const acc_t *A = k_.A.data() + n * C, *B = k_.B.data() + n * C, *mean = mean_;
    const Vec vslope(k_.slope);
    for_channel_vectors<scalar_t>(C, [&](int64_t c, auto width) {
      const Vec vm = width.load_acc(mean + c);
      const Vec va = width.load_acc(A + c), vb = width.load_acc(B + c);
      Vec s(acc_t(0)), sx(acc_t(0));
      for (int64_t r = h0; r < h1; ++r) {
        const Vec xv = width.load(x + r * C + c);
        const Vec dz = width.load(dy + r * C + c) *
                       leaky_grad_vec<acc_t>(at::vec::fmadd(xv, va, vb), vslope);
        s += dz;
        sx = at::vec::fmadd(dz, xv - vm, sx);
      }
      width.store_acc(bs + c, s);
      width.store_acc(bsx + c, sx);
    });
  }

  template <bool Stream>
  void dx_rows(int64_t r0, int64_t r1) const {
    const int64_t C = k_.C, HW = k_.HW;
    const acc_t *gain = gain_.data(), *proj = proj_.data(), *mdz = mdz_.data(), *mean = mean_;
    const Vec vslope(k_.slope);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / HW;
      const acc_t *A = k_.A.data() + n * C, *B = k_.B.data() + n * C, *s = k_.sc.data() + n * C;
      const scalar_t *xr = x_ + r * C, *dyr = dy_ + r * C;
      scalar_t* dxr = dx_ + r * C;
      for_channel_vectors<scalar_t, Stream>(C, [&](int64_t c, auto width) {
        const Vec xv = width.load(xr + c);
        const Vec z = at::vec::fmadd(xv, width.load_acc(A + c), width.load_acc(B + c));
        const Vec dz = width.load(dyr + c) * leaky_grad_vec<acc_t>(z, vslope);
        width.store(dxr + c, cbn_act::grad_input<Vec>(
                                 dz, width.load_acc(s + c), xv - width.load_acc(mean + c),
                                 width.load_acc(gain + c), width.load_acc(proj + c),
                                 width.load_acc(mdz + c)));
      });
    }
  }

  Call<acc_t>& k_;
  const scalar_t* dy_;
  const scalar_t* x_;
  scalar_t* dx_;
  const acc_t* mean_;
  double* s1_;
  double* s2_;
  const int64_t nbytes_;
  std::vector<acc_t> gain_, proj_, mdz_;
};

}  // namespace

Tensor3 cbn_act_forward(const at::Tensor& input, const at::Tensor& scale,
                        const at::Tensor& shift, const OptTensor& running_mean,
                        const OptTensor& running_var, bool training, double eps,
                        double negative_slope) {
  cbn_act::check_forward(input, scale, shift, running_mean, running_var, training);
  const at::Tensor x = is_channels_last(input) ? input : input.contiguous();
  const auto acc_type = acc_scalar_type(x.scalar_type());
  const int64_t C = x.size(1);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean, var;
  if (training) {
    mean = at::empty({C}, x.options().dtype(acc_type));
    var = at::empty({C}, x.options().dtype(acc_type));
  } else {
    mean = running_mean->to(acc_type, /*non_blocking=*/false, /*copy=*/true).contiguous();
    var = running_var->to(acc_type, false, true).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cbn_act_forward",
                                  [&] {
    Call<acc_of_t<scalar_t>> k(x, scale, shift, training, negative_slope);
    Forward<scalar_t>(k, x, y, mean, var, eps).run();
  });
  return {y, mean, var};
}

Tensor3 cbn_act_backward(const at::Tensor& grad_out, const at::Tensor& input,
                         const at::Tensor& scale, const at::Tensor& shift,
                         const at::Tensor& mean, const at::Tensor& var, bool training,
                         double eps, double negative_slope, std::array<bool, 3> output_mask) {
  cbn_act::check_backward(grad_out, input, scale, shift, mean, var);
  const auto fmt = is_channels_last(input) ? at::MemoryFormat::ChannelsLast
                                           : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(fmt), dy = grad_out.contiguous(fmt);
  const auto acc_type = acc_scalar_type(x.scalar_type());
  const at::Tensor m = mean.to(acc_type).contiguous(), v = var.to(acc_type).contiguous();
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : at::Tensor();
  // S1 = grad_shift, S2 * invstd = grad_scale, per (n, c) in double
  at::Tensor s1 = at::empty({N, C}, x.options().dtype(at::kDouble));
  at::Tensor s2 = at::empty({N, C}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cbn_act_backward",
                                  [&] {
    Call<acc_of_t<scalar_t>> k(x, scale, shift, training, negative_slope);
    Backward<scalar_t>(k, dy, x, dx.defined() ? &dx : nullptr, m, v, eps,
                       s1.mutable_data_ptr<double>(), s2.mutable_data_ptr<double>())
        .run();
  });
  at::Tensor gs = output_mask[1]
                      ? (s2 * (v.to(at::kDouble) + eps).rsqrt().unsqueeze(0)).to(scale.scalar_type())
                      : at::empty({0}, x.options().dtype(scale.scalar_type()));
  at::Tensor gb = output_mask[2] ? s1.to(shift.scalar_type())
                                 : at::empty({0}, x.options().dtype(shift.scalar_type()));
  return {dx.defined() ? dx : at::empty({0}, x.options()), gs, gb};
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
