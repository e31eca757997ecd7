// Shared pieces of the CPU kernels of the fused BatchNorm2d + LeakyReLU op: the
// arguments every layout's kernels take, tuning constants, per-channel constants,
// runs of contiguous values (statistics, apply, gradient sums, input gradients), loops
// over a row's channel vectors, and block merges. The kernels are one file per layout:
// bn_act_nchw.cpp, bn_act_nhwc.cpp (channels_last, at least a vector of channels) and
// bn_act_nhwc_small.cpp (channels_last, fewer); bn_act.cpp picks one per call.
//
// Statistics: each run of at most kChunk values is reduced with two passes (mean, then
// squared deviations) while it is in L1, and runs or blocks are merged with Chan's
// formula in double, in a fixed order, so results do not depend on the thread count.
// Never sum / sum-of-squares.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../../bn_act_math.h"
#include "../../common.h"
#include "kernels.h"
#include "vec_io.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {

// One call as the layouts' kernels see it. Statistics and per-channel sums are in the
// accumulation type (acc_of_t; double for the sums).
struct ForwardArgs {
  const at::Tensor& x;  // NCHW-contiguous or channels_last
  at::Tensor& y;        // x's layout
  at::Tensor& mean;     // (C): written in training, the running mean in eval
  at::Tensor& var;      // (C): biased batch variance, or the running variance
  const OptTensor& weight;
  const OptTensor& bias;
  bool training;
  double eps, slope;
};

struct BackwardArgs {
  const at::Tensor& dy;  // x's layout
  const at::Tensor& x;
  at::Tensor* dx;  // null when the input gradient is not wanted
  const at::Tensor& mean;
  const at::Tensor& var;
  const OptTensor& weight;
  const OptTensor& bias;
  bool training;
  double eps, slope;
  double* sum_dz;     // (C) out: sum(dz), dz = dy * act'(z)
  double* sum_dz_xc;  // (C) out: sum(dz * (x - mean))
};

// The layouts (bn_act_nchw.cpp, bn_act_nhwc.cpp, bn_act_nhwc_small.cpp).
void forward_nchw(const ForwardArgs& a);
void backward_nchw(const BackwardArgs& a);
void forward_nhwc(const ForwardArgs& a);
void backward_nhwc(const BackwardArgs& a);
void forward_nhwc_small(const ForwardArgs& a);
void backward_nhwc_small(const BackwardArgs& a);

// Lanes of a vector of x's accumulation type: channels_last inputs with fewer channels
// take the small-C kernels.
inline int64_t acc_lanes(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::vec::Vectorized<double>::size()
                                        : at::vec::Vectorized<float>::size();
}

using bn_act::merge_moments;
using bn_act::Moments;

constexpr int64_t kChunk = 2048;          // values per two-pass run (8 KiB of fp32)
constexpr int64_t kBlockElems = 16384;    // NHWC rows per block * channels

// Planes per parallel task so that a task covers at least ~kBlockElems values.
inline int64_t plane_grain(int64_t hw) { return std::max<int64_t>(1, kBlockElems / hw); }

// NCHW cache blocking: bytes of all streams (inputs and outputs) that one thread's
// group of channels may occupy so that its second pass hits L2/L3 instead of memory.
constexpr int64_t kGroupBytes = int64_t(4) << 20;

// Outputs at least this large are written with non-temporal stores: they cannot
// stay cached anyway, and streaming them keeps the inputs of the second pass cached.
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// Channels per cache group (0 when a single channel outgrows kGroupBytes), capped
// so every thread gets a group.
// Below this many values a thread team costs more than it saves.
constexpr int64_t kSerialElems = 32768;

// The grain that keeps at::parallel_for over [0, range) on the calling thread for
// small inputs, else `grain`.
inline int64_t serial_if_small(int64_t numel, int64_t range, int64_t grain) {
  return numel < kSerialElems ? range + 1 : grain;
}

inline int64_t cache_group(int64_t N, int64_t C, int64_t HW, int64_t bytes_per_value) {
  if (N * C * HW < kSerialElems) return C;  // one group, run inline
  const int64_t per_channel = N * HW * bytes_per_value;
  if (per_channel > kGroupBytes) return 0;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t fair = (C + threads - 1) / threads;
  return std::max<int64_t>(1, std::min(fair, kGroupBytes / per_channel));
}

