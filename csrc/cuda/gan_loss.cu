// CUDA kernels of the combined GAN loss op (schemas and autograd in csrc/gan_loss.cpp,
// per-element math in csrc/gan_loss_math.h, shared with csrc/cpu/kernels/gan_loss.cpp).
//
// Forward: one launch reduces both batches (grid-stride, per-block partial sums of the
// five terms: real d_loss, sigmoid(real), fake d_loss, g_loss, sigmoid(fake)); a second
// single-block launch adds the partials in a fixed order (deterministic) in double and
// writes the four 0-dim results. Backward: one elementwise launch per requested input
// gradient; the incoming loss gradients are read on the device (no host sync).
// The paired kind (rpgan) walks r[i] and f[i] together: its forward kernel writes the same
// five partials (its one d_loss sum in the real d_loss slot, the fake one left 0; with
// nr == nf the finalize kernel's formulas then give rpgan's means), and its backward is one
// launch over the pairs writing whichever gradients are asked for.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../common.h"
#include "../gan_loss_checks.h"
#include "../gan_loss_math.h"

namespace fastgan {
namespace cuda {
namespace {

using gan_loss::Kind;

constexpr int kThreads = 256;
constexpr int kSums = 5;  // real d_loss, real sigmoid, fake d_loss, g_loss, fake sigmoid
constexpr int kMaxBlocks = 512;

template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
  __syncthreads();  // shared may be reused by consecutive calls
  if (lane == 0) shared[wid] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? shared[lane] : T(0);
  if (wid == 0) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  return v;
}

template <Kind K, typename scalar_t, typename acc_t>
__global__ void forward_partials_kernel(const scalar_t* __restrict__ real, int64_t nr,
                                        const scalar_t* __restrict__ fake, int64_t nf,
                                        acc_t label, acc_t* __restrict__ partials) {
  using Ops = ScalarOps<acc_t>;
  __shared__ acc_t shared[kThreads / 32];
  acc_t s[kSums] = {0, 0, 0, 0, 0};
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = start; i < nr; i += stride) {
    const auto t = gan_loss::real_terms<K, Ops>(static_cast<acc_t>(real[i]), label);
    s[0] += t.d_loss;
    s[1] += t.sigmoid;
  }
  for (int64_t i = start; i < nf; i += stride) {
    const auto t = gan_loss::fake_terms<K, Ops>(static_cast<acc_t>(fake[i]));
    s[2] += t.d_loss;
    s[3] += t.g_loss;
    s[4] += t.sigmoid;
  }
#pragma unroll
  for (int j = 0; j < kSums; ++j) {
    const acc_t v = block_sum(s[j], shared);
    if (threadIdx.x == 0) partials[blockIdx.x * kSums + j] = v;
  }
}

// rpgan: the five partials of forward_partials_kernel from one walk over the n pairs
// (slot 2, the fake half of d_loss, is 0: rpgan's d_loss is one sum over pairs).
template <typename scalar_t, typename acc_t>
__global__ void pair_forward_partials_kernel(const scalar_t* __restrict__ real,
                                             const scalar_t* __restrict__ fake, int64_t n,
                                             acc_t* __restrict__ partials) {
  using Ops = ScalarOps<acc_t>;
  __shared__ acc_t shared[kThreads / 32];
  acc_t s[kSums] = {0, 0, 0, 0, 0};
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const auto t = gan_loss::pair_terms<Ops>(static_cast<acc_t>(real[i]),
                                             static_cast<acc_t>(fake[i]));
    s[0] += t.d_loss;
    s[1] += t.sigmoid_real;
    s[3] += t.g_loss;
    s[4] += t.sigmoid_fake;
  }
#pragma unroll
  for (int j = 0; j < kSums; ++j) {
    const acc_t v = j == 2 ? acc_t(0) : block_sum(s[j], shared);
    if (threadIdx.x == 0) partials[blockIdx.x * kSums + j] = v;
  }
}

