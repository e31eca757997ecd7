// CPU kernels of the fused BatchNorm2d + LeakyReLU op (schemas in csrc/bn_act.cpp).
//
// Layouts: NCHW-contiguous and channels_last (NHWC) inputs are read in place;
// anything else is made contiguous first.
//
// NCHW is cache-blocked by groups of adjacent channels (parallel over groups): a
// group's planes (N runs of G*H*W contiguous values) are reduced, then normalised
// and activated (forward) or turned into input gradients (backward) while they are
// still in L2/L3, so memory sees each input once. Groups of several channels keep
// the runs long; one channel at a time (as eager does) reads H*W-value runs at a
// stride of C*H*W, which for power-of-two sizes piles every plane onto the same
// cache sets. When one channel alone outgrows the cache, both passes stream over
// all planes in memory order instead. Planes are merged per channel in the order
// n = 0..N-1 either way.
//
// NHWC works on blocks of rows (parallel over blocks, vectorised over channels):
// per-block partial statistics are merged per channel in a fixed order, so the
// result does not depend on the number of threads.
//
// Statistics: each run of at most kChunk values is reduced with two passes
// (mean, then squared deviations) while it is in L1, and runs are merged with
// Chan's formula in double. Never sum / sum-of-squares.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../../bn_act_checks.h"
#include "../../bn_act_math.h"
#include "../../common.h"
#include "kernels.h"
#include "transpose.h"
#include "vec_io.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

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

// ---------------------------------------------------------------------------
// Per-channel parameters in the accumulation type.

template <typename acc_t>
struct ChannelParams {
  std::vector<acc_t> weight, bias;  // 1 and 0 when the op is not affine
};

template <typename acc_t>
ChannelParams<acc_t> channel_params(const c10::optional<at::Tensor>& weight,
                                    const c10::optional<at::Tensor>& bias, int64_t C) {
  const auto dt = c10::CppTypeToScalarType<acc_t>::value;
  ChannelParams<acc_t> p;
  p.weight.assign(C, acc_t(1));
  p.bias.assign(C, acc_t(0));
  if (weight.has_value() && weight->defined()) {
    auto w = weight->to(dt).contiguous();
    std::copy(w.template data_ptr<acc_t>(), w.template data_ptr<acc_t>() + C, p.weight.begin());
  }
  if (bias.has_value() && bias->defined()) {
    auto b = bias->to(dt).contiguous();
    std::copy(b.template data_ptr<acc_t>(), b.template data_ptr<acc_t>() + C, p.bias.begin());
  }
  return p;
}

// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
// Mixed layouts in backward: an NHWC input with an NCHW incoming gradient (a
// channels_last model whose output feeds NCHW code). The gradient is read in place,
// a tile of rows at a time moved into a small NHWC-ordered buffer by at::vec's tile
// transposes, instead of copied whole first: at (64, 64, 32, 32) fp32 the whole copy
// (ATen's strided copy) took 2-4.6 ms, the tiles add ~1.5 ms to the 2.9 ms backward.
// Rows r of the NHWC view are (n, hw) = (r / HW, r % HW); the NCHW side of rows
// [r0, r1) is, per image, C runs of up to HW contiguous values.

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

// dst_nchw[n, c, hw] = buf[(r - r0) * C + c] for rows r in [r0, r1), each channel's run of
// positions written front to back (transpose_tiles with ByDst).
template <typename scalar_t>
void scatter_nchw_rows(const scalar_t* buf, int64_t C, int64_t HW, int64_t r0, int64_t r1,
                       scalar_t* dst) {
  for (int64_t r = r0; r < r1;) {
    const int64_t n = r / HW, hw = r % HW, len = std::min(r1 - r, HW - hw);
    transpose_tiles<scalar_t, true>(buf + (r - r0) * C, C, dst + n * C * HW + hw, HW, len, C);
    r += len;
  }
}

// Whether the mixed-layout paths serve x (the wide NHWC path: C at least a vector).
inline bool mixed_layout_ok(const at::Tensor& x) {
  const int64_t K = x.scalar_type() == at::kDouble ? at::vec::Vectorized<double>::size()
                                                   : at::vec::Vectorized<float>::size();
  return x.dim() == 4 && x.size(1) >= K;
}

// Rows per transposed tile: ~16 KiB of values, a multiple of 16 rows.
inline int64_t mixed_tile_rows(int64_t C) {
  return std::max<int64_t>(16, (4096 / std::max<int64_t>(C, 1)) / 16 * 16);
}