// ---------------------------------------------------------------------------
// Runs of contiguous values (one plane, or a piece of one).

// Moments of p[0..n) by two passes over it. The first pass sums x - p[0] rather
// than x, so the run's mean keeps full precision when |mean| >> std.
template <typename scalar_t>
Moments<double> run_moments(const scalar_t* p, int64_t n) {
  using IO = VecIo<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const acc_t pivot = static_cast<acc_t>(p[0]);
  const Vec vpivot(pivot);
  Vec s0(acc_t(0)), s1(acc_t(0));
  int64_t i = 0;
  for (; i + 2 * K <= n; i += 2 * K) {
    s0 += IO::load(p + i) - vpivot;
    s1 += IO::load(p + i + K) - vpivot;
  }
  for (; i + K <= n; i += K) s0 += IO::load(p + i) - vpivot;
  if (i < n) s0 += masked<acc_t>(IO::load(p + i, n - i) - vpivot, n - i);
  const acc_t mean = pivot + lane_sum<acc_t>(s0 + s1) / static_cast<acc_t>(n);
  const Vec vmean(mean);
  Vec q0(acc_t(0)), q1(acc_t(0));
  i = 0;
  for (; i + 2 * K <= n; i += 2 * K) {
    const Vec d0 = IO::load(p + i) - vmean;
    const Vec d1 = IO::load(p + i + K) - vmean;
    q0 = at::vec::fmadd(d0, d0, q0);
    q1 = at::vec::fmadd(d1, d1, q1);
  }
  for (; i + K <= n; i += K) {
    const Vec d = IO::load(p + i) - vmean;
    q0 = at::vec::fmadd(d, d, q0);
  }
  if (i < n) {
    const Vec d = masked<acc_t>(IO::load(p + i, n - i) - vmean, n - i);
    q0 = at::vec::fmadd(d, d, q0);
  }
  return {static_cast<double>(mean), static_cast<double>(lane_sum<acc_t>(q0 + q1)), n};
}

// y = leaky(x * scale + shift) over p[0..n). `stream`: non-temporal stores (fp32 only).
template <typename scalar_t, typename acc_t>
void run_apply(const scalar_t* x, scalar_t* y, int64_t n, acc_t scale, acc_t shift,
               acc_t slope, bool stream = false) {
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const Vec vs(scale), vb(shift), vslope(slope);
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, float> && kCanStream) {
    if (stream && aligned64(y)) {
      for (; i + K <= n; i += K) {
        stream_store(y + i, leaky_vec<acc_t>(at::vec::fmadd(IO::load(x + i), vs, vb), vslope));
      }
    }
  }
  for (; i + K <= n; i += K) {
    IO::store(y + i, leaky_vec<acc_t>(at::vec::fmadd(IO::load(x + i), vs, vb), vslope));
  }
  if (i < n) {
    IO::store(y + i, leaky_vec<acc_t>(at::vec::fmadd(IO::load(x + i, n - i), vs, vb), vslope),
              n - i);
  }
}

// Backward sums over a run: sum(dz) and sum(dz * (x - mean)), dz = dy * act'(z).
template <typename scalar_t, typename acc_t>
void run_grad_sums(const scalar_t* dy, const scalar_t* x, int64_t n, acc_t scale, acc_t shift,
                   acc_t slope, acc_t mean, double& sum_dz, double& sum_dz_xc) {
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const Vec vs(scale), vb(shift), vslope(slope), vmean(mean);
  Vec a(acc_t(0)), b(acc_t(0));
  int64_t i = 0;
  for (; i + K <= n; i += K) {
    const Vec xv = IO::load(x + i);
    const Vec dz = IO::load(dy + i) * leaky_grad_vec<acc_t>(at::vec::fmadd(xv, vs, vb), vslope);
    a += dz;
    b = at::vec::fmadd(dz, xv - vmean, b);
  }
  if (i < n) {
    const Vec xv = IO::load(x + i, n - i);
    // dy's tail lanes load as zero, so dz (and both products) vanish there.
    const Vec dz = IO::load(dy + i, n - i) *
                   leaky_grad_vec<acc_t>(at::vec::fmadd(xv, vs, vb), vslope);
    a += dz;
    b = at::vec::fmadd(dz, xv - vmean, b);
  }
  sum_dz += static_cast<double>(lane_sum<acc_t>(a));
  sum_dz_xc += static_cast<double>(lane_sum<acc_t>(b));
}

