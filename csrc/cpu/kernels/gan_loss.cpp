// CPU kernels of the combined GAN loss op (schemas and autograd in csrc/gan_loss.cpp,
// per-element math in csrc/gan_loss_math.h).
//
// Inputs are flattened (made contiguous when they are not). Forward streams once over
// each input; backward recomputes the per-element derivatives from the inputs (one
// exp per logit) rather than reading gradients saved by the forward: that costs no
// memory between forward and backward, no work in forward passes that never see a
// backward (evaluation, logging), and no more memory traffic than reading saved
// gradients would.
//
// Sums: each run of at most kChunk values is reduced in vector lanes of the
// accumulation type (fp32 for fp32/bf16/fp16, fp64 for fp64) and the runs are added
// in double, in a fixed order, so the result does not depend on the thread count.
// Small inputs (the usual GAN batch) run inline on the calling thread.
//
// The paired kind (rpgan) has a pass of its own in each direction, which walks r[i] and
// f[i] together (run_pair_sums, map_pairs); the other kinds' passes are untouched by it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../../gan_loss_checks.h"
#include "../../gan_loss_math.h"
#include "kernels.h"
#include "vec_io.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using gan_loss::Kind;

constexpr int64_t kChunk = 2048;       // values per run summed in vector lanes
constexpr int64_t kGrainChunks = 16;   // runs per parallel task (32K values)

// at::parallel_for over [0, n) in pieces of at least `grain`; below one grain, a plain
// call (at::parallel_for's inline path still sets thread-locals, which shows at the
// microsecond scale of a GAN batch).
template <typename F>
inline void parallel_or_inline(int64_t n, int64_t grain, const F& f) {
  if (n <= grain) {
    f(0, n);
  } else {
    at::parallel_for(0, n, grain, f);
  }
}

// Calls body(i, width) over [0, n) in full vectors, then once for the tail.
template <int64_t K, typename Body>
inline void for_vectors(int64_t n, Body&& body) {
  int64_t i = 0;
  for (; i + K <= n; i += K) body(i, K);
  if (i < n) body(i, n - i);
}

// Sums of `kSums` per-element terms over p[0..n), run by run, into out[run * kSums + j].
// `terms(v)` maps a vector of inputs to an std::array of kSums vectors.
template <int kSums, typename scalar_t, typename Terms>
void run_sums(const scalar_t* p, int64_t n, double* out, Terms&& terms) {
  using IO = VecIo<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const int64_t nrun = (n + kChunk - 1) / kChunk;
  parallel_or_inline(nrun, kGrainChunks, [&](int64_t r0, int64_t r1) {
    for (int64_t run = r0; run < r1; ++run) {
      const int64_t base = run * kChunk, len = std::min(kChunk, n - base);
      std::array<Vec, kSums> acc;
      acc.fill(Vec(acc_t(0)));
      for_vectors<K>(len, [&](int64_t i, int64_t w) {
        const auto t = terms(w == K ? IO::load(p + base + i) : IO::load(p + base + i, w));
        for (int j = 0; j < kSums; ++j) acc[j] += w == K ? t[j] : masked<acc_t>(t[j], w);
      });
      for (int j = 0; j < kSums; ++j) {
        out[run * kSums + j] = static_cast<double>(lane_sum<acc_t>(acc[j]));
      }
    }
  });
}