template <typename scalar_t>
void forward_nchw(const at::Tensor& x, at::Tensor& y, at::Tensor& mean_t, at::Tensor& var_t,
                  bool training, double eps, double slope, const ChannelParams<acc_of_t<scalar_t>>& p) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  acc_t* mp = mean_t.mutable_data_ptr<acc_t>();
  acc_t* vp = var_t.mutable_data_ptr<acc_t>();
  const acc_t aslope = static_cast<acc_t>(slope);
  std::vector<acc_t> scale(C), shift(C);
  // Planes are merged per channel in order n = 0..N-1 on both paths, so the result
  // is the same for any thread count and either path.
  auto finish_channel = [&](int64_t c, const Moments<double>& mo) {
    if (training) {
      mp[c] = static_cast<acc_t>(mo.mean);
      vp[c] = static_cast<acc_t>(mo.m2 / static_cast<double>(mo.count));
    }
    bn_act::fold_affine<acc_t>(mp[c], bn_act::inv_std<acc_t>(vp[c], static_cast<acc_t>(eps)),
                               p.weight[c], p.bias[c], scale[c], shift[c]);
  };

  const bool stream = x.nbytes() >= kStreamBytes;
  const int64_t G = cache_group(N, C, HW, 2 * sizeof(scalar_t));
  if (G > 0) {
    // Cache-blocked: reduce a group of channels, then normalise it while it is cached.
    at::parallel_for(0, C, G, [&](int64_t c0, int64_t c1) {
      std::vector<Moments<double>> acc(G);
      for (int64_t g0 = c0; g0 < c1; g0 += G) {
        const int64_t g1 = std::min(c1, g0 + G);
        if (training) {
          std::fill(acc.begin(), acc.end(), Moments<double>{0, 0, 0});
          for (int64_t n = 0; n < N; ++n) {
            for (int64_t c = g0; c < g1; ++c) {
              auto r = plane_moments(xp + (n * C + c) * HW, HW);
              auto& a = acc[c - g0];
              merge_moments(a.mean, a.m2, a.count, r.mean, r.m2, r.count);
            }
          }
        }
        for (int64_t c = g0; c < g1; ++c) finish_channel(c, acc[c - g0]);
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t c = g0; c < g1; ++c) {
            const int64_t base = (n * C + c) * HW;
            run_apply<scalar_t, acc_t>(xp + base, yp + base, HW, scale[c], shift[c], aslope,
                                       stream);
          }
        }
      }
      if (stream) stream_fence();
    });
    return;
  }
  // A channel alone outgrows the cache: two streaming passes over all planes.
  const int64_t P = N * C;
  const int64_t grain = plane_grain(HW);
  std::vector<Moments<double>> planes(training ? P : 0);
  if (training) {
    at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) planes[q] = plane_moments(xp + q * HW, HW);
    });
  }
  for (int64_t c = 0; c < C; ++c) {
    Moments<double> a{0, 0, 0};
    if (training) {
      for (int64_t n = 0; n < N; ++n) {
        const auto& r = planes[n * C + c];
        merge_moments(a.mean, a.m2, a.count, r.mean, r.m2, r.count);
      }
    }
    finish_channel(c, a);
  }
  at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t q = p0; q < p1; ++q) {
      const int64_t c = q % C;
      run_apply<scalar_t, acc_t>(xp + q * HW, yp + q * HW, HW, scale[c], shift[c], aslope, stream);
    }
    if (stream) stream_fence();
  });
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

// ---------------------------------------------------------------------------
// NHWC with fewer channels than a vector holds (C < K). Rows are too short to vectorise
// over channels (a masked vector per row ran ~5x slower than NCHW), so the tensor is
// walked as one flat array in periods of L = lcm(C, K) values: P = L / K vectors, L / C
// rows. Lane l of a period's j-th vector holds channel (j*K + l) % C, and per-channel
// constants are laid out the same way ("patterns"). Partial sums stay per block of rows
// and are merged per channel in a fixed order, as on the wide path.

constexpr int64_t kMaxLanes = 64;  // >= any Vectorized<acc_t>::size()

template <typename acc_t>
struct SmallC {
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t K = Vec::size();
  int64_t C, L, P, rows;  // channels, values / vectors / rows per period
  explicit SmallC(int64_t c) : C(c), L(std::lcm(c, K)), P(L / K), rows(L / c) {}

  // patterns of per-channel values v[0..C)
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
};