// dx = gain * (dz - proj * (x - mean) - mean_dz) over a run. `stream` as in run_apply.
template <typename scalar_t, typename acc_t>
void run_grad_input(const scalar_t* dy, const scalar_t* x, scalar_t* dx, int64_t n, acc_t scale,
                    acc_t shift, acc_t slope, acc_t mean, const bn_act::GradCoeffs<acc_t>& g,
                    bool stream = false) {
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const Vec vs(scale), vb(shift), vslope(slope), vmean(mean), vgain(g.gain), vproj(g.proj),
      vmdz(g.mean_dz);
  auto body = [&](const Vec& xv, const Vec& dyv) {
    const Vec dz = dyv * leaky_grad_vec<acc_t>(at::vec::fmadd(xv, vs, vb), vslope);
    return vgain * (dz - at::vec::fmadd(vproj, xv - vmean, vmdz));
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

// Forward.

// Moments of one (n, c) plane of HW values, run by run.
template <typename scalar_t>
Moments<double> plane_moments(const scalar_t* plane, int64_t HW) {
  double m = 0, m2 = 0;
  int64_t cnt = 0;
  for (int64_t off = 0; off < HW; off += kChunk) {
    auto r = run_moments(plane + off, std::min(kChunk, HW - off));
    merge_moments(m, m2, cnt, r.mean, r.m2, r.count);
  }
  return {m, m2, cnt};
}

// Calls f(c, width) for each vector of channels [c, c + K) of a row of C channels:
// full vectors first, with a width whose loads and stores are plain, then the tail
// (if any) with masked ones. Keeps the per-vector width tests out of the hot loops.
// Stream: store with non-temporal stores (fp32, 64-byte aligned addresses only).
template <typename scalar_t, bool Stream = false>
struct FullWidth {
  using IO = VecIo<scalar_t>;
  typename IO::Vec load(const scalar_t* p) const { return IO::load(p); }
  template <typename acc_t>
  at::vec::Vectorized<acc_t> load_acc(const acc_t* p) const {
    return at::vec::Vectorized<acc_t>::loadu(p);
  }
  void store(scalar_t* p, const typename IO::Vec& v) const {
    if constexpr (Stream && std::is_same_v<scalar_t, float>) {
      stream_store(p, v);
    } else {
      IO::store(p, v);
    }
  }
  template <typename acc_t>
  void store_acc(acc_t* p, const at::vec::Vectorized<acc_t>& v) const { v.store(p); }
};

template <typename scalar_t>
struct PartialWidth {
  using IO = VecIo<scalar_t>;
  int64_t w;
  typename IO::Vec load(const scalar_t* p) const { return IO::load(p, w); }
  template <typename acc_t>
  at::vec::Vectorized<acc_t> load_acc(const acc_t* p) const {
    return at::vec::Vectorized<acc_t>::loadu(p, w);
  }
  void store(scalar_t* p, const typename IO::Vec& v) const { IO::store(p, v, w); }
  template <typename acc_t>
  void store_acc(acc_t* p, const at::vec::Vectorized<acc_t>& v) const { v.store(p, w); }
};

template <typename scalar_t, bool Stream = false, typename F>
inline void for_channel_vectors(int64_t C, const F& f) {
  constexpr int64_t K = VecIo<scalar_t>::kSize;
  int64_t c = 0;
  for (; c + K <= C; c += K) f(c, FullWidth<scalar_t, Stream>{});
  if (c < C) f(c, PartialWidth<scalar_t>{C - c});
}

// Whether an NHWC output of C channels at `out` is written with non-temporal stores:
// fp32, large (kStreamBytes, as the NCHW paths), every row 64-byte aligned.
template <typename scalar_t>
inline bool stream_rows(const scalar_t* out, int64_t C, int64_t nbytes) {
  return std::is_same_v<scalar_t, float> && kCanStream && nbytes >= kStreamBytes &&
         (C * static_cast<int64_t>(sizeof(scalar_t))) % 64 == 0 && aligned64(out);
}

// Per-channel (mean, M2) of NHWC row blocks of B rows, merged in block order (Chan):
// the result does not depend on the thread count.
template <typename acc_t>
void merge_blocks(const std::vector<acc_t>& bmean, const std::vector<acc_t>& bm2, int64_t nblk,
                  int64_t B, int64_t R, int64_t C, acc_t* mp, acc_t* vp) {
  // nblk * C merges: a thread team only pays for itself on large inputs
  at::parallel_for(0, C, nblk * C < 65536 ? C + 1 : 16, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double m = 0, m2 = 0;
      int64_t cnt = 0;
      for (int64_t blk = 0; blk < nblk; ++blk) {
        const int64_t rows = std::min(R, (blk + 1) * B) - blk * B;
        merge_moments<double>(m, m2, cnt, bmean[blk * C + c], bm2[blk * C + c], rows);
      }
      mp[c] = static_cast<acc_t>(m);
      vp[c] = static_cast<acc_t>(m2 / static_cast<double>(cnt));
    }
  });
}

