// CPU kernels of the bias_act op (schemas and autograd in csrc/bias_act.cpp, per-element
// math in csrc/bias_act_math.h).
//
// x is walked in memory order (any dense x in place, csrc/bias_act_checks.h: memory_view;
// y takes x's strides) as runs that share one bias value (outer * C runs of `inner`
// elements) or as rows of C elements with the bias as a vector (inner == 1: channels_last
// with dim == 1, or dim the innermost dimension). Each element
// is read and written once; the backward writes grad_x and sums it per channel for grad_b
// in the same pass.
//
// Sums (grad_b) are deterministic whatever the thread count: runs are cut into pieces of
// at most kPiece elements (rows into blocks of about kPiece elements), each piece summed in
// vector lanes of the accumulation type into its own slot, and the slots added per channel
// in double, in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../../bias_act_checks.h"
#include "kernels.h"
#include "vec_io.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using bias_act::Act;

constexpr int64_t kPiece = 16384;  // elements per parallel piece / summed slot

struct Params {
  double alpha, gain, inv_gain, clamp;
  bool clamping;
  int order;  // backward only
};

// The bias as the accumulation type, one value per channel, each repeated `fold` times
// (zeros without a bias).
template <typename acc_t>
std::vector<acc_t> bias_values(const c10::optional<at::Tensor>& b, int64_t channels,
                               int64_t fold) {
  std::vector<acc_t> v(channels * fold, acc_t(0));
  if (b.has_value() && b->defined()) {
    const at::Tensor bc = b->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* bp = bc.const_data_ptr<acc_t>();
    for (int64_t c = 0; c < channels; ++c) std::fill_n(v.begin() + c * fold, fold, bp[c]);
  }
  return v;
}

// y[0..n) = forward(x + bias); the bias is one value (kVecBias false) or n values.
template <Act A, bool kVecBias, typename scalar_t, typename acc_t>
void forward_run(const scalar_t* x, scalar_t* y, int64_t n, const acc_t* bias, const Params& p) {
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  using Ops = VecOps<acc_t>;
  const Vec alpha(static_cast<acc_t>(p.alpha)), gain(static_cast<acc_t>(p.gain)),
      clamp(static_cast<acc_t>(p.clamp));
  const Vec b0(kVecBias ? acc_t(0) : *bias);
  for (int64_t i = 0; i < n; i += IO::kSize) {
    const int64_t w = std::min<int64_t>(IO::kSize, n - i);
    const Vec b = kVecBias ? (w == IO::kSize ? Vec::loadu(bias + i) : Vec::loadu(bias + i, w)) : b0;
    const Vec s = (w == IO::kSize ? IO::load(x + i) : IO::load(x + i, w)) + b;
    const Vec v = bias_act::forward<A, Ops>(s, alpha, gain, clamp, p.clamping);
    if (w == IO::kSize) {
      IO::store(y + i, v);
    } else {
      IO::store(y + i, v, w);
    }
  }
}

// gx[0..n) = backward(g, ref, bias) (gx may be null: sums only). Adds the results into
// `sums` (one value when !kVecBias, else n values), when sums is not null.
template <Act A, bool kVecBias, typename scalar_t, typename acc_t>
void backward_run(const scalar_t* g, const scalar_t* ref, scalar_t* gx, int64_t n,
                  const acc_t* bias, acc_t* sums, const Params& p) {
  using IO = VecIo<scalar_t>;
  using Vec = typename IO::Vec;
  using Ops = VecOps<acc_t>;
  const Vec alpha(static_cast<acc_t>(p.alpha)), gain(static_cast<acc_t>(p.gain)),
      inv_gain(static_cast<acc_t>(p.inv_gain)), clamp(static_cast<acc_t>(p.clamp));
  const Vec b0(kVecBias ? acc_t(0) : *bias);
  Vec acc(acc_t(0));
  for (int64_t i = 0; i < n; i += IO::kSize) {
    const int64_t w = std::min<int64_t>(IO::kSize, n - i);
    const bool full = w == IO::kSize;
    const Vec b = kVecBias ? (full ? Vec::loadu(bias + i) : Vec::loadu(bias + i, w)) : b0;
    const Vec gv = full ? IO::load(g + i) : IO::load(g + i, w);
    const Vec rv = ref == nullptr ? Vec(acc_t(0)) : (full ? IO::load(ref + i) : IO::load(ref + i, w));
    const Vec v = bias_act::backward<A, Ops>(p.order, gv, rv, b, alpha, gain, inv_gain, clamp,
                                             p.clamping);
    if (gx != nullptr) {
      if (full) {
        IO::store(gx + i, v);
      } else {
        IO::store(gx + i, v, w);
      }
    }
    if (sums != nullptr) {
      if constexpr (kVecBias) {
        const Vec s = full ? Vec::loadu(sums + i) : Vec::loadu(sums + i, w);
        const Vec t = s + v;
        if (full) {
          t.store(sums + i);
        } else {
          t.store(sums + i, w);
        }
      } else {
        acc = acc + (full ? v : masked(v, w));
      }
    }
  }
  if constexpr (!kVecBias) {
    if (sums != nullptr) *sums += lane_sum(acc);
  }
}

