// The entry points of one instruction set's copy of the CPU kernels. Sources in this
// folder are compiled once per instruction set with CPU_CAPABILITY naming it (setup.py),
// so all their code lives in fastgan::cpu::<CPU_CAPABILITY> (including the helpers of
// vec_io.h, whose vector types differ per copy): no symbol of one copy
// can stand in for another's. They hold no static initialisers and no op registrations,
// so loading _C never runs an instruction the CPU lacks; csrc/cpu/dispatch.cpp
// registers the ops and calls the chosen copy.
#pragma once

#include "../dispatch.h"

#ifndef CPU_CAPABILITY
#error "csrc/cpu/kernels/ is compiled per instruction set: setup.py defines CPU_CAPABILITY"
#endif

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {

Tensor3 bn_act_forward(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                       const OptTensor& running_mean, const OptTensor& running_var,
                       bool training, double eps, double negative_slope);
Tensor3 bn_act_backward(const at::Tensor& grad_out, const at::Tensor& input,
                        const OptTensor& weight, const OptTensor& bias, const at::Tensor& mean,
                        const at::Tensor& var, bool training, double eps,
                        double negative_slope, std::array<bool, 3> output_mask);
Tensor4 gan_loss_forward(const at::Tensor& real_logits, const at::Tensor& fake_logits,
                         c10::string_view kind, c10::string_view reduction, double real_label);
std::tuple<at::Tensor, at::Tensor> gan_loss_backward(
    const at::Tensor& grad_d_loss, const at::Tensor& grad_g_loss, const at::Tensor& real_logits,
    const at::Tensor& fake_logits, c10::string_view kind, c10::string_view reduction,
    double real_label, std::array<bool, 2> output_mask);

at::Tensor bias_act_forward(const at::Tensor& x, const OptTensor& b, int64_t dim,
                            c10::string_view act, double alpha, double gain, double clamp);
std::tuple<at::Tensor, at::Tensor> bias_act_backward(
    const at::Tensor& grad, const OptTensor& ref, const OptTensor& b, int64_t dim,
    c10::string_view act, double alpha, double gain, double clamp, int64_t order,
    std::array<bool, 2> output_mask);
at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, at::IntArrayRef up,
                     at::IntArrayRef down, at::IntArrayRef padding, bool flip_filter,
                     double gain);

Tensor3 cbn_act_forward(const at::Tensor& input, const at::Tensor& scale,
                        const at::Tensor& shift, const OptTensor& running_mean,
                        const OptTensor& running_var, bool training, double eps,
                        double negative_slope);
Tensor3 cbn_act_backward(const at::Tensor& grad_out, const at::Tensor& input,
                         const at::Tensor& scale, const at::Tensor& shift,
                         const at::Tensor& mean, const at::Tensor& var, bool training,
                         double eps, double negative_slope, std::array<bool, 3> output_mask);

// This copy's table (kernels/table.cpp).
const KernelTable& kernel_table();

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
