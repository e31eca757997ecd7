// Channels_last (NHWC) kernels of the fused BatchNorm2d + LeakyReLU op, for at least a
// vector of channels (fewer: bn_act_nhwc_small.cpp).
//
// Work is split into blocks of rows (parallel over blocks, vectorised over channels);
// per-block partial statistics or sums are merged per channel in block order, so the
// result does not depend on the number of threads.
//
// Mixed layouts: the backward reads an NCHW dy for a channels_last x (a block that runs
// its convolution channels_last for an NCHW caller, fastgan/nn/blocks.py). Rows go
// through a small NHWC-ordered tile that at::vec's tile transposes fill from the NCHW
// tensor, instead of a whole copy first: at (64, 64,
// 32, 32) fp32 the whole copy (ATen's strided copy) took 2-4.6 ms, the tiles add ~1.5 ms
// to the 2.9 ms backward. Rows r of the NHWC view are (n, hw) = (r / HW, r % HW); the
// NCHW side of rows [r0, r1) is, per image, C runs of up to HW contiguous values.
#include <ATen/Dispatch.h>

#include "bn_act_common.h"
#include "transpose.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// buf[(r - r0) * C + c] = src_nchw[n, c, hw] for rows r in [r0, r1).
template <typename scalar_t>
void gather_nchw_rows(const scalar_t* src, int64_t C, int64_t HW, int64_t r0, int64_t r1,
                      scalar_t* buf) {
  for (int64_t r = r0; r < r1;) {
    const int64_t n = r / HW, hw = r % HW, len = std::min(r1 - r, HW - hw);
    transpose_tiles<scalar_t>(src + n * C * HW + hw, HW, buf + (r - r0) * C, C, C, len);
    r += len;
  }
}

// Rows per transposed tile of the backward: ~16 KiB of values, a multiple of 16 rows.
inline int64_t mixed_tile_rows(int64_t C) {
  return std::max<int64_t>(16, (4096 / std::max<int64_t>(C, 1)) / 16 * 16);
}

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
  NhwcBackward(const BackwardArgs& a, bool dy_nchw)
      : a_(a), C_(a.x.size(1)), R_(a.x.numel() / C_), HW_(a.x.size(2) * a.x.size(3)),
        dy_nchw_(dy_nchw), x_(a.x.const_data_ptr<scalar_t>()),
        dy_(a.dy.const_data_ptr<scalar_t>()), mean_(a.mean.const_data_ptr<acc_t>()),
        f_(a.weight, a.bias, C_) {
    f_.fold_all(mean_, a.var.const_data_ptr<acc_t>(), a.eps);
  }

  void run() {
    sums();
    if (a_.dx == nullptr) return;
    const GradTables<acc_t> g(f_, a_.training, a_.sum_dz, a_.sum_dz_xc, R_);
    scalar_t* dx = a_.dx->mutable_data_ptr<scalar_t>();
    const int64_t TB = dy_nchw_ ? mixed_tile_rows(C_) : R_;
    const int64_t grain = std::max<int64_t>(dy_nchw_ ? TB : 1, kBlockElems / C_);
    const bool stream = stream_rows(dx, C_, a_.dx->nbytes());
    at::parallel_for(0, R_, grain, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> tile(dy_nchw_ ? TB * C_ : 0);
      for (int64_t s0 = r0; s0 < r1; s0 += TB) {
        const int64_t s1 = std::min(r1, s0 + TB);
        const scalar_t* dyb = dy_rows(s0, s1, tile);
        stream ? dx_rows<true>(s0, s1, dyb, g, dx) : dx_rows<false>(s0, s1, dyb, g, dx);
      }
      if (stream) stream_fence();
    });
  }

 private:
  // dy's rows [r0, r1), NHWC-ordered: in place, or gathered into `tile` from NCHW.
  const scalar_t* dy_rows(int64_t r0, int64_t r1, std::vector<scalar_t>& tile) const {
    if (!dy_nchw_) return dy_ + r0 * C_;
    gather_nchw_rows<scalar_t>(dy_, C_, HW_, r0, r1, tile.data());
    return tile.data();
  }

  void sums() const {
    const int64_t B = block_rows(R_, C_), nblk = (R_ + B - 1) / B;
    std::vector<acc_t> bsum(nblk * C_), bsumx(nblk * C_);
    at::parallel_for(0, nblk, serial_if_small(a_.x.numel(), nblk, 1), [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> tile(dy_nchw_ ? B * C_ : 0);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * B, r1 = std::min(R_, r0 + B);
        block_sums(r0, r1, dy_rows(r0, r1, tile), bsum.data() + blk * C_, bsumx.data() + blk * C_);
      }
    });
    sum_blocks(bsum, bsumx, nblk, C_, a_.sum_dz, a_.sum_dz_xc);
  }

  // Per-channel sum(dz) and sum(dz * (x - mean)) over rows [r0, r1); dyb holds their dy.
  void block_sums(int64_t r0, int64_t r1, const scalar_t* dyb, acc_t* bs, acc_t* bsx) const {
    const scalar_t* x = x_;
    const int64_t C = C_;
    const acc_t *scale = f_.scale.data(), *shift = f_.shift.data(), *mean = mean_;
    const Vec vslope(static_cast<acc_t>(a_.slope));
    for_channel_vectors<scalar_t>(C, [&](int64_t c, auto width) {
      const Vec vm = width.load_acc(mean + c);
      const Vec vs = width.load_acc(scale + c), vb = width.load_acc(shift + c);
      Vec s(acc_t(0)), sx(acc_t(0));
      for (int64_t r = r0; r < r1; ++r) {
        const Vec xv = width.load(x + r * C + c);
        const Vec dz = width.load(dyb + (r - r0) * C + c) *
                       leaky_grad_vec<acc_t>(at::vec::fmadd(xv, vs, vb), vslope);
        s += dz;
        sx = at::vec::fmadd(dz, xv - vm, sx);
      }
      width.store_acc(bs + c, s);
      width.store_acc(bsx + c, sx);
    });
  }

  // dx = gain * (dz - proj * (x - mean) - mean_dz) for rows [r0, r1); dyb holds their dy.
  template <bool Stream>
  void dx_rows(int64_t r0, int64_t r1, const scalar_t* dyb, const GradTables<acc_t>& g,
               scalar_t* dx) const {
    const scalar_t* x = x_;
    const int64_t C = C_;
    const acc_t *scale = f_.scale.data(), *shift = f_.shift.data(), *mean = mean_;
    const acc_t *gain = g.gain.data(), *proj = g.proj.data(), *mdz = g.mean_dz.data();
    const Vec vslope(static_cast<acc_t>(a_.slope));
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t *xr = x + r * C, *dyr = dyb + (r - r0) * C;
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
  const int64_t C_, R_, HW_;
  const bool dy_nchw_;
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

void backward_nhwc(const BackwardArgs& a, bool dy_nchw) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.x.scalar_type(), "bn_act_backward",
                                  [&] { NhwcBackward<scalar_t>(a, dy_nchw).run(); });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
