// Channels_last (NHWC) kernels of the fused BatchNorm2d + LeakyReLU op for fewer channels
// than a vector holds (C < K). Rows are too short to vectorise over channels (a masked
// vector per row ran ~5x slower than NCHW), so the tensor is walked as one flat array in
// periods of L = lcm(C, K) values: P = L / K vectors, L / C rows. Lane l of a period's
// j-th vector holds channel (j*K + l) % C, and per-channel constants are laid out the
// same way ("patterns"). Partial sums stay per block of rows and are merged per channel
// in a fixed order, as on the wide path; values after the last whole period are done
// one by one.
#include <ATen/Dispatch.h>

#include <numeric>

#include "bn_act_common.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kMaxLanes = 64;  // >= any Vectorized<acc_t>::size()

template <typename acc_t>
struct Period {
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t K = Vec::size();
  int64_t C, L, P, rows;  // channels, values / vectors / rows per period
  explicit Period(int64_t c) : C(c), L(std::lcm(c, K)), P(L / K), rows(L / c) {}

  // the pattern of per-channel values v[0..C)
  void pattern(const acc_t* v, Vec* out) const {
    alignas(64) acc_t buf[kMaxLanes];
    for (int64_t j = 0; j < P; ++j) {
      for (int64_t l = 0; l < K; ++l) buf[l] = v[(j * K + l) % C];
      out[j] = Vec::loadu(buf);
    }
  }

  // adds the lanes of acc[0..P) to per-channel totals out[0..C)
  void to_channels(const Vec* acc, double* out) const {
    alignas(64) acc_t buf[kMaxLanes];
    for (int64_t j = 0; j < P; ++j) {
      acc[j].store(buf);
      for (int64_t l = 0; l < K; ++l) out[(j * K + l) % C] += static_cast<double>(buf[l]);
    }
  }

  // Rows per block of the statistics or sums: ~kBlockElems values, whole periods.
  int64_t block_rows(int64_t R) const {
    const int64_t want = std::min(R, std::max<int64_t>(1, kBlockElems / C));
    return std::max(rows, want / rows * rows);
  }
};

template <typename scalar_t>
class SmallForward {
  using acc_t = acc_of_t<scalar_t>;
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  static constexpr int64_t K = IO::kSize;

 public:
  explicit SmallForward(const ForwardArgs& a)
      : a_(a), C_(a.x.size(1)), R_(a.x.numel() / C_), pd_(C_),
        x_(a.x.const_data_ptr<scalar_t>()), f_(a.weight, a.bias, C_) {}

  void run() {
    acc_t* mean = a_.mean.mutable_data_ptr<acc_t>();
    acc_t* var = a_.var.mutable_data_ptr<acc_t>();
    if (a_.training) statistics(mean, var);
    f_.fold_all(mean, var, a_.eps);
    apply(a_.y.mutable_data_ptr<scalar_t>());
  }