// run_sums over pairs: terms(r, f) on the vectors of p[i] and q[i], i in [0, n); the same
// runs, lanes and order as run_sums, so the sums are as deterministic.
template <int kSums, typename scalar_t, typename Terms>
void run_pair_sums(const scalar_t* p, const scalar_t* q, int64_t n, double* out,
                   Terms&& terms) {
  using IO = VecIo<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  constexpr int64_t K = IO::kSize;
  const int64_t nrun = (n + kChunk - 1) / kChunk;
  parallel_or_inline(nrun, kGrainChunks, [&](int64_t r0, int64_t r1) {
    for (int64_t run = r0; run < r1; ++run) {
      const int64_t base = run * kChunk, len = std::min(kChunk, n - base);
      std::array<Vec, kSums> acc;
      acc.fill(Vec(acc_t(0)));
      for_vectors<K>(len, [&](int64_t i, int64_t w) {
        const int64_t o = base + i;
        const auto t = w == K ? terms(IO::load(p + o), IO::load(q + o))
                              : terms(IO::load(p + o, w), IO::load(q + o, w));
        for (int j = 0; j < kSums; ++j) acc[j] += w == K ? t[j] : masked<acc_t>(t[j], w);
      });
      for (int j = 0; j < kSums; ++j) {
        out[run * kSums + j] = static_cast<double>(lane_sum<acc_t>(acc[j]));
      }
    }
  });
}

// Adds the per-run sums in order: sums[j] = sum over runs of out[run * kSums + j].
template <int kSums>
std::array<double, kSums> total(const c10::SmallVectorImpl<double>& runs) {
  std::array<double, kSums> s{};
  for (size_t i = 0; i < runs.size(); ++i) s[i % kSums] += runs[i];
  return s;
}

// rpgan's forward over the n pairs (r[i], f[i]): d_loss and g_loss are each one mean (or
// sum) over the pairs; d_real, d_fake the means of sigmoid(r), sigmoid(f).
void rpgan_forward(const at::Tensor& real, const at::Tensor& fake, bool mean, at::Tensor& d_loss,
                   at::Tensor& g_loss, at::Tensor& d_real, at::Tensor& d_fake) {
  const int64_t n = real.numel();
  c10::SmallVector<double, 16> sums(4 * ((n + kChunk - 1) / kChunk));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, real.scalar_type(), "gan_loss_forward", [&] {
    using acc_t = acc_of_t<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    using Ops = VecOps<acc_t>;
    run_pair_sums<4>(real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(), n,
                     sums.data(), [&](const Vec& r, const Vec& f) {
                       const auto t = gan_loss::pair_terms<Ops>(r, f);
                       return std::array<Vec, 4>{t.d_loss, t.g_loss, t.sigmoid_real,
                                                 t.sigmoid_fake};
                     });
    const auto s = total<4>(sums);
    const double inv_n = 1.0 / static_cast<double>(n);
    const double scale = mean ? inv_n : 1.0;
    *d_loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(s[0] * scale);
    *g_loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(s[1] * scale);
    *d_real.mutable_data_ptr<acc_t>() = static_cast<acc_t>(s[2] * inv_n);
    *d_fake.mutable_data_ptr<acc_t>() = static_cast<acc_t>(s[3] * inv_n);
  });
}

}  // namespace

