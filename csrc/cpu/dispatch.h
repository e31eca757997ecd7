// Run-time choice of the CPU kernels' instruction set.
//
// Every source in csrc/cpu/kernels/ is compiled once per instruction set that setup.py
// builds (default, and AVX2 and AVX-512 on x86-64), each copy in its own namespace
// fastgan::cpu::<CPU_CAPABILITY> (DEFAULT, AVX2, AVX512), as ATen's DispatchStub does.
// Each copy exports a KernelTable; csrc/cpu/dispatch.cpp picks one when fastgan._C is
// loaded: $FASTGAN_CPU_CAPABILITY when set, else the best this CPU runs. The ops'
// CPU registrations and the C++ entry points call through kernels().
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

namespace fastgan {
namespace cpu {

using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using OptTensor = c10::optional<at::Tensor>;

struct KernelTable {
  // each entry has the signature of its op's schema (csrc/bn_act.cpp, csrc/gan_loss.cpp,
  // csrc/bias_act.cpp, csrc/upfirdn2d.cpp, csrc/cbn_act.cpp)
  Tensor3 (*bn_act_forward)(const at::Tensor& input, const OptTensor& weight,
                            const OptTensor& bias, const OptTensor& running_mean,
                            const OptTensor& running_var, bool training, double eps,
                            double negative_slope);
  Tensor3 (*bn_act_backward)(const at::Tensor& grad_out, const at::Tensor& input,
                             const OptTensor& weight, const OptTensor& bias,
                             const at::Tensor& mean, const at::Tensor& var, bool training,
                             double eps, double negative_slope, std::array<bool, 3> output_mask);
  Tensor4 (*gan_loss_forward)(const at::Tensor& real_logits, const at::Tensor& fake_logits,
                              c10::string_view kind, c10::string_view reduction,
                              double real_label);
  std::tuple<at::Tensor, at::Tensor> (*gan_loss_backward)(
      const at::Tensor& grad_d_loss, const at::Tensor& grad_g_loss,
      const at::Tensor& real_logits, const at::Tensor& fake_logits, c10::string_view kind,
      c10::string_view reduction, double real_label, std::array<bool, 2> output_mask);
  at::Tensor (*bias_act_forward)(const at::Tensor& x, const OptTensor& b, int64_t dim,
                                 c10::string_view act, double alpha, double gain, double clamp);
  std::tuple<at::Tensor, at::Tensor> (*bias_act_backward)(
      const at::Tensor& grad, const OptTensor& ref, const OptTensor& b, int64_t dim,
      c10::string_view act, double alpha, double gain, double clamp, int64_t order,
      std::array<bool, 2> output_mask);
  at::Tensor (*upfirdn2d)(const at::Tensor& x, const at::Tensor& f, at::IntArrayRef up,
                          at::IntArrayRef down, at::IntArrayRef padding, bool flip_filter,
                          double gain);
  Tensor3 (*cbn_act_forward)(const at::Tensor& input, const at::Tensor& scale,
                             const at::Tensor& shift, const OptTensor& running_mean,
                             const OptTensor& running_var, bool training, double eps,
                             double negative_slope);
  Tensor3 (*cbn_act_backward)(const at::Tensor& grad_out, const at::Tensor& input,
                              const at::Tensor& scale, const at::Tensor& shift,
                              const at::Tensor& mean, const at::Tensor& var, bool training,
                              double eps, double negative_slope, std::array<bool, 3> output_mask);
};

// The instruction set in use ("default", "avx2" or "avx512"), chosen on the first call.
// Throws c10::Error with a message naming FASTGAN_CPU_CAPABILITY when it asks for
// something unknown, not built, or not supported by this CPU.
const std::string& capability();
// The instruction sets this build has kernels for, and those this CPU can run.
std::vector<std::string> built_capabilities();
std::vector<std::string> supported_capabilities();
// The kernels of capability().
const KernelTable& kernels();

}  // namespace cpu
}  // namespace fastgan