 private:
  void statistics(acc_t* mean, acc_t* var) const {
    const int64_t B = pd_.block_rows(R_), nblk = (R_ + B - 1) / B;
    std::vector<acc_t> bmean(nblk * C_), bm2(nblk * C_);
    at::parallel_for(0, nblk, serial_if_small(a_.x.numel(), nblk, 1), [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * B, rows = std::min(R_, r0 + B) - r0;
        block_moments(x_ + r0 * C_, rows, bmean.data() + blk * C_, bm2.data() + blk * C_);
      }
    });
    merge_blocks<acc_t>(bmean, bm2, nblk, B, R_, C_, mean, var);
  }

  // Per-channel mean and M2 of `rows` rows at `base`: sums shifted by the first row (as
  // run_moments), then squared deviations from the block's means.
  void block_moments(const scalar_t* base, int64_t rows, acc_t* bm, acc_t* bq) const {
    const int64_t full = rows / pd_.rows * pd_.L, n = rows * C_;  // values in whole periods
    acc_t piv[kMaxLanes];
    double s[kMaxLanes] = {}, q[kMaxLanes] = {};
    for (int64_t c = 0; c < C_; ++c) piv[c] = static_cast<acc_t>(base[c]);
    period_sums<false>(base, full, piv, s);
    for (int64_t i = full; i < n; ++i) {
      s[i % C_] += static_cast<double>(static_cast<acc_t>(base[i]) - piv[i % C_]);
    }
    for (int64_t c = 0; c < C_; ++c) {
      bm[c] = piv[c] + static_cast<acc_t>(s[c] / static_cast<double>(rows));
    }
    period_sums<true>(base, full, bm, q);
    for (int64_t i = full; i < n; ++i) {
      const acc_t d = static_cast<acc_t>(base[i]) - bm[i % C_];
      q[i % C_] += static_cast<double>(d * d);
    }
    for (int64_t c = 0; c < C_; ++c) bq[c] = static_cast<acc_t>(q[c]);
  }

  // out[c] += sum over base[0..full) of (x - center[c]), or of its square.
  template <bool Squares>
  void period_sums(const scalar_t* base, int64_t full, const acc_t* center, double* out) const {
    Vec pat[kMaxLanes], acc[kMaxLanes];
    pd_.pattern(center, pat);
    for (int64_t j = 0; j < pd_.P; ++j) acc[j] = Vec(acc_t(0));
    for (int64_t i = 0; i < full; i += pd_.L) {
      for (int64_t j = 0; j < pd_.P; ++j) {
        const Vec d = IO::load(base + i + j * K) - pat[j];
        acc[j] = Squares ? at::vec::fmadd(d, d, acc[j]) : acc[j] + d;
      }
    }
    pd_.to_channels(acc, out);
  }

  void apply(scalar_t* y) const {
    const scalar_t* x = x_;
    const int64_t n = a_.x.numel(), periods = n / pd_.L, C = C_;
    const acc_t *scale = f_.scale.data(), *shift = f_.shift.data();
    const acc_t slope = static_cast<acc_t>(a_.slope);
    at::parallel_for(0, periods, std::max<int64_t>(1, kBlockElems / pd_.L), [&](int64_t q0, int64_t q1) {
      Vec sp[kMaxLanes], bp[kMaxLanes];
      pd_.pattern(scale, sp);
      pd_.pattern(shift, bp);
      const Vec vslope(slope);
      for (int64_t i = q0 * pd_.L; i < q1 * pd_.L; i += pd_.L) {
        for (int64_t j = 0; j < pd_.P; ++j) {
          const Vec z = at::vec::fmadd(IO::load(x + i + j * K), sp[j], bp[j]);
          IO::store(y + i + j * K, leaky_vec<acc_t>(z, vslope));
        }
      }
    });
    for (int64_t i = periods * pd_.L; i < n; ++i) {
      const acc_t z = static_cast<acc_t>(x[i]) * scale[i % C] + shift[i % C];
      y[i] = static_cast<scalar_t>(bn_act::leaky<acc_t>(z, slope));
    }
  }

  const ForwardArgs& a_;
  const int64_t C_, R_;
  const Period<acc_t> pd_;
  const scalar_t* x_;
  Folded<acc_t> f_;
};

template <typename scalar_t>
class SmallBackward {
  using acc_t = acc_of_t<scalar_t>;
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  static constexpr int64_t K = IO::kSize;

 public:
  explicit SmallBackward(const BackwardArgs& a)
      : a_(a), C_(a.x.size(1)), R_(a.x.numel() / C_), pd_(C_),
        x_(a.x.const_data_ptr<scalar_t>()), dy_(a.dy.const_data_ptr<scalar_t>()),
        mean_(a.mean.const_data_ptr<acc_t>()), slope_(static_cast<acc_t>(a.slope)),
        f_(a.weight, a.bias, C_) {
    f_.fold_all(mean_, a.var.const_data_ptr<acc_t>(), a.eps);
  }

  void run() const {
    sums();
    if (a_.dx == nullptr) return;
    const GradTables<acc_t> g(f_, a_.training, a_.sum_dz, a_.sum_dz_xc, R_);
    input_grad(g, a_.dx->mutable_data_ptr<scalar_t>());
  }

 private:
  acc_t dz_at(int64_t i) const {
    const int64_t c = i % C_;
    const acc_t z = static_cast<acc_t>(x_[i]) * f_.scale[c] + f_.shift[c];
    return static_cast<acc_t>(dy_[i]) * bn_act::leaky_grad<acc_t>(z, slope_);
  }