// ---------------------------------------------------------------------------
// Forward: (d_loss, g_loss, d_real, d_fake), 0-dim, fp32 (fp64 for fp64 input).

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_forward(
    const at::Tensor& real_logits, const at::Tensor& fake_logits, c10::string_view kind_name,
    c10::string_view reduction, double real_label) {
  const int kind = gan_loss::kind_from_name(kind_name);
  const int mean = gan_loss::reduction_is_mean(reduction);
  gan_loss::check_inputs("fastgan::gan_loss_forward", real_logits, fake_logits, kind, mean, kind_name,
               reduction);
  const at::Tensor real = real_logits.contiguous();
  const at::Tensor fake = fake_logits.contiguous();
  const int64_t nr = real.numel(), nf = fake.numel();
  // at::detail::empty_cpu: these run at every GAN step, on tiny tensors, where a trip
  // through the dispatcher per allocation is a visible share of the op's time.
  const auto acc_type = real.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor d_loss = at::detail::empty_cpu({}, acc_type);
  at::Tensor g_loss = at::detail::empty_cpu({}, acc_type);
  at::Tensor d_real = at::detail::empty_cpu({}, acc_type);
  at::Tensor d_fake = at::detail::empty_cpu({}, acc_type);
  if (kind == gan_loss::kRpgan) {
    rpgan_forward(real, fake, mean == 1, d_loss, g_loss, d_real, d_fake);
    return {d_loss, g_loss, d_real, d_fake};
  }
  c10::SmallVector<double, 8> rsums(2 * ((nr + kChunk - 1) / kChunk));
  c10::SmallVector<double, 12> fsums(3 * ((nf + kChunk - 1) / kChunk));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, real.scalar_type(), "gan_loss_forward", [&] {
    using acc_t = acc_of_t<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    using Ops = VecOps<acc_t>;
    const Vec label(static_cast<acc_t>(real_label));
    gan_loss::dispatch_kind(kind, [&](auto k) {
      constexpr Kind K = decltype(k)::value;
      run_sums<2>(real.const_data_ptr<scalar_t>(), nr, rsums.data(), [&](const Vec& r) {
        const auto t = gan_loss::real_terms<K, Ops>(r, label);
        return std::array<Vec, 2>{t.d_loss, t.sigmoid};
      });
      run_sums<3>(fake.const_data_ptr<scalar_t>(), nf, fsums.data(), [&](const Vec& f) {
        const auto t = gan_loss::fake_terms<K, Ops>(f);
        return std::array<Vec, 3>{t.d_loss, t.g_loss, t.sigmoid};
      });
    });
    const auto rs = total<2>(rsums);
    const auto fs = total<3>(fsums);
    const double sr = mean ? 1.0 / static_cast<double>(nr) : 1.0;
    const double sf = mean ? 1.0 / static_cast<double>(nf) : 1.0;
    *d_loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(rs[0] * sr + fs[0] * sf);
    *g_loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(fs[1] * sf);
    *d_real.mutable_data_ptr<acc_t>() = static_cast<acc_t>(rs[1] / static_cast<double>(nr));
    *d_fake.mutable_data_ptr<acc_t>() = static_cast<acc_t>(fs[2] / static_cast<double>(nf));
  });
  return {d_loss, g_loss, d_real, d_fake};
}

// ---------------------------------------------------------------------------
// Backward: grad_real = gd * s_r * dD/dr,  grad_fake = s_f * (gd * dD/df + gg * dG/df),
// with s = 1/N for "mean" and 1 for "sum". Outputs masked off are empty.