// Rows per block of the small-C statistics: ~kBlockElems values, whole periods.
inline int64_t small_block_rows(int64_t R, int64_t C, int64_t period_rows) {
  const int64_t want = std::min(R, std::max<int64_t>(1, kBlockElems / C));
  return std::max(period_rows, want / period_rows * period_rows);
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

// The NHWC backward's per-channel input-gradient coefficients (bn_act::grad_coeffs).
template <typename acc_t>
void fill_grad_coeffs(bool training, const ChannelParams<acc_t>& p, const acc_t* invstd,
                      const double* sum_dz, const double* sum_dz_xc, int64_t R, int64_t C,
                      acc_t* gain, acc_t* proj, acc_t* mdz) {
  for (int64_t c = 0; c < C; ++c) {
    const auto g = bn_act::grad_coeffs<acc_t>(training, p.weight[c], invstd[c],
                                              static_cast<acc_t>(sum_dz[c]),
                                              static_cast<acc_t>(sum_dz_xc[c]), R);
    gain[c] = g.gain;
    proj[c] = g.proj;
    mdz[c] = g.mean_dz;
  }
}

template <typename scalar_t>
void forward_nhwc_small(const at::Tensor& x, at::Tensor& y, at::Tensor& mean_t,
                        at::Tensor& var_t, bool training, double eps, double slope,
                        const ChannelParams<acc_of_t<scalar_t>>& p) {
  using acc_t = acc_of_t<scalar_t>;
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const int64_t C = x.size(1);
  const int64_t R = x.numel() / C;
  const SmallC<acc_t> sc(C);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  acc_t* mp = mean_t.mutable_data_ptr<acc_t>();
  acc_t* vp = var_t.mutable_data_ptr<acc_t>();

  if (training) {
    const int64_t B = small_block_rows(R, C, sc.rows);
    const int64_t nblk = (R + B - 1) / B;
    std::vector<acc_t> bmean(nblk * C), bm2(nblk * C);
    at::parallel_for(0, nblk, serial_if_small(x.numel(), nblk, 1), [&](int64_t b0, int64_t b1) {
      Vec pat[kMaxLanes], acc[kMaxLanes];
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * B, rows = std::min(R, r0 + B) - r0;
        const scalar_t* base = xp + r0 * C;
        const int64_t full = rows / sc.rows * sc.L;  // values in whole periods
        // Pass 1: sums shifted by the block's first row (as run_moments), then means.
        acc_t piv[kMaxLanes], m[kMaxLanes];
        double s[kMaxLanes] = {};
        for (int64_t c = 0; c < C; ++c) piv[c] = static_cast<acc_t>(base[c]);
        sc.pattern(piv, pat);
        for (int64_t j = 0; j < sc.P; ++j) acc[j] = Vec(acc_t(0));
        for (int64_t i = 0; i < full; i += sc.L) {
          for (int64_t j = 0; j < sc.P; ++j) acc[j] += IO::load(base + i + j * K) - pat[j];
        }
        sc.to_channels(acc, s);
        for (int64_t i = full; i < rows * C; ++i) {
          s[i % C] += static_cast<double>(static_cast<acc_t>(base[i]) - piv[i % C]);
        }
        for (int64_t c = 0; c < C; ++c) {
          m[c] = piv[c] + static_cast<acc_t>(s[c] / static_cast<double>(rows));
        }
        // Pass 2: squared deviations from the block mean.
        double q[kMaxLanes] = {};
        sc.pattern(m, pat);
        for (int64_t j = 0; j < sc.P; ++j) acc[j] = Vec(acc_t(0));
        for (int64_t i = 0; i < full; i += sc.L) {
          for (int64_t j = 0; j < sc.P; ++j) {
            const Vec d = IO::load(base + i + j * K) - pat[j];
            acc[j] = at::vec::fmadd(d, d, acc[j]);
          }
        }
        sc.to_channels(acc, q);
        for (int64_t i = full; i < rows * C; ++i) {
          const acc_t d = static_cast<acc_t>(base[i]) - m[i % C];
          q[i % C] += static_cast<double>(d * d);
        }
        for (int64_t c = 0; c < C; ++c) {
          bmean[blk * C + c] = m[c];
          bm2[blk * C + c] = static_cast<acc_t>(q[c]);
        }
      }
    });
    merge_blocks<acc_t>(bmean, bm2, nblk, B, R, C, mp, vp);
  }

  acc_t scale[kMaxLanes], shift[kMaxLanes];
  for (int64_t c = 0; c < C; ++c) {
    bn_act::fold_affine<acc_t>(mp[c], bn_act::inv_std<acc_t>(vp[c], static_cast<acc_t>(eps)),
                               p.weight[c], p.bias[c], scale[c], shift[c]);
  }
  const acc_t slope_a = static_cast<acc_t>(slope);
  const int64_t n = x.numel();
  const int64_t periods = n / sc.L;
  at::parallel_for(0, periods, std::max<int64_t>(1, kBlockElems / sc.L), [&](int64_t q0, int64_t q1) {
    Vec sp[kMaxLanes], bp[kMaxLanes];
    sc.pattern(scale, sp);
    sc.pattern(shift, bp);
    const Vec vslope(slope_a);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t i = q * sc.L;
      for (int64_t j = 0; j < sc.P; ++j) {
        const Vec z = at::vec::fmadd(IO::load(xp + i + j * K), sp[j], bp[j]);
        IO::store(yp + i + j * K, leaky_vec<acc_t>(z, vslope));
      }
    }
  });
  for (int64_t i = periods * sc.L; i < n; ++i) {
    const acc_t z = static_cast<acc_t>(xp[i]) * scale[i % C] + shift[i % C];
    yp[i] = static_cast<scalar_t>(bn_act::leaky<acc_t>(z, slope_a));
  }
}

