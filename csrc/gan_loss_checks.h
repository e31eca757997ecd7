// Host-side helpers of the gan_loss op shared by its CPU and CUDA kernels: argument
// checks, and the switch from the runtime kind to a compile-time one.
#pragma once

#include <ATen/ATen.h>

#include <type_traits>

#include "gan_loss_math.h"

namespace fastgan {
namespace gan_loss {

inline void check_inputs(const char* op, const at::Tensor& real, const at::Tensor& fake, int kind,
                  int mean, c10::string_view kind_name, c10::string_view reduction) {
  TORCH_CHECK(kind >= 0, op, ": unknown kind '", kind_name,
              "'; expected one of 'minimax', 'ns', 'lsgan', 'hinge', 'wgan', 'rpgan'");
  TORCH_CHECK(mean >= 0, op, ": unknown reduction '", reduction, "'; expected 'mean' or 'sum'");
  TORCH_CHECK(at::isFloatingType(real.scalar_type()), op,
              ": real_logits must be a floating-point tensor, got ", real.scalar_type());
  TORCH_CHECK(real.scalar_type() == fake.scalar_type(), op, ": fake_logits has dtype ",
              fake.scalar_type(), " but real_logits has dtype ", real.scalar_type());
  TORCH_CHECK(real.numel() > 0, op, ": real_logits is empty (shape ", real.sizes(), ")");
  TORCH_CHECK(fake.numel() > 0, op, ": fake_logits is empty (shape ", fake.sizes(), ")");
  TORCH_CHECK(real.device() == fake.device(), op, ": real_logits is on ", real.device(),
              " but fake_logits is on ", fake.device());
  TORCH_CHECK(!is_paired(Kind(kind)) || real.numel() == fake.numel(), op, ": kind '",
              kind_name, "' pairs real and fake logits element-wise, so they must have the "
              "same number of elements; got real_logits of shape ", real.sizes(),
              " and fake_logits of shape ", fake.sizes());
}

// Calls f(std::integral_constant<Kind, K>{}) for the runtime `kind`, so kernels are
// instantiated per kind with no branch on it in their loops. Only the kinds whose inputs
// are walked one at a time (real_terms / fake_terms); the paired kind has kernels of its
// own, which the callers branch to before dispatching.
template <typename F>
void dispatch_kind(int kind, F&& f) {
  switch (kind) {
    case kMinimax: f(std::integral_constant<Kind, kMinimax>{}); break;
    case kNs: f(std::integral_constant<Kind, kNs>{}); break;
    case kLsgan: f(std::integral_constant<Kind, kLsgan>{}); break;
    case kHinge: f(std::integral_constant<Kind, kHinge>{}); break;
    case kWgan: f(std::integral_constant<Kind, kWgan>{}); break;
    default: TORCH_INTERNAL_ASSERT(false, "gan_loss: kind ", kind, " has no per-input kernels");
  }
}

}  // namespace gan_loss
}  // namespace fastgan