namespace {

// out = body(x) over x[0..n), in parallel over runs.
template <typename scalar_t, typename Body>
void map_elements(const scalar_t* x, scalar_t* out, int64_t n, Body&& body) {
  using IO = VecIo<scalar_t>;
  constexpr int64_t K = IO::kSize;
  parallel_or_inline(n, kGrainChunks * kChunk, [&](int64_t i0, int64_t i1) {
    for_vectors<K>(i1 - i0, [&](int64_t i, int64_t w) {
      if (w == K) {
        IO::store(out + i0 + i, body(IO::load(x + i0 + i)));
      } else {
        IO::store(out + i0 + i, body(IO::load(x + i0 + i, w)), w);
      }
    });
  });
}

// rpgan's backward: one pass over the pairs writing whichever of grad_real / grad_fake is
// asked for (null when not). Per pair, with s = sigmoid(f - r), t = sigmoid(r - f) and the
// 1/N of "mean" in gd, gg: grad_real = gg * t - gd * s, grad_fake = -grad_real.
template <typename scalar_t, typename acc_t>
void rpgan_backward(const scalar_t* r, const scalar_t* f, scalar_t* gr, scalar_t* gf, int64_t n,
                    acc_t gd, acc_t gg) {
  using IO = VecIo<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  using Ops = VecOps<acc_t>;
  constexpr int64_t K = IO::kSize;
  const Vec cd(gd), cg(gg);
  parallel_or_inline(n, kGrainChunks * kChunk, [&](int64_t i0, int64_t i1) {
    for_vectors<K>(i1 - i0, [&](int64_t i, int64_t w) {
      const int64_t o = i0 + i;
      const bool full = w == K;
      const auto g = gan_loss::pair_grads<Ops>(full ? IO::load(r + o) : IO::load(r + o, w),
                                               full ? IO::load(f + o) : IO::load(f + o, w));
      const Vec dr = at::vec::fmsub(cg, g.t, cd * g.s);
      if (gr != nullptr) {
        if (full) IO::store(gr + o, dr); else IO::store(gr + o, dr, w);
      }
      if (gf != nullptr) {
        const Vec df = dr.neg();
        if (full) IO::store(gf + o, df); else IO::store(gf + o, df, w);
      }
    });
  });
}

template <typename acc_t>
acc_t scalar_value(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() == 1, "fastgan::gan_loss_backward: ", name,
              " must hold one value (the losses are scalars), got shape ", t.sizes());
  return t.scalar_type() == c10::CppTypeToScalarType<acc_t>::value
             ? *t.const_data_ptr<acc_t>()
             : t.item<acc_t>();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gan_loss_backward(
    const at::Tensor& grad_d_loss, const at::Tensor& grad_g_loss, const at::Tensor& real_logits,
    const at::Tensor& fake_logits, c10::string_view kind_name, c10::string_view reduction,
    double real_label, std::array<bool, 2> output_mask) {
  const int kind = gan_loss::kind_from_name(kind_name);
  const int mean = gan_loss::reduction_is_mean(reduction);
  gan_loss::check_inputs("fastgan::gan_loss_backward", real_logits, fake_logits, kind, mean, kind_name,
               reduction);
  const at::Tensor real = real_logits.contiguous();
  const at::Tensor fake = fake_logits.contiguous();
  const int64_t nr = real.numel(), nf = fake.numel();
  const int64_t zero = 0;
  at::Tensor grad_real = at::detail::empty_cpu(
      output_mask[0] ? real.sizes() : at::IntArrayRef(&zero, 1), real.scalar_type());
  at::Tensor grad_fake = at::detail::empty_cpu(
      output_mask[1] ? fake.sizes() : at::IntArrayRef(&zero, 1), fake.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, real.scalar_type(), "gan_loss_backward", [&] {
    using acc_t = acc_of_t<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    using Ops = VecOps<acc_t>;
    const acc_t gd = scalar_value<acc_t>(grad_d_loss, "grad_d_loss");
    const acc_t gg = scalar_value<acc_t>(grad_g_loss, "grad_g_loss");
    const acc_t sr = mean ? acc_t(1) / static_cast<acc_t>(nr) : acc_t(1);
    const acc_t sf = mean ? acc_t(1) / static_cast<acc_t>(nf) : acc_t(1);
    if (kind == gan_loss::kRpgan) {  // nr == nf (check_inputs), one pass for both
      rpgan_backward<scalar_t, acc_t>(
          real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(),
          output_mask[0] ? grad_real.mutable_data_ptr<scalar_t>() : nullptr,
          output_mask[1] ? grad_fake.mutable_data_ptr<scalar_t>() : nullptr, nr, gd * sr, gg * sr);
      return;
    }
    const Vec label(static_cast<acc_t>(real_label));
    gan_loss::dispatch_kind(kind, [&](auto k) {
      constexpr Kind K = decltype(k)::value;
      if (output_mask[0]) {
        const Vec c(gd * sr);
        map_elements(real.const_data_ptr<scalar_t>(), grad_real.mutable_data_ptr<scalar_t>(), nr,
                     [&](const Vec& r) { return c * gan_loss::real_grad<K, Ops>(r, label); });
      }
      if (output_mask[1]) {
        const Vec cd(gd * sf), cg(gg * sf);
        map_elements(fake.const_data_ptr<scalar_t>(), grad_fake.mutable_data_ptr<scalar_t>(), nf,
                     [&](const Vec& f) {
                       const auto g = gan_loss::fake_grads<K, Ops>(f);
                       return at::vec::fmadd(cd, g.d, cg * g.g);
                     });
      }
    });
  });
  return {grad_real, grad_fake};
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