template <typename acc_t>
__global__ void forward_finalize_kernel(const acc_t* __restrict__ partials, int nblocks,
                                        int64_t nr, int64_t nf, bool mean,
                                        acc_t* __restrict__ out /* d, g, d_real, d_fake */) {
  __shared__ double shared[kThreads / 32];
  double tot[kSums];
#pragma unroll
  for (int j = 0; j < kSums; ++j) {
    double v = 0;
    for (int b = threadIdx.x; b < nblocks; b += blockDim.x) v += partials[b * kSums + j];
    tot[j] = block_sum(v, shared);
  }
  if (threadIdx.x == 0) {
    const double sr = mean ? 1.0 / static_cast<double>(nr) : 1.0;
    const double sf = mean ? 1.0 / static_cast<double>(nf) : 1.0;
    out[0] = static_cast<acc_t>(tot[0] * sr + tot[2] * sf);
    out[1] = static_cast<acc_t>(tot[3] * sf);
    out[2] = static_cast<acc_t>(tot[1] / static_cast<double>(nr));
    out[3] = static_cast<acc_t>(tot[4] / static_cast<double>(nf));
  }
}

// grad_real = gd * s_r * dD/dr
template <Kind K, typename scalar_t, typename acc_t>
__global__ void grad_real_kernel(const scalar_t* __restrict__ real, scalar_t* __restrict__ out,
                                 int64_t n, const acc_t* __restrict__ gd, acc_t scale,
                                 acc_t label) {
  using Ops = ScalarOps<acc_t>;
  const acc_t c = *gd * scale;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = static_cast<scalar_t>(c * gan_loss::real_grad<K, Ops>(static_cast<acc_t>(real[i]), label));
  }
}

// grad_fake = s_f * (gd * dD/df + gg * dG/df)
template <Kind K, typename scalar_t, typename acc_t>
__global__ void grad_fake_kernel(const scalar_t* __restrict__ fake, scalar_t* __restrict__ out,
                                 int64_t n, const acc_t* __restrict__ gd,
                                 const acc_t* __restrict__ gg, acc_t scale) {
  using Ops = ScalarOps<acc_t>;
  const acc_t cd = *gd * scale, cg = *gg * scale;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const auto g = gan_loss::fake_grads<K, Ops>(static_cast<acc_t>(fake[i]));
    out[i] = static_cast<scalar_t>(cd * g.d + cg * g.g);
  }
}

// rpgan: grad_real = scale * (gg * t - gd * s), grad_fake = -grad_real, per pair; either
// output pointer may be null (not asked for).
template <typename scalar_t, typename acc_t>
__global__ void pair_grad_kernel(const scalar_t* __restrict__ real,
                                 const scalar_t* __restrict__ fake,
                                 scalar_t* __restrict__ out_real, scalar_t* __restrict__ out_fake,
                                 int64_t n, const acc_t* __restrict__ gd,
                                 const acc_t* __restrict__ gg, acc_t scale) {
  using Ops = ScalarOps<acc_t>;
  const acc_t cd = *gd * scale, cg = *gg * scale;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const auto g = gan_loss::pair_grads<Ops>(static_cast<acc_t>(real[i]),
                                             static_cast<acc_t>(fake[i]));
    const acc_t dr = cg * g.t - cd * g.s;
    if (out_real != nullptr) out_real[i] = static_cast<scalar_t>(dr);
    if (out_fake != nullptr) out_fake[i] = static_cast<scalar_t>(-dr);
  }
}

