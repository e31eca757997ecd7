// NCHW kernels of the fused BatchNorm2d + LeakyReLU op.
//
// Cache-blocked by groups of adjacent channels (parallel over groups): a group's planes
// (N runs of G*H*W contiguous values) are reduced, then normalised and activated
// (forward) or turned into input gradients (backward) while they are still in L2/L3, so
// memory sees each input once. Groups of several channels keep the runs long; one
// channel at a time (as eager does) reads H*W-value runs at a stride of C*H*W, which for
// power-of-two sizes piles every plane onto the same cache sets. When one channel alone
// outgrows the cache, both passes stream over all planes in memory order instead.
// Planes are merged per channel in the order n = 0..N-1 either way, so the result is the
// same for any thread count and either path.
#include <ATen/Dispatch.h>

#include "bn_act_common.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename scalar_t>
class NchwForward {
  using acc_t = acc_of_t<scalar_t>;

 public:
  explicit NchwForward(const ForwardArgs& a)
      : a_(a), N_(a.x.size(0)), C_(a.x.size(1)), HW_(a.x.size(2) * a.x.size(3)),
        x_(a.x.const_data_ptr<scalar_t>()), y_(a.y.mutable_data_ptr<scalar_t>()),
        mean_(a.mean.mutable_data_ptr<acc_t>()), var_(a.var.mutable_data_ptr<acc_t>()),
        slope_(static_cast<acc_t>(a.slope)), stream_(a.x.nbytes() >= kStreamBytes),
        f_(a.weight, a.bias, C_) {}

  void run() {
    const int64_t G = cache_group(N_, C_, HW_, 2 * sizeof(scalar_t));
    if (G > 0) {
      at::parallel_for(0, C_, G, [&](int64_t c0, int64_t c1) {
        for (int64_t g0 = c0; g0 < c1; g0 += G) group(g0, std::min(c1, g0 + G));
        if (stream_) stream_fence();
      });
    } else {
      streamed();
    }
  }

 private:
  // The statistics of channels [g0, g1), then their planes normalised while cached.
  void group(int64_t g0, int64_t g1) {
    std::vector<Moments<double>> acc(g1 - g0, Moments<double>{0, 0, 0});
    for (int64_t n = 0; a_.training && n < N_; ++n) {
      for (int64_t c = g0; c < g1; ++c) merge(acc[c - g0], plane_moments(x_ + plane(n, c), HW_));
    }
    for (int64_t c = g0; c < g1; ++c) finish_channel(c, acc[c - g0]);
    for (int64_t n = 0; n < N_; ++n) {
      for (int64_t c = g0; c < g1; ++c) apply_plane(n * C_ + c);
    }
  }

  // A channel alone outgrows the cache: two streaming passes over all planes.
  void streamed() {
    const int64_t P = N_ * C_, grain = plane_grain(HW_);
    std::vector<Moments<double>> planes(a_.training ? P : 0);
    if (a_.training) {
      at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
        for (int64_t q = p0; q < p1; ++q) planes[q] = plane_moments(x_ + q * HW_, HW_);
      });
    }
    for (int64_t c = 0; c < C_; ++c) {
      Moments<double> acc{0, 0, 0};
      for (int64_t n = 0; a_.training && n < N_; ++n) merge(acc, planes[n * C_ + c]);
      finish_channel(c, acc);
    }
    at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) apply_plane(q);
      if (stream_) stream_fence();
    });
  }

  static void merge(Moments<double>& acc, const Moments<double>& r) {
    merge_moments(acc.mean, acc.m2, acc.count, r.mean, r.m2, r.count);
  }

  void finish_channel(int64_t c, const Moments<double>& mo) {
    if (a_.training) {
      mean_[c] = static_cast<acc_t>(mo.mean);
      var_[c] = static_cast<acc_t>(mo.m2 / static_cast<double>(mo.count));
    }
    f_.fold(c, mean_[c], var_[c], a_.eps);
  }

  void apply_plane(int64_t q) {
    const int64_t c = q % C_;
    run_apply<scalar_t, acc_t>(x_ + q * HW_, y_ + q * HW_, HW_, f_.scale[c], f_.shift[c], slope_,
                               stream_);
  }

  int64_t plane(int64_t n, int64_t c) const { return (n * C_ + c) * HW_; }

  const ForwardArgs& a_;
  const int64_t N_, C_, HW_;
  const scalar_t* x_;
  scalar_t* y_;
  acc_t* mean_;
  acc_t* var_;
  const acc_t slope_;
  const bool stream_;
  Folded<acc_t> f_;
};

template <typename scalar_t>
class NchwBackward {
  using acc_t = acc_of_t<scalar_t>;

