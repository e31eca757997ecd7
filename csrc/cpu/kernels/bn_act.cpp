// CPU kernels of the fused BatchNorm2d + LeakyReLU op (schemas in csrc/bn_act.cpp): the
// entry points check the arguments, allocate the outputs and pick the layout's kernels.
//
// Layouts: NCHW-contiguous (bn_act_nchw.cpp) and channels_last (bn_act_nhwc.cpp, or
// bn_act_nhwc_small.cpp for fewer channels than a vector) inputs are read in place;
// anything else is made contiguous first; the incoming gradient is read in the input's
// layout (copied to it when it comes in another). Shared pieces: bn_act_common.h.
#include "../../bn_act_checks.h"
#include "bn_act_common.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {

Tensor3 bn_act_forward(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                       const OptTensor& running_mean, const OptTensor& running_var,
                       bool training, double eps, double negative_slope) {
  bn_act::check_forward(input, weight, bias, running_mean, running_var, training);
  const bool cl = is_channels_last(input);
  const at::Tensor x = cl ? input : input.contiguous();
  const auto acc_type = acc_scalar_type(x.scalar_type());
  const int64_t C = x.size(1);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean, var;
  if (training) {
    mean = at::empty({C}, x.options().dtype(acc_type));
    var = at::empty({C}, x.options().dtype(acc_type));
  } else {
    mean = running_mean->to(acc_type, /*non_blocking=*/false, /*copy=*/true).contiguous();
    var = running_var->to(acc_type, false, true).contiguous();
  }
  const ForwardArgs a{x, y, mean, var, weight, bias, training, eps, negative_slope};
  if (!cl) {
    forward_nchw(a);
  } else if (C < acc_lanes(x)) {
    forward_nhwc_small(a);
  } else {
    forward_nhwc(a);
  }
  return {y, mean, var};
}

namespace {

// dweight = sum(dz * xhat) = invstd * sum(dz * (x - mean)); dbias = sum(dz). Empty
// where not wanted or the op is not affine.
std::tuple<at::Tensor, at::Tensor> param_grads(const std::vector<double>& sum_dz,
                                               const std::vector<double>& sum_dz_xc,
                                               const OptTensor& weight, const OptTensor& bias,
                                               const at::Tensor& var, double eps,
                                               std::array<bool, 3> output_mask,
                                               const at::TensorOptions& opts) {
  const int64_t C = static_cast<int64_t>(sum_dz.size());
  const bool have_w = weight.has_value() && weight->defined();
  const bool have_b = bias.has_value() && bias->defined();
  auto sums = [&](const std::vector<double>& v) {
    return at::from_blob(const_cast<double*>(v.data()), {C}, at::kDouble).clone();
  };
  at::Tensor dw, db;
  if (output_mask[1] && have_w) {
    dw = (sums(sum_dz_xc) * (var.to(at::kDouble) + eps).rsqrt()).to(weight->scalar_type());
  } else {
    dw = at::empty({0}, opts.dtype(have_w ? weight->scalar_type() : opts.dtype().toScalarType()));
  }
  if (output_mask[2] && have_b) {
    db = sums(sum_dz).to(bias->scalar_type());
  } else {
    db = at::empty({0}, opts.dtype(have_b ? bias->scalar_type() : opts.dtype().toScalarType()));
  }
  return {dw, db};
}

}  // namespace

Tensor3 bn_act_backward(const at::Tensor& grad_out, const at::Tensor& input,
                        const OptTensor& weight, const OptTensor& bias, const at::Tensor& mean,
                        const at::Tensor& var, bool training, double eps,
                        double negative_slope, std::array<bool, 3> output_mask) {
  bn_act::check_backward(grad_out, input, weight, bias, mean, var);
  const bool cl = is_channels_last(input);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(fmt), dy = grad_out.contiguous(fmt);
  const auto acc_type = acc_scalar_type(x.scalar_type());
  const at::Tensor m = mean.to(acc_type).contiguous();
  const at::Tensor v = var.to(acc_type).contiguous();
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : at::Tensor();
  std::vector<double> sum_dz(x.size(1)), sum_dz_xc(x.size(1));
  const BackwardArgs a{dy, x, dx.defined() ? &dx : nullptr, m, v, weight, bias, training, eps,
                       negative_slope, sum_dz.data(), sum_dz_xc.data()};
  if (!cl) {
    backward_nchw(a);
  } else if (x.size(1) < acc_lanes(x)) {
    backward_nhwc_small(a);
  } else {
    backward_nhwc(a);
  }
  auto [dw, db] = param_grads(sum_dz, sum_dz_xc, weight, bias, v, eps, output_mask, x.options());
  return {dx.defined() ? dx : at::empty({0}, x.options()), dw, db};
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