template <typename scalar_t>
void backward_nhwc_small(const at::Tensor& dy, const at::Tensor& x, at::Tensor* dx,
                         const at::Tensor& mean_t, const at::Tensor& var_t, bool training,
                         double eps, double slope, const ChannelParams<acc_of_t<scalar_t>>& p,
                         double* sum_dz, double* sum_dz_xc) {
  using acc_t = acc_of_t<scalar_t>;
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const int64_t C = x.size(1);
  const int64_t R = x.numel() / C;
  const SmallC<acc_t> sc(C);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
  scalar_t* dxp = dx ? dx->mutable_data_ptr<scalar_t>() : nullptr;
  const acc_t* mp = mean_t.const_data_ptr<acc_t>();
  const acc_t* vp = var_t.const_data_ptr<acc_t>();
  acc_t invstd[kMaxLanes], scale[kMaxLanes], shift[kMaxLanes], mean[kMaxLanes];
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = mp[c];
    invstd[c] = bn_act::inv_std<acc_t>(vp[c], static_cast<acc_t>(eps));
    bn_act::fold_affine<acc_t>(mp[c], invstd[c], p.weight[c], p.bias[c], scale[c], shift[c]);
  }
  const acc_t slope_a = static_cast<acc_t>(slope);
  auto dz_of = [&](int64_t i) {
    const acc_t xv = static_cast<acc_t>(xp[i]);
    return static_cast<acc_t>(dyp[i]) *
           bn_act::leaky_grad<acc_t>(xv * scale[i % C] + shift[i % C], slope_a);
  };

  const int64_t B = small_block_rows(R, C, sc.rows);
  const int64_t nblk = (R + B - 1) / B;
  std::vector<double> bsum(nblk * C), bsumx(nblk * C);
  at::parallel_for(0, nblk, serial_if_small(x.numel(), nblk, 1), [&](int64_t b0, int64_t b1) {
    Vec sp[kMaxLanes], bp[kMaxLanes], mv[kMaxLanes], a[kMaxLanes], b[kMaxLanes];
    sc.pattern(scale, sp);
    sc.pattern(shift, bp);
    sc.pattern(mean, mv);
    const Vec vslope(slope_a);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * B, rows = std::min(R, r0 + B) - r0;
      const int64_t start = r0 * C, full = rows / sc.rows * sc.L;
      for (int64_t j = 0; j < sc.P; ++j) a[j] = b[j] = Vec(acc_t(0));
      for (int64_t i = start; i < start + full; i += sc.L) {
        for (int64_t j = 0; j < sc.P; ++j) {
          const Vec xv = IO::load(xp + i + j * K);
          const Vec dz = IO::load(dyp + i + j * K) *
                         leaky_grad_vec<acc_t>(at::vec::fmadd(xv, sp[j], bp[j]), vslope);
          a[j] += dz;
          b[j] = at::vec::fmadd(dz, xv - mv[j], b[j]);
        }
      }
      double* s = bsum.data() + blk * C;
      double* sx = bsumx.data() + blk * C;
      sc.to_channels(a, s);
      sc.to_channels(b, sx);
      for (int64_t i = start + full; i < start + rows * C; ++i) {
        const acc_t dz = dz_of(i);
        s[i % C] += static_cast<double>(dz);
        sx[i % C] += static_cast<double>(dz * (static_cast<acc_t>(xp[i]) - mean[i % C]));
      }
    }
  });
  sum_blocks(bsum, bsumx, nblk, C, sum_dz, sum_dz_xc);
  if (!dxp) return;
  acc_t gain[kMaxLanes], proj[kMaxLanes], mdz[kMaxLanes];
  fill_grad_coeffs<acc_t>(training, p, invstd, sum_dz, sum_dz_xc, R, C, gain, proj, mdz);
  const int64_t n = x.numel();
  const int64_t periods = n / sc.L;
  at::parallel_for(0, periods, std::max<int64_t>(1, kBlockElems / sc.L), [&](int64_t q0, int64_t q1) {
    Vec sp[kMaxLanes], bp[kMaxLanes], mv[kMaxLanes], gv[kMaxLanes], pv[kMaxLanes], dv[kMaxLanes];
    sc.pattern(scale, sp);
    sc.pattern(shift, bp);
    sc.pattern(mean, mv);
    sc.pattern(gain, gv);
    sc.pattern(proj, pv);
    sc.pattern(mdz, dv);
    const Vec vslope(slope_a);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t i = q * sc.L;
      for (int64_t j = 0; j < sc.P; ++j) {
        const Vec xv = IO::load(xp + i + j * K);
        const Vec dz = IO::load(dyp + i + j * K) *
                       leaky_grad_vec<acc_t>(at::vec::fmadd(xv, sp[j], bp[j]), vslope);
        const Vec t = at::vec::fmadd(pv[j], xv - mv[j], dv[j]);
        IO::store(dxp + i + j * K, gv[j] * (dz - t));
      }
    }
  });
  for (int64_t i = periods * sc.L; i < n; ++i) {
    const int64_t c = i % C;
    const acc_t t = proj[c] * (static_cast<acc_t>(xp[i]) - mean[c]) + mdz[c];
    dxp[i] = static_cast<scalar_t>(gain[c] * (dz_of(i) - t));
  }
}