// Calls f(first, last) over pieces of the work (runs cut to kPiece, or blocks of rows),
// in parallel when there is more than one piece.
template <typename F>
void parallel_pieces(int64_t pieces, int64_t grain, const F& f) {
  if (pieces <= 1) {
    f(0, pieces);
  } else {
    at::parallel_for(0, pieces, grain, f);
  }
}

constexpr int64_t kFoldBelow = 64;  // runs shorter than this are walked as rows

// The shared walk of forward and backward over a layout (csrc/bias_act_checks.h). Runs
// shorter than kFoldBelow (small images: 4x4, 8x8) are folded into rows of
// channels * inner elements with the bias repeated `fold` times: one long vector loop per
// row instead of one short one per run.
struct Walk {
  bias_act::Layout l;  // as walked (after folding)
  int64_t fold = 1;
  int64_t pieces_per_run = 1, piece_len = 0;  // runs case (inner > 1 or no bias)
  int64_t rows_per_block = 1, blocks = 0;     // rows case (inner == 1, bias as a vector)
  bool rows = false;

  explicit Walk(const bias_act::Layout& layout) : l(layout) {
    if (l.channels > 1 && l.inner > 1 && l.inner < kFoldBelow) {
      fold = l.inner;
      l.channels *= fold;
      l.inner = 1;
    }
    rows = l.inner == 1 && l.channels > 1;
    if (rows) {
      rows_per_block = std::max<int64_t>(1, kPiece / l.channels);
      blocks = (l.outer + rows_per_block - 1) / rows_per_block;
    } else {
      pieces_per_run = std::max<int64_t>(1, (l.inner + kPiece - 1) / kPiece);
      piece_len = (l.inner + pieces_per_run - 1) / pieces_per_run;
    }
  }
  int64_t pieces() const { return rows ? blocks : l.outer * l.channels * pieces_per_run; }
  // grain: about kPiece elements per task at least
  int64_t grain() const {
    if (rows) return 1;
    return std::max<int64_t>(1, kPiece / std::max<int64_t>(piece_len, 1));
  }

  // Calls row(offset, k) for each row of piece k (the bias a vector of C values), or
  // run(offset, n, channel, k) for each run piece, over the pieces [first, last).
  template <typename RowFn, typename RunFn>
  void each(int64_t first, int64_t last, const RowFn& row, const RunFn& run) const {
    for (int64_t k = first; k < last; ++k) {
      if (rows) {
        const int64_t r0 = k * rows_per_block;
        const int64_t r1 = std::min(l.outer, r0 + rows_per_block);
        for (int64_t r = r0; r < r1; ++r) row(r * l.channels, k);
      } else if (pieces_per_run == 1) {  // whole runs: no division per run
        for (int64_t c = k % l.channels; k < last; ++k) {
          run(k * l.inner, l.inner, c, k);
          if (++c == l.channels) c = 0;
        }
      } else {
        const int64_t r = k / pieces_per_run;
        const int64_t start = (k % pieces_per_run) * piece_len;
        run(r * l.inner + start, std::min(piece_len, l.inner - start), r % l.channels, k);
      }
    }
  }
};

