// Channels_last (NHWC) kernels of the fused BatchNorm2d + LeakyReLU op, for at least a
// vector of channels (fewer: bn_act_nhwc_small.cpp).
//
// Work is split into blocks of rows (parallel over blocks, vectorised over channels);
// per-block partial statistics or sums are merged per channel in block order, so the
// result does not depend on the number of threads.
#include <ATen/Dispatch.h>

#include "bn_act_common.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// Rows per block: ~kBlockElems values.
inline int64_t block_rows(int64_t R, int64_t C) {
  return std::max<int64_t>(1, std::min(R, kBlockElems / C));
}

template <typename scalar_t>
class NhwcForward {
  using acc_t = acc_of_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;

 public:
  explicit NhwcForward(const ForwardArgs& a)
      : a_(a), C_(a.x.size(1)), R_(a.x.numel() / C_),
        x_(a.x.const_data_ptr<scalar_t>()), y_(a.y.mutable_data_ptr<scalar_t>()),
        f_(a.weight, a.bias, C_) {}

  void run() {
    acc_t* mean = a_.mean.mutable_data_ptr<acc_t>();
    acc_t* var = a_.var.mutable_data_ptr<acc_t>();
    if (a_.training) statistics(mean, var);
    f_.fold_all(mean, var, a_.eps);
    if (stream_rows(y_, C_, a_.y.nbytes())) {
      at::parallel_for(0, R_, grain(), [&](int64_t r0, int64_t r1) {
        apply_rows<true>(r0, r1, y_ + r0 * C_);
        stream_fence();
      });
    } else {
      at::parallel_for(0, R_, grain(),
                       [&](int64_t r0, int64_t r1) { apply_rows<false>(r0, r1, y_ + r0 * C_); });
    }
  }

 private:
  int64_t grain() const { return std::max<int64_t>(1, kBlockElems / C_); }

  void statistics(acc_t* mean, acc_t* var) const {
    const int64_t B = block_rows(R_, C_), nblk = (R_ + B - 1) / B;
    std::vector<acc_t> bmean(nblk * C_), bm2(nblk * C_);
    at::parallel_for(0, nblk, serial_if_small(a_.x.numel(), nblk, 1), [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        block_moments(blk * B, std::min(R_, (blk + 1) * B), bmean.data() + blk * C_,
                      bm2.data() + blk * C_);
      }
    });
    merge_blocks<acc_t>(bmean, bm2, nblk, B, R_, C_, mean, var);
  }

  // Per-channel mean and M2 of rows [r0, r1), shifted by the first row as run_moments.
  void block_moments(int64_t r0, int64_t r1, acc_t* bm, acc_t* bq) const {
    const scalar_t* x = x_;
    const int64_t C = C_;
    const Vec inv_rows(acc_t(1) / static_cast<acc_t>(r1 - r0));
    for_channel_vectors<scalar_t>(C, [&](int64_t c, auto width) {
      const scalar_t* col = x + c;
      const Vec pivot = width.load(col + r0 * C);
      Vec s(acc_t(0));
      for (int64_t r = r0; r < r1; ++r) s += width.load(col + r * C) - pivot;
      const Vec vm = at::vec::fmadd(s, inv_rows, pivot);
      Vec q(acc_t(0));
      for (int64_t r = r0; r < r1; ++r) {
        const Vec d = width.load(col + r * C) - vm;  // zero lanes stay zero
        q = at::vec::fmadd(d, d, q);
      }
      width.store_acc(bm + c, vm);
      width.store_acc(bq + c, q);
    });
  }

  // out[(r - r0) * C + c] = leaky(x[r, c] * scale[c] + shift[c]) for rows [r0, r1).
  template <bool Stream>
  void apply_rows(int64_t r0, int64_t r1, scalar_t* out) const {
    const scalar_t* x = x_;
    const int64_t C = C_;
    const acc_t *scale = f_.scale.data(), *shift = f_.shift.data();
    const Vec vslope(static_cast<acc_t>(a_.slope));
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* xr = x + r * C;
      scalar_t* yr = out + (r - r0) * C;
      for_channel_vectors<scalar_t, Stream>(C, [&](int64_t c, auto width) {
        const Vec z = at::vec::fmadd(width.load(xr + c), width.load_acc(scale + c),
                                     width.load_acc(shift + c));
        width.store(yr + c, leaky_vec<acc_t>(z, vslope));
      });
    }
  }

  const ForwardArgs& a_;
  const int64_t C_, R_;
  const scalar_t* x_;
  scalar_t* y_;
  Folded<acc_t> f_;
};

template <typename scalar_t>
class NhwcBackward {
  using acc_t = acc_of_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;