template <typename scalar_t>
void forward_nhwc(const at::Tensor& x, at::Tensor& y, at::Tensor& mean_t, at::Tensor& var_t,
                  bool training, double eps, double slope, const ChannelParams<acc_of_t<scalar_t>>& p,
                  bool y_nchw = false) {
  using acc_t = acc_of_t<scalar_t>;
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const int64_t C = x.size(1);
  if (C < K) {
    forward_nhwc_small<scalar_t>(x, y, mean_t, var_t, training, eps, slope, p);
    return;
  }
  const int64_t R = x.numel() / C;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  acc_t* mp = mean_t.mutable_data_ptr<acc_t>();
  acc_t* vp = var_t.mutable_data_ptr<acc_t>();

  if (training) {
    const int64_t B = std::max<int64_t>(1, std::min(R, kBlockElems / C));
    const int64_t nblk = (R + B - 1) / B;
    std::vector<acc_t> bmean(nblk * C), bm2(nblk * C);
    acc_t* const bmean_p = bmean.data();
    acc_t* const bm2_p = bm2.data();
    at::parallel_for(0, nblk, serial_if_small(x.numel(), nblk, 1), [=](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * B, r1 = std::min(R, r0 + B);
        const Vec inv_rows(acc_t(1) / static_cast<acc_t>(r1 - r0));
        acc_t* bm = bmean_p + blk * C;
        acc_t* bq = bm2_p + blk * C;
        for_channel_vectors<scalar_t>(C, [&](int64_t c, auto width) {
          const scalar_t* col = xp + c;
          // Shifted by the block's first row, as in run_moments.
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
    });
    merge_blocks<acc_t>(bmean, bm2, nblk, B, R, C, mp, vp);
  }

  std::vector<acc_t> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    bn_act::fold_affine<acc_t>(mp[c], bn_act::inv_std<acc_t>(vp[c], static_cast<acc_t>(eps)),
                               p.weight[c], p.bias[c], scale[c], shift[c]);
  }
  const acc_t slope_a = static_cast<acc_t>(slope);
  const acc_t* scale_p = scale.data();
  const acc_t* shift_p = shift.data();
  if (y_nchw) {
    // an NCHW y: rows are computed into a tile buffer, then transposed out
    const int64_t HW = x.size(2) * x.size(3);
    const int64_t TB = std::max<int64_t>(16, kBlockElems / C / 16 * 16);
    at::parallel_for(0, R, TB, [=](int64_t r0, int64_t r1) {
      const Vec vslope(slope_a);
      std::vector<scalar_t> tile(TB * C);
      for (int64_t s0 = r0; s0 < r1; s0 += TB) {
        const int64_t s1 = std::min(r1, s0 + TB);
        for (int64_t r = s0; r < s1; ++r) {
          const scalar_t* xr = xp + r * C;
          scalar_t* tr = tile.data() + (r - s0) * C;
          for_channel_vectors<scalar_t>(C, [&](int64_t c, auto width) {
            const Vec z = at::vec::fmadd(width.load(xr + c), width.load_acc(scale_p + c),
                                         width.load_acc(shift_p + c));
            width.store(tr + c, leaky_vec<acc_t>(z, vslope));
          });
        }
        scatter_nchw_rows<scalar_t>(tile.data(), C, HW, s0, s1, yp);
      }
    });
    return;
  }
  const bool stream = stream_rows(yp, C, y.nbytes());
  at::parallel_for(0, R, std::max<int64_t>(1, kBlockElems / C), [=](int64_t r0, int64_t r1) {
    const Vec vslope(slope_a);
    auto rows = [&](auto stream_tag) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* xr = xp + r * C;
        scalar_t* yr = yp + r * C;
        for_channel_vectors<scalar_t, decltype(stream_tag)::value>(C, [&](int64_t c, auto width) {
          const Vec z = at::vec::fmadd(width.load(xr + c), width.load_acc(scale_p + c),
                                       width.load_acc(shift_p + c));
          width.store(yr + c, leaky_vec<acc_t>(z, vslope));
        });
      }
    };
    if (stream) {
      rows(std::true_type{});
      stream_fence();
    } else {
      rows(std::false_type{});
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_forward(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool training, double eps,
    double negative_slope, bool contiguous_out) {
  bn_act::check_forward(input, weight, bias, running_mean, running_var, training);
  const bool cl = is_channels_last(input);
  const at::Tensor x = cl ? input : input.contiguous();
  const auto acc_type = acc_scalar_type(x.scalar_type());
  const int64_t C = x.size(1);
  // contiguous_out: an NCHW y from an NHWC x, written by the apply pass itself
  const bool y_nchw = contiguous_out && cl && mixed_layout_ok(x);
  at::Tensor y = y_nchw ? at::empty(x.sizes(), x.options()) : at::empty_like(x);
  at::Tensor mean_t, var_t;
  if (training) {
    mean_t = at::empty({C}, x.options().dtype(acc_type));
    var_t = at::empty({C}, x.options().dtype(acc_type));
  } else {
    mean_t = running_mean->to(acc_type, /*non_blocking=*/false, /*copy=*/true).contiguous();
    var_t = running_var->to(acc_type, false, true).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_act_forward", [&] {
    using acc_t = acc_of_t<scalar_t>;
    const auto p = channel_params<acc_t>(weight, bias, C);
    if (cl) {
      forward_nhwc<scalar_t>(x, y, mean_t, var_t, training, eps, negative_slope, p, y_nchw);
    } else {
      forward_nchw<scalar_t>(x, y, mean_t, var_t, training, eps, negative_slope, p);
    }
  });
  if (contiguous_out && !y.is_contiguous()) y = y.contiguous();
  return {y, mean_t, var_t};
}

namespace {

// ---------------------------------------------------------------------------
// Backward.

template <typename scalar_t>
void backward_nchw(const at::Tensor& dy, const at::Tensor& x, at::Tensor* dx, const at::Tensor& mean_t,
                   const at::Tensor& var_t, bool training, double eps, double slope,
                   const ChannelParams<acc_of_t<scalar_t>>& p, double* sum_dz, double* sum_dz_xc) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
  scalar_t* dxp = dx ? dx->mutable_data_ptr<scalar_t>() : nullptr;
  const acc_t* mp = mean_t.const_data_ptr<acc_t>();
  const acc_t* vp = var_t.const_data_ptr<acc_t>();
  const acc_t aslope = static_cast<acc_t>(slope);
  std::vector<acc_t> invstd(C), scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    invstd[c] = bn_act::inv_std<acc_t>(vp[c], static_cast<acc_t>(eps));
    bn_act::fold_affine<acc_t>(mp[c], invstd[c], p.weight[c], p.bias[c], scale[c], shift[c]);
  }
  std::vector<bn_act::GradCoeffs<acc_t>> coeffs(C);
  const bool stream = x.nbytes() >= kStreamBytes;
  // Sums of dz and dz * (x - mean) over one plane.
  auto plane_sums = [&](int64_t n, int64_t c, double& s, double& sx) {
    const int64_t base = (n * C + c) * HW;
    double ps = 0, psx = 0;
    for (int64_t off = 0; off < HW; off += kChunk) {
      run_grad_sums<scalar_t, acc_t>(dyp + base + off, xp + base + off, std::min(kChunk, HW - off),
                                     scale[c], shift[c], aslope, mp[c], ps, psx);
    }
    s += ps;
    sx += psx;
  };
  auto finish_channel = [&](int64_t c, double s, double sx) {
    sum_dz[c] = s;
    sum_dz_xc[c] = sx;
    coeffs[c] = bn_act::grad_coeffs<acc_t>(training, p.weight[c], invstd[c], static_cast<acc_t>(s),
                                           static_cast<acc_t>(sx), N * HW);
  };
  auto plane_dx = [&](int64_t n, int64_t c) {
    const int64_t base = (n * C + c) * HW;
    run_grad_input<scalar_t, acc_t>(dyp + base, xp + base, dxp + base, HW, scale[c], shift[c],
                                    aslope, mp[c], coeffs[c], stream);
  };

  const int64_t G = cache_group(N, C, HW, (dxp ? 3 : 2) * sizeof(scalar_t));
  if (G > 0) {
    at::parallel_for(0, C, G, [&](int64_t c0, int64_t c1) {
      std::vector<double> s(G), sx(G);
      for (int64_t g0 = c0; g0 < c1; g0 += G) {
        const int64_t g1 = std::min(c1, g0 + G);
        std::fill(s.begin(), s.end(), 0.0);
        std::fill(sx.begin(), sx.end(), 0.0);
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t c = g0; c < g1; ++c) plane_sums(n, c, s[c - g0], sx[c - g0]);
        }
        for (int64_t c = g0; c < g1; ++c) finish_channel(c, s[c - g0], sx[c - g0]);
        if (!dxp) continue;
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t c = g0; c < g1; ++c) plane_dx(n, c);
        }
      }
      if (stream) stream_fence();
    });
    return;
  }
  const int64_t P = N * C;
  const int64_t grain = plane_grain(HW);
  std::vector<double> ps(P, 0.0), psx(P, 0.0);
  at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t q = p0; q < p1; ++q) plane_sums(q / C, q % C, ps[q], psx[q]);
  });
  for (int64_t c = 0; c < C; ++c) {
    double s = 0, sx = 0;
    for (int64_t n = 0; n < N; ++n) {
      s += ps[n * C + c];
      sx += psx[n * C + c];
    }
    finish_channel(c, s, sx);
  }
  if (!dxp) return;
  at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t q = p0; q < p1; ++q) plane_dx(q / C, q % C);
    if (stream) stream_fence();
  });
}