  void sums() const {
    const int64_t B = pd_.block_rows(R_), nblk = (R_ + B - 1) / B;
    std::vector<double> bsum(nblk * C_), bsumx(nblk * C_);
    at::parallel_for(0, nblk, serial_if_small(a_.x.numel(), nblk, 1), [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * B, rows = std::min(R_, r0 + B) - r0;
        block_sums(r0 * C_, rows, bsum.data() + blk * C_, bsumx.data() + blk * C_);
      }
    });
    sum_blocks(bsum, bsumx, nblk, C_, a_.sum_dz, a_.sum_dz_xc);
  }

  // s[c], sx[c] = sum(dz), sum(dz * (x - mean)) over `rows` rows from value `start`.
  void block_sums(int64_t start, int64_t rows, double* s, double* sx) const {
    const scalar_t *x = x_, *dy = dy_;
    const int64_t full = rows / pd_.rows * pd_.L;
    Vec sp[kMaxLanes], bp[kMaxLanes], mv[kMaxLanes], a[kMaxLanes], b[kMaxLanes];
    pd_.pattern(f_.scale.data(), sp);
    pd_.pattern(f_.shift.data(), bp);
    pd_.pattern(mean_, mv);
    const Vec vslope(slope_);
    for (int64_t j = 0; j < pd_.P; ++j) a[j] = b[j] = Vec(acc_t(0));
    for (int64_t i = start; i < start + full; i += pd_.L) {
      for (int64_t j = 0; j < pd_.P; ++j) {
        const Vec xv = IO::load(x + i + j * K);
        const Vec dz = IO::load(dy + i + j * K) *
                       leaky_grad_vec<acc_t>(at::vec::fmadd(xv, sp[j], bp[j]), vslope);
        a[j] += dz;
        b[j] = at::vec::fmadd(dz, xv - mv[j], b[j]);
      }
    }
    pd_.to_channels(a, s);
    pd_.to_channels(b, sx);
    for (int64_t i = start + full; i < start + rows * C_; ++i) {
      const acc_t dz = dz_at(i);
      s[i % C_] += static_cast<double>(dz);
      sx[i % C_] += static_cast<double>(dz * (static_cast<acc_t>(x[i]) - mean_[i % C_]));
    }
  }

  // dx = gain * (dz - proj * (x - mean) - mean_dz).
  void input_grad(const GradTables<acc_t>& g, scalar_t* dx) const {
    const int64_t n = a_.x.numel(), periods = n / pd_.L;
    at::parallel_for(0, periods, std::max<int64_t>(1, kBlockElems / pd_.L),
                     [&](int64_t q0, int64_t q1) { input_grad_periods(g, q0, q1, dx); });
    for (int64_t i = periods * pd_.L; i < n; ++i) {
      const int64_t c = i % C_;
      const acc_t t = g.proj[c] * (static_cast<acc_t>(x_[i]) - mean_[c]) + g.mean_dz[c];
      dx[i] = static_cast<scalar_t>(g.gain[c] * (dz_at(i) - t));
    }
  }

  void input_grad_periods(const GradTables<acc_t>& g, int64_t q0, int64_t q1, scalar_t* dx) const {
    const scalar_t *x = x_, *dy = dy_;
    Vec sp[kMaxLanes], bp[kMaxLanes], mv[kMaxLanes], gv[kMaxLanes], pv[kMaxLanes], dv[kMaxLanes];
    pd_.pattern(f_.scale.data(), sp);
    pd_.pattern(f_.shift.data(), bp);
    pd_.pattern(mean_, mv);
    pd_.pattern(g.gain.data(), gv);
    pd_.pattern(g.proj.data(), pv);
    pd_.pattern(g.mean_dz.data(), dv);
    const Vec vslope(slope_);
    for (int64_t i = q0 * pd_.L; i < q1 * pd_.L; i += pd_.L) {
      for (int64_t j = 0; j < pd_.P; ++j) {
        const Vec xv = IO::load(x + i + j * K);
        const Vec dz = IO::load(dy + i + j * K) *
                       leaky_grad_vec<acc_t>(at::vec::fmadd(xv, sp[j], bp[j]), vslope);
        const Vec t = at::vec::fmadd(pv[j], xv - mv[j], dv[j]);
        IO::store(dx + i + j * K, gv[j] * (dz - t));
      }
    }
  }

  const BackwardArgs& a_;
  const int64_t C_, R_;
  const Period<acc_t> pd_;
  const scalar_t* x_;
  const scalar_t* dy_;
  const acc_t* mean_;
  const acc_t slope_;
  Folded<acc_t> f_;
};

}  // namespace

void forward_nhwc_small(const ForwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.x.scalar_type(), "bn_act_forward",
                                  [&] { SmallForward<scalar_t>(a).run(); });
}

void backward_nhwc_small(const BackwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.x.scalar_type(), "bn_act_backward",
                                  [&] { SmallBackward<scalar_t>(a).run(); });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