int blocks_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_forward_cuda(
    const at::Tensor& real_logits, const at::Tensor& fake_logits, c10::string_view kind_name,
    c10::string_view reduction, double real_label) {
  const int kind = gan_loss::kind_from_name(kind_name);
  const int mean = gan_loss::reduction_is_mean(reduction);
  gan_loss::check_inputs("fastgan::gan_loss_forward", real_logits, fake_logits, kind, mean,
                         kind_name, reduction);
  c10::cuda::CUDAGuard guard(real_logits.device());
  const at::Tensor real = real_logits.contiguous(), fake = fake_logits.contiguous();
  const int64_t nr = real.numel(), nf = fake.numel();
  const auto acc = acc_scalar_type(real.scalar_type());
  const int nblocks = blocks_for(std::max(nr, nf));
  at::Tensor partials = at::empty({nblocks, kSums}, real.options().dtype(acc));
  at::Tensor out = at::empty({4}, real.options().dtype(acc));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, real.scalar_type(), "gan_loss_forward_cuda", [&] {
    using acc_t = acc_of_t<scalar_t>;
    if (kind == gan_loss::kRpgan) {  // nr == nf (check_inputs)
      pair_forward_partials_kernel<scalar_t, acc_t><<<nblocks, kThreads, 0, stream>>>(
          real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(), nr,
          partials.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      gan_loss::dispatch_kind(kind, [&](auto k) {
        constexpr Kind K = decltype(k)::value;
        forward_partials_kernel<K, scalar_t, acc_t><<<nblocks, kThreads, 0, stream>>>(
            real.const_data_ptr<scalar_t>(), nr, fake.const_data_ptr<scalar_t>(), nf,
            static_cast<acc_t>(real_label), partials.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    forward_finalize_kernel<acc_t><<<1, kThreads, 0, stream>>>(
        partials.const_data_ptr<acc_t>(), nblocks, nr, nf, mean == 1, out.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // Four 0-dim results that own their storage (outputs may not alias each other).
  return {out[0].clone(), out[1].clone(), out[2].clone(), out[3].clone()};
}

std::tuple<at::Tensor, at::Tensor> gan_loss_backward_cuda(
    const at::Tensor& grad_d_loss, const at::Tensor& grad_g_loss, const at::Tensor& real_logits,
    const at::Tensor& fake_logits, c10::string_view kind_name, c10::string_view reduction,
    double real_label, std::array<bool, 2> output_mask) {
  const int kind = gan_loss::kind_from_name(kind_name);
  const int mean = gan_loss::reduction_is_mean(reduction);
  gan_loss::check_inputs("fastgan::gan_loss_backward", real_logits, fake_logits, kind, mean,
                         kind_name, reduction);
  TORCH_CHECK(grad_d_loss.numel() == 1 && grad_g_loss.numel() == 1,
              "fastgan::gan_loss_backward: grad_d_loss and grad_g_loss must hold one value each "
              "(the losses are scalars), got shapes ", grad_d_loss.sizes(), " and ",
              grad_g_loss.sizes());
  c10::cuda::CUDAGuard guard(real_logits.device());
  const at::Tensor real = real_logits.contiguous(), fake = fake_logits.contiguous();
  const int64_t nr = real.numel(), nf = fake.numel();
  const auto acc = acc_scalar_type(real.scalar_type());
  const at::Tensor gd = grad_d_loss.to(real.device(), acc).reshape({1}).contiguous();
  const at::Tensor gg = grad_g_loss.to(real.device(), acc).reshape({1}).contiguous();
  at::Tensor grad_real = output_mask[0] ? at::empty_like(real) : at::empty({0}, real.options());
  at::Tensor grad_fake = output_mask[1] ? at::empty_like(fake) : at::empty({0}, fake.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, real.scalar_type(), "gan_loss_backward_cuda", [&] {
    using acc_t = acc_of_t<scalar_t>;
    const acc_t sr = mean ? acc_t(1) / static_cast<acc_t>(nr) : acc_t(1);
    const acc_t sf = mean ? acc_t(1) / static_cast<acc_t>(nf) : acc_t(1);
    if (kind == gan_loss::kRpgan) {  // nr == nf: one launch over the pairs
      pair_grad_kernel<scalar_t, acc_t><<<blocks_for(nr), kThreads, 0, stream>>>(
          real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(),
          output_mask[0] ? grad_real.mutable_data_ptr<scalar_t>() : nullptr,
          output_mask[1] ? grad_fake.mutable_data_ptr<scalar_t>() : nullptr, nr,
          gd.const_data_ptr<acc_t>(), gg.const_data_ptr<acc_t>(), sr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    gan_loss::dispatch_kind(kind, [&](auto k) {
      constexpr Kind K = decltype(k)::value;
      if (output_mask[0]) {
        grad_real_kernel<K, scalar_t, acc_t><<<blocks_for(nr), kThreads, 0, stream>>>(
            real.const_data_ptr<scalar_t>(), grad_real.mutable_data_ptr<scalar_t>(), nr,
            gd.const_data_ptr<acc_t>(), sr, static_cast<acc_t>(real_label));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (output_mask[1]) {
        grad_fake_kernel<K, scalar_t, acc_t><<<blocks_for(nf), kThreads, 0, stream>>>(
            fake.const_data_ptr<scalar_t>(), grad_fake.mutable_data_ptr<scalar_t>(), nf,
            gd.const_data_ptr<acc_t>(), gg.const_data_ptr<acc_t>(), sf);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return {grad_real, grad_fake};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("gan_loss_forward", &gan_loss_forward_cuda);
  m.impl("gan_loss_backward", &gan_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace fastgan