template <typename scalar_t>
void backward_nhwc(const at::Tensor& dy, const at::Tensor& x, at::Tensor* dx, const at::Tensor& mean_t,
                   const at::Tensor& var_t, bool training, double eps, double slope,
                   const ChannelParams<acc_of_t<scalar_t>>& p, double* sum_dz, double* sum_dz_xc,
                   bool dy_nchw = false) {
  using acc_t = acc_of_t<scalar_t>;
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const int64_t C = x.size(1);
  if (C < K) {
    backward_nhwc_small<scalar_t>(dy, x, dx, mean_t, var_t, training, eps, slope, p, sum_dz,
                                  sum_dz_xc);
    return;
  }
  const int64_t R = x.numel() / C;
  const int64_t HW = x.size(2) * x.size(3);  // dy_nchw: dy is NCHW (rows gathered per tile)
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
  scalar_t* dxp = dx ? dx->mutable_data_ptr<scalar_t>() : nullptr;
  const acc_t* mp = mean_t.const_data_ptr<acc_t>();
  const acc_t* vp = var_t.const_data_ptr<acc_t>();
  std::vector<acc_t> invstd(C), scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    invstd[c] = bn_act::inv_std<acc_t>(vp[c], static_cast<acc_t>(eps));
    bn_act::fold_affine<acc_t>(mp[c], invstd[c], p.weight[c], p.bias[c], scale[c], shift[c]);
  }
  const acc_t slope_a = static_cast<acc_t>(slope);
  const acc_t *scale_p = scale.data(), *shift_p = shift.data();

  const int64_t B = std::max<int64_t>(1, std::min(R, kBlockElems / C));
  const int64_t nblk = (R + B - 1) / B;
  std::vector<acc_t> bsum(nblk * C), bsumx(nblk * C);
  acc_t* const bsum_p = bsum.data();
  acc_t* const bsumx_p = bsumx.data();
  at::parallel_for(0, nblk, serial_if_small(x.numel(), nblk, 1), [=](int64_t b0, int64_t b1) {
    const Vec vslope(slope_a);
    std::vector<scalar_t> tile(dy_nchw ? B * C : 0);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * B, r1 = std::min(R, r0 + B);
      const scalar_t* dyb = dyp + r0 * C;  // dy's rows [r0, r1), NHWC-ordered
      if (dy_nchw) {
        gather_nchw_rows<scalar_t>(dyp, C, HW, r0, r1, tile.data());
        dyb = tile.data();
      }
      for_channel_vectors<scalar_t>(C, [&](int64_t c, auto width) {
        const Vec vm = width.load_acc(mp + c);
        const Vec vs = width.load_acc(scale_p + c), vb = width.load_acc(shift_p + c);
        const scalar_t* xcol = xp + c;
        const scalar_t* dycol = dyb + c;
        Vec a(acc_t(0)), b(acc_t(0));
        for (int64_t r = r0; r < r1; ++r) {
          const Vec xv = width.load(xcol + r * C);
          const Vec dz = width.load(dycol + (r - r0) * C) *
                         leaky_grad_vec<acc_t>(at::vec::fmadd(xv, vs, vb), vslope);
          a += dz;
          b = at::vec::fmadd(dz, xv - vm, b);
        }
        width.store_acc(bsum_p + blk * C + c, a);
        width.store_acc(bsumx_p + blk * C + c, b);
      });
    }
  });
  sum_blocks(bsum, bsumx, nblk, C, sum_dz, sum_dz_xc);
  if (!dxp) return;
  std::vector<acc_t> gain(C), proj(C), mdz(C);
  fill_grad_coeffs<acc_t>(training, p, invstd.data(), sum_dz, sum_dz_xc, R, C, gain.data(),
                          proj.data(), mdz.data());
  const acc_t *gain_p = gain.data(), *proj_p = proj.data(), *mdz_p = mdz.data();
  const bool stream = stream_rows(dxp, C, dx->nbytes());
  const int64_t TB = dy_nchw ? mixed_tile_rows(C) : R;
  at::parallel_for(0, R, std::max<int64_t>(dy_nchw ? TB : 1, kBlockElems / C),
                   [=](int64_t r0, int64_t r1) {
    const Vec vslope(slope_a);
    std::vector<scalar_t> tile(dy_nchw ? TB * C : 0);
    auto rows = [&](auto stream_tag) {
      for (int64_t s0 = r0; s0 < r1; s0 += TB) {
        const int64_t s1 = std::min(r1, s0 + TB);
        const scalar_t* dyb = dyp + s0 * C;  // dy's rows [s0, s1), NHWC-ordered
        if (dy_nchw) {
          gather_nchw_rows<scalar_t>(dyp, C, HW, s0, s1, tile.data());
          dyb = tile.data();
        }
        for (int64_t r = s0; r < s1; ++r) {
          const scalar_t* xr = xp + r * C;
          const scalar_t* dyr = dyb + (r - s0) * C;
          scalar_t* dxr = dxp + r * C;
          for_channel_vectors<scalar_t, decltype(stream_tag)::value>(C, [&](int64_t c, auto width) {
            const Vec xv = width.load(xr + c);
            const Vec zv = at::vec::fmadd(xv, width.load_acc(scale_p + c),
                                          width.load_acc(shift_p + c));
            const Vec dz = width.load(dyr + c) * leaky_grad_vec<acc_t>(zv, vslope);
            const Vec t = at::vec::fmadd(width.load_acc(proj_p + c),
                                         xv - width.load_acc(mp + c),
                                         width.load_acc(mdz_p + c));
            width.store(dxr + c, width.load_acc(gain_p + c) * (dz - t));
          });
        }
      }
    };
    if (stream) {
      rows(std::true_type{});
      stream_fence();
    } else {
      rows(std::false_type{});
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& var,
    bool training, double eps, double negative_slope, std::array<bool, 3> output_mask) {
  bn_act::check_backward(grad_out, input, weight, bias, mean, var);
  const bool cl = is_channels_last(input);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(fmt);
  // An NCHW gradient for an NHWC input is read in place, tile by tile (see above).
  const bool dy_nchw = cl && mixed_layout_ok(x) && !is_channels_last(grad_out) &&
                       grad_out.is_contiguous();
  const at::Tensor dy = dy_nchw ? grad_out : grad_out.contiguous(fmt);
  const auto acc_type = acc_scalar_type(x.scalar_type());
  const int64_t C = x.size(1);
  const at::Tensor m = mean.to(acc_type).contiguous();
  const at::Tensor v = var.to(acc_type).contiguous();
  at::Tensor dx;
  if (output_mask[0]) dx = at::empty_like(x);
  std::vector<double> sum_dz(C), sum_dz_xc(C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_act_backward", [&] {
    using acc_t = acc_of_t<scalar_t>;
    const auto p = channel_params<acc_t>(weight, bias, C);
    if (cl) {
      backward_nhwc<scalar_t>(dy, x, output_mask[0] ? &dx : nullptr, m, v, training, eps,
                              negative_slope, p, sum_dz.data(), sum_dz_xc.data(), dy_nchw);
    } else {
      backward_nchw<scalar_t>(dy, x, output_mask[0] ? &dx : nullptr, m, v, training, eps,
                              negative_slope, p, sum_dz.data(), sum_dz_xc.data());
    }
  });
  // dweight = sum(dz * xhat) = invstd * sum(dz * (x - mean)); dbias = sum(dz).
  const bool have_w = weight.has_value() && weight->defined();
  const bool have_b = bias.has_value() && bias->defined();
  at::Tensor dw, db;
  if (output_mask[1] && have_w) {
    auto sx = at::from_blob(sum_dz_xc.data(), {C}, at::kDouble).clone();
    auto invstd = (v.to(at::kDouble) + eps).rsqrt();
    dw = (sx * invstd).to(weight->scalar_type());
  } else {
    dw = at::empty({0}, x.options().dtype(have_w ? weight->scalar_type() : x.scalar_type()));
  }
  if (output_mask[2] && have_b) {
    db = at::from_blob(sum_dz.data(), {C}, at::kDouble).clone().to(bias->scalar_type());
  } else {
    db = at::empty({0}, x.options().dtype(have_b ? bias->scalar_type() : x.scalar_type()));
  }
  return {dx.defined() ? dx : at::empty({0}, x.options()), dw, db};
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