template <typename scalar_t>
at::Tensor forward_impl(const at::Tensor& x, const c10::optional<at::Tensor>& b, int64_t dim,
                        int act, const Params& p) {
  using acc_t = acc_of_t<scalar_t>;
  const bool has_bias = b.has_value() && b->defined();
  const bias_act::View v = bias_act::memory_view(x, dim, has_bias);
  const at::Tensor& xc = v.t;
  const bias_act::Layout& l = v.l;
  at::Tensor y = bias_act::empty_as(xc);
  if (xc.numel() == 0) return y;
  const Walk walk(l);
  const std::vector<acc_t> bias = bias_values<acc_t>(b, l.channels, walk.fold);
  const scalar_t* xp = xc.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  bias_act::dispatch_act(act, [&](auto a) {
    constexpr Act A = decltype(a)::value;
    parallel_pieces(walk.pieces(), walk.grain(), [&](int64_t first, int64_t last) {
      walk.each(
          first, last,
          [&](int64_t off, int64_t) {
            forward_run<A, true>(xp + off, yp + off, walk.l.channels, bias.data(), p);
          },
          [&](int64_t off, int64_t n, int64_t c, int64_t) {
            forward_run<A, false>(xp + off, yp + off, n, &bias[c], p);
          });
    });
  });
  return y;
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& ref,
                                                 const c10::optional<at::Tensor>& b, int64_t dim,
                                                 int act, const Params& p,
                                                 std::array<bool, 2> mask) {
  using acc_t = acc_of_t<scalar_t>;
  const bool has_bias = b.has_value() && b->defined();
  mask[1] = mask[1] && has_bias;  // grad_b only for a given b (its shape and dtype)
  // grad in memory order; ref copied into grad's strides where they differ
  const bias_act::View v = bias_act::memory_view(grad, dim, has_bias);
  const at::Tensor& gc = v.t;
  const bias_act::Layout& l = v.l;
  at::Tensor rc = ref;
  if (rc.defined() && rc.strides() != gc.strides()) rc = bias_act::empty_as(gc).copy_(rc);
  at::Tensor gx = mask[0] ? bias_act::empty_as(gc) : at::empty({0}, grad.options());
  at::Tensor gb = at::empty({0}, grad.options());
  const Walk walk(l);
  std::vector<acc_t> slots;
  const int64_t wc = walk.l.channels;  // channels as walked (folded)
  if (mask[1]) slots.assign(walk.rows ? walk.blocks * wc : walk.pieces(), acc_t(0));
  if (gc.numel() > 0 && (mask[0] || mask[1])) {
    const std::vector<acc_t> bias = bias_values<acc_t>(b, l.channels, walk.fold);
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* rp = rc.defined() ? rc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* xp = mask[0] ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    acc_t* sp = mask[1] ? slots.data() : nullptr;
    bias_act::dispatch_act(act, [&](auto a) {
      constexpr Act A = decltype(a)::value;
      parallel_pieces(walk.pieces(), walk.grain(), [&](int64_t first, int64_t last) {
        walk.each(
            first, last,
            [&](int64_t off, int64_t k) {
              backward_run<A, true>(gp + off, rp ? rp + off : nullptr, xp ? xp + off : nullptr,
                                    wc, bias.data(), sp ? sp + k * wc : nullptr, p);
            },
            [&](int64_t off, int64_t n, int64_t c, int64_t k) {
              backward_run<A, false>(gp + off, rp ? rp + off : nullptr,
                                     xp ? xp + off : nullptr, n, &bias[c],
                                     sp ? sp + k : nullptr, p);
            });
      });
    });
  }
  if (mask[1]) {
    std::vector<double> sums(l.channels, 0.0);
    if (walk.rows) {
      for (int64_t k = 0; k < walk.blocks; ++k)
        for (int64_t c = 0; c < wc; ++c) sums[c / walk.fold] += slots[k * wc + c];
    } else {
      for (int64_t k = 0; k < walk.pieces(); ++k)
        sums[(k / walk.pieces_per_run) % l.channels] += slots[k];
    }
    gb = at::tensor(c10::ArrayRef<double>(sums), grad.options().dtype(at::kDouble))
             .to(b->scalar_type());
  }
  return {gx, gb};
}

Params params(double alpha, double gain, double clamp, int64_t order) {
  return Params{alpha, gain, gain != 0 ? 1.0 / gain : 0.0, clamp, clamp >= 0,
                static_cast<int>(order)};
}

}  // namespace

at::Tensor bias_act_forward(const at::Tensor& x, const OptTensor& b, int64_t dim,
                            c10::string_view act, double alpha, double gain, double clamp) {
  const int a = bias_act::check_forward("fastgan::bias_act_forward", x, b, dim, act);
  const Params p = params(alpha, gain, clamp, 0);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                         "bias_act_forward",
                                         [&] { return forward_impl<scalar_t>(x, b, dim, a, p); });
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward(
    const at::Tensor& grad, const OptTensor& ref, const OptTensor& b, int64_t dim,
    c10::string_view act, double alpha, double gain, double clamp, int64_t order,
    std::array<bool, 2> output_mask) {
  const char* op = "fastgan::bias_act_backward";
  const int a = bias_act::check_forward(op, grad, b, dim, act);
  TORCH_CHECK(order == 1 || order == 2, op, ": order must be 1 or 2, got ", order);
  const auto kind = bias_act::ref_kind(static_cast<Act>(a), clamp >= 0);
  const at::Tensor r = ref.value_or(at::Tensor());
  TORCH_CHECK(kind == bias_act::RefKind::kNone || r.defined(), op, ": act '", act,
              "' needs the saved tensor ref, got None");
  if (r.defined()) {
    TORCH_CHECK(r.sizes() == grad.sizes() && r.scalar_type() == grad.scalar_type() &&
                    r.device() == grad.device(),
                op, ": ref (", r.sizes(), ", ", r.scalar_type(), ") must match grad (",
                grad.sizes(), ", ", grad.scalar_type(), ")");
  }
  const Params p = params(alpha, gain, clamp, order);
  const at::Tensor rr = kind == bias_act::RefKind::kNone ? at::Tensor() : r;
  return AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "bias_act_backward",
      [&] { return backward_impl<scalar_t>(grad, rr, b, dim, a, p, output_mask); });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