// Per-channel totals of NHWC row blocks' backward sums, added in block order.
template <typename T>
void sum_blocks(const std::vector<T>& bsum, const std::vector<T>& bsumx, int64_t nblk, int64_t C,
                double* sum_dz, double* sum_dz_xc) {
  for (int64_t c = 0; c < C; ++c) {
    double s = 0, sx = 0;
    for (int64_t blk = 0; blk < nblk; ++blk) {
      s += bsum[blk * C + c];
      sx += bsumx[blk * C + c];
    }
    sum_dz[c] = s;
    sum_dz_xc[c] = sx;
  }
}

// ---------------------------------------------------------------------------
// Per-channel constants in the accumulation type: the affine parameters (1 and 0 when
// the op is not affine), and once the statistics are known invstd and the fold
// z = x * scale + shift.

template <typename acc_t>
struct Folded {
  std::vector<acc_t> weight, bias, invstd, scale, shift;

  Folded(const OptTensor& w, const OptTensor& b, int64_t C)
      : weight(C, acc_t(1)), bias(C, acc_t(0)), invstd(C), scale(C), shift(C) {
    copy_param(w, weight);
    copy_param(b, bias);
  }
  void fold(int64_t c, acc_t mean, acc_t var, double eps) {
    invstd[c] = bn_act::inv_std<acc_t>(var, static_cast<acc_t>(eps));
    bn_act::fold_affine<acc_t>(mean, invstd[c], weight[c], bias[c], scale[c], shift[c]);
  }
  void fold_all(const acc_t* mean, const acc_t* var, double eps) {
    for (size_t c = 0; c < weight.size(); ++c) fold(c, mean[c], var[c], eps);
  }

 private:
  static void copy_param(const OptTensor& t, std::vector<acc_t>& out) {
    if (!t.has_value() || !t->defined()) return;
    const auto v = t->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    std::copy(v.template const_data_ptr<acc_t>(), v.template const_data_ptr<acc_t>() + out.size(),
              out.begin());
  }
};

// The input gradient's per-channel coefficients (bn_act::grad_coeffs) as arrays, for the
// kernels that vectorise over channels; `count` values per channel.
template <typename acc_t>
struct GradTables {
  std::vector<acc_t> gain, proj, mean_dz;

  GradTables(const Folded<acc_t>& f, bool training, const double* sum_dz,
             const double* sum_dz_xc, int64_t count)
      : gain(f.weight.size()), proj(f.weight.size()), mean_dz(f.weight.size()) {
    for (size_t c = 0; c < gain.size(); ++c) {
      const auto g = bn_act::grad_coeffs<acc_t>(training, f.weight[c], f.invstd[c],
                                                static_cast<acc_t>(sum_dz[c]),
                                                static_cast<acc_t>(sum_dz_xc[c]), count);
      gain[c] = g.gain;
      proj[c] = g.proj;
      mean_dz[c] = g.mean_dz;
    }
  }
};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