 public:
  explicit NchwBackward(const BackwardArgs& a)
      : a_(a), N_(a.x.size(0)), C_(a.x.size(1)), HW_(a.x.size(2) * a.x.size(3)),
        x_(a.x.const_data_ptr<scalar_t>()), dy_(a.dy.const_data_ptr<scalar_t>()),
        dx_(a.dx ? a.dx->mutable_data_ptr<scalar_t>() : nullptr),
        mean_(a.mean.const_data_ptr<acc_t>()), slope_(static_cast<acc_t>(a.slope)),
        stream_(a.x.nbytes() >= kStreamBytes), f_(a.weight, a.bias, C_), coeffs_(C_) {
    f_.fold_all(mean_, a.var.const_data_ptr<acc_t>(), a.eps);
  }

  void run() {
    const int64_t G = cache_group(N_, C_, HW_, (dx_ ? 3 : 2) * sizeof(scalar_t));
    if (G > 0) {
      at::parallel_for(0, C_, G, [&](int64_t c0, int64_t c1) {
        for (int64_t g0 = c0; g0 < c1; g0 += G) group(g0, std::min(c1, g0 + G));
        if (stream_) stream_fence();
      });
    } else {
      streamed();
    }
  }

 private:
  // The sums of channels [g0, g1), then their input gradients while cached.
  void group(int64_t g0, int64_t g1) {
    std::vector<double> s(g1 - g0, 0.0), sx(g1 - g0, 0.0);
    for (int64_t n = 0; n < N_; ++n) {
      for (int64_t c = g0; c < g1; ++c) plane_sums(n * C_ + c, s[c - g0], sx[c - g0]);
    }
    for (int64_t c = g0; c < g1; ++c) finish_channel(c, s[c - g0], sx[c - g0]);
    for (int64_t n = 0; dx_ && n < N_; ++n) {
      for (int64_t c = g0; c < g1; ++c) plane_dx(n * C_ + c);
    }
  }

  // A channel alone outgrows the cache: two streaming passes over all planes.
  void streamed() {
    const int64_t P = N_ * C_, grain = plane_grain(HW_);
    std::vector<double> ps(P, 0.0), psx(P, 0.0);
    at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) plane_sums(q, ps[q], psx[q]);
    });
    for (int64_t c = 0; c < C_; ++c) {
      double s = 0, sx = 0;
      for (int64_t n = 0; n < N_; ++n) {
        s += ps[n * C_ + c];
        sx += psx[n * C_ + c];
      }
      finish_channel(c, s, sx);
    }
    if (!dx_) return;
    at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) plane_dx(q);
      if (stream_) stream_fence();
    });
  }

  // Adds sum(dz) and sum(dz * (x - mean)) over plane q (= n * C + c) to s and sx.
  void plane_sums(int64_t q, double& s, double& sx) const {
    const int64_t c = q % C_, base = q * HW_;
    double ps = 0, psx = 0;
    for (int64_t off = 0; off < HW_; off += kChunk) {
      run_grad_sums<scalar_t, acc_t>(dy_ + base + off, x_ + base + off,
                                     std::min(kChunk, HW_ - off), f_.scale[c], f_.shift[c],
                                     slope_, mean_[c], ps, psx);
    }
    s += ps;
    sx += psx;
  }

  void finish_channel(int64_t c, double s, double sx) {
    a_.sum_dz[c] = s;
    a_.sum_dz_xc[c] = sx;
    coeffs_[c] = bn_act::grad_coeffs<acc_t>(a_.training, f_.weight[c], f_.invstd[c],
                                            static_cast<acc_t>(s), static_cast<acc_t>(sx),
                                            N_ * HW_);
  }

  void plane_dx(int64_t q) {
    const int64_t c = q % C_, base = q * HW_;
    run_grad_input<scalar_t, acc_t>(dy_ + base, x_ + base, dx_ + base, HW_, f_.scale[c],
                                    f_.shift[c], slope_, mean_[c], coeffs_[c], stream_);
  }

  const BackwardArgs& a_;
  const int64_t N_, C_, HW_;
  const scalar_t* x_;
  const scalar_t* dy_;
  scalar_t* dx_;
  const acc_t* mean_;
  const acc_t slope_;
  const bool stream_;
  Folded<acc_t> f_;
  std::vector<bn_act::GradCoeffs<acc_t>> coeffs_;
};

}  // namespace

void forward_nchw(const ForwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.x.scalar_type(), "bn_act_forward",
                                  [&] { NchwForward<scalar_t>(a).run(); });
}

void backward_nchw(const BackwardArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.x.scalar_type(), "bn_act_backward",
                                  [&] { NchwBackward<scalar_t>(a).run(); });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