 public:
  explicit NhwcBackward(const BackwardArgs& a)
      : a_(a), C_(a.x.size(1)), R_(a.x.numel() / C_), x_(a.x.const_data_ptr<scalar_t>()),
        dy_(a.dy.const_data_ptr<scalar_t>()), mean_(a.mean.const_data_ptr<acc_t>()),
        f_(a.weight, a.bias, C_) {
    f_.fold_all(mean_, a.var.const_data_ptr<acc_t>(), a.eps);
  }

  void run() {
    sums();
    if (a_.dx == nullptr) return;
    const GradTables<acc_t> g(f_, a_.training, a_.sum_dz, a_.sum_dz_xc, R_);
    scalar_t* dx = a_.dx->mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kBlockElems / C_);
    if (stream_rows(dx, C_, a_.dx->nbytes())) {
      at::parallel_for(0, R_, grain, [&](int64_t r0, int64_t r1) {
        dx_rows<true>(r0, r1, g, dx);
        stream_fence();
      });
    } else {
      at::parallel_for(0, R_, grain,
                       [&](int64_t r0, int64_t r1) { dx_rows<false>(r0, r1, g, dx); });
    }
  }

 private:
  void sums() const {
    const int64_t B = block_rows(R_, C_), nblk = (R_ + B - 1) / B;
    std::vector<acc_t> bsum(nblk * C_), bsumx(nblk * C_);
    at::parallel_for(0, nblk, serial_if_small(a_.x.numel(), nblk, 1), [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        block_sums(blk * B, std::min(R_, (blk + 1) * B), bsum.data() + blk * C_,
                   bsumx.data() + blk * C_);
      }
    });
    sum_blocks(bsum, bsumx, nblk, C_, a_.sum_dz, a_.sum_dz_xc);
  }

  // Per-channel sum(dz) and sum(dz * (x - mean)) over rows [r0, r1).
  void block_sums(int64_t r0, int64_t r1, acc_t* bs, acc_t* bsx) const {
    const scalar_t *x = x_, *dy = dy_;
    const int64_t C = C_;
    const acc_t *scale = f_.scale.data(), *shift = f_.shift.data(), *mean = mean_;
    const Vec vslope(static_cast<acc_t>(a_.slope));
    for_channel_vectors<scalar_t>(C, [&](int64_t c, auto width) {
      const Vec vm = width.load_acc(mean + c);
      const Vec vs = width.load_acc(scale + c), vb = width.load_acc(shift + c);
      Vec s(acc_t(0)), sx(acc_t(0));
      for (int64_t r = r0; r < r1; ++r) {
        const Vec xv = width.load(x + r * C + c);
        const Vec dz = width.load(dy + r * C + c) *
                       leaky_grad_vec<acc_t>(at::vec::fmadd(xv, vs, vb), vslope);
        s += dz;
        sx = at::vec::fmadd(dz, xv - vm, sx);
      }
      width.store_acc(bs + c, s);
      width.store_acc(bsx + c, sx);
    });
  }

  // dx = gain * (dz - proj * (x - mean) - mean_dz) for rows [r0, r1).
  template <bool Stream>
  void dx_rows(int64_t r0, int64_t r1, const GradTables<acc_t>& g, scalar_t* dx) const {
    const scalar_t *x = x_, *dy = dy_;
    const int64_t C = C_;
    const acc_t *scale = f_.scale.data(), *shift = f_.shift.data(), *mean = mean_;
    const acc_t *gain = g.gain.data(), *proj = g.proj.data(), *mdz = g.mean_dz.data();
    const Vec vslope(static_cast<acc_t>(a_.slope));
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t *xr = x + r * C, *dyr = dy + r * C;
      scalar_t* dxr = dx + r * C;
      for_channel_vectors<scalar_t, Stream>(C, [&](int64_t c, auto width) {
        const Vec xv = width.load(xr + c);
        const Vec z = at::vec::fmadd(xv, width.load_acc(scale + c), width.load_acc(shift + c));
        const Vec dz = width.load(dyr + c) * leaky_grad_vec<acc_t>(z, vslope);
        const Vec t = at::vec::fmadd(width.load_acc(proj + c), xv - width.load_acc(mean + c),
                                     width.load_acc(mdz + c));
        width.store(dxr + c, width.load_acc(gain + c) * (dz - t));
      });
    }
  }

  const BackwardArgs& a_;
  const int64_t C_, R_;
  const scalar_t* x_;
  const scalar_t* dy_;
  const acc_t* mean_;
  Folded<acc_t> f_;
};

}  // namespace

void forward_nhwc(const ForwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.x.scalar_type(), "bn_act_forward",
                                  [&] { NhwcForward<scalar_t>(a).run(); });
}

void backward_nhwc(const BackwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.x.scalar_type(), "bn_act_backward",
                                  [&] { NhwcBackward<scalar_t>(a).run(); });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
