// Picks the CPU kernels' instruction set (see dispatch.h) and registers the ops' CPU
// kernels, which call the chosen copy. Compiled once, for the baseline instruction set.
#include "dispatch.h"

#include <torch/library.h>

#include "../bn_act.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>


namespace fastgan {
namespace cpu {

// Each built copy's table (csrc/cpu/kernels/table.cpp, compiled per instruction set);
// FASTGAN_CPU_AVX2 / FASTGAN_CPU_AVX512 say which copies setup.py built.
namespace DEFAULT {
const KernelTable& kernel_table();
}
#ifdef FASTGAN_CPU_AVX2
namespace AVX2 {
const KernelTable& kernel_table();
}
#endif
#ifdef FASTGAN_CPU_AVX512
namespace AVX512 {
const KernelTable& kernel_table();
}
#endif

namespace {

struct Variant {
  const char* name;
  const KernelTable& (*table)();
  bool (*cpu_runs)();
  const char* needs;  // what the CPU must have, in words
};

#if defined(__x86_64__) || defined(__i386__)
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
  // the flags setup.py compiles the AVX-512 copy with (at::vec's AVX512 needs all four);
  // libgcc also checks that the OS saves the ZMM registers
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
}
#endif
bool always() { return true; }

// Built copies, baseline first, best last.
const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = {
      {"default", &DEFAULT::kernel_table, &always, "nothing"},
#ifdef FASTGAN_CPU_AVX2
      {"avx2", &AVX2::kernel_table, &cpu_has_avx2, "avx2, fma and f16c"},
#endif
#ifdef FASTGAN_CPU_AVX512
      {"avx512", &AVX512::kernel_table, &cpu_has_avx512, "avx512f, avx512bw, avx512vl and avx512dq"},
#endif
  };
  return v;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

const Variant& choose() {
  const auto& all = variants();
  const char* env = std::getenv("FASTGAN_CPU_CAPABILITY");
  std::string want = env ? env : "";
  std::transform(want.begin(), want.end(), want.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (want.empty()) {
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      if (it->cpu_runs()) return *it;
    }
  }
  for (const auto& v : all) {
    if (want != v.name) continue;
    TORCH_CHECK(v.cpu_runs(), "FASTGAN_CPU_CAPABILITY=", want, " needs a CPU with ", v.needs,
                ", which this one lacks; it runs: ", join(supported_capabilities()));
    return v;
  }
  const bool known = want == "default" || want == "avx2" || want == "avx512";
  TORCH_CHECK(!known, "FASTGAN_CPU_CAPABILITY=", want, ": this build of fastgan._C has CPU kernels "
              "for ", join(built_capabilities()), " only");
  TORCH_CHECK(false, "FASTGAN_CPU_CAPABILITY must be default, avx2 or avx512 (or unset: the best "
              "this CPU runs), got '", env, "'");
  return all.front();  // not reached
}

const Variant& chosen() {
  static const Variant& v = choose();  // a throw leaves it unset: the next call retries
  return v;
}

}  // namespace

const std::string& capability() {
  static const std::string name = chosen().name;
  return name;
}

std::vector<std::string> built_capabilities() {
  std::vector<std::string> names;
  for (const auto& v : variants()) names.emplace_back(v.name);
  return names;
}

std::vector<std::string> supported_capabilities() {
  std::vector<std::string> names;
  for (const auto& v : variants()) {
    if (v.cpu_runs()) names.emplace_back(v.name);
  }
  return names;
}

const KernelTable& kernels() {
  static const KernelTable& t = chosen().table();
  return t;
}

// ---------------------------------------------------------------------------
// The ops' CPU kernels, each a call through kernels().

namespace {

Tensor3 bn_act_forward(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                       const OptTensor& running_mean, const OptTensor& running_var,
                       bool training, double momentum, double eps, double negative_slope) {
  return bn_act::forward_and_update(kernels().bn_act_forward, input, weight, bias, running_mean,
                                    running_var, training, momentum, eps, negative_slope);
}

Tensor3 bn_act_backward(const at::Tensor& grad_out, const at::Tensor& input,
                        const OptTensor& weight, const OptTensor& bias, const at::Tensor& mean,
                        const at::Tensor& var, bool training, double eps,
                        double negative_slope, std::array<bool, 3> output_mask) {
  return kernels().bn_act_backward(grad_out, input, weight, bias, mean, var, training, eps,
                                   negative_slope, output_mask);
}

Tensor4 gan_loss_forward(const at::Tensor& real_logits, const at::Tensor& fake_logits,
                         c10::string_view kind, c10::string_view reduction, double real_label) {
  return kernels().gan_loss_forward(real_logits, fake_logits, kind, reduction, real_label);
}

std::tuple<at::Tensor, at::Tensor> gan_loss_backward(
    const at::Tensor& grad_d_loss, const at::Tensor& grad_g_loss, const at::Tensor& real_logits,
    const at::Tensor& fake_logits, c10::string_view kind, c10::string_view reduction,
    double real_label, std::array<bool, 2> output_mask) {
  return kernels().gan_loss_backward(grad_d_loss, grad_g_loss, real_logits, fake_logits, kind,
                                     reduction, real_label, output_mask);
}

at::Tensor bias_act_forward(const at::Tensor& x, const OptTensor& b, int64_t dim,
                            c10::string_view act, double alpha, double gain, double clamp) {
  return kernels().bias_act_forward(x, b, dim, act, alpha, gain, clamp);
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward(
    const at::Tensor& grad, const OptTensor& ref, const OptTensor& b, int64_t dim,
    c10::string_view act, double alpha, double gain, double clamp, int64_t order,
    std::array<bool, 2> output_mask) {
  return kernels().bias_act_backward(grad, ref, b, dim, act, alpha, gain, clamp, order,
                                     output_mask);
}

at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, at::IntArrayRef up,
                     at::IntArrayRef down, at::IntArrayRef padding, bool flip_filter,
                     double gain) {
  return kernels().upfirdn2d(x, f, up, down, padding, flip_filter, gain);
}

// bn_act's forward-and-update with the per-sample affine in place of weight and bias.
Tensor3 cbn_act_forward(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift,
                        const OptTensor& running_mean, const OptTensor& running_var,
                        bool training, double momentum, double eps, double negative_slope) {
  auto kernel = [](const at::Tensor& x, const OptTensor& s, const OptTensor& b,
                   const OptTensor& rm, const OptTensor& rv, bool train, double e, double slope) {
    return kernels().cbn_act_forward(x, *s, *b, rm, rv, train, e, slope);
  };
  return bn_act::forward_and_update(kernel, input, OptTensor(scale), OptTensor(shift),
                                    running_mean, running_var, training, momentum, eps,
                                    negative_slope);
}

Tensor3 cbn_act_backward(const at::Tensor& grad_out, const at::Tensor& input,
                         const at::Tensor& scale, const at::Tensor& shift,
                         const at::Tensor& mean, const at::Tensor& var, bool training,
                         double eps, double negative_slope, std::array<bool, 3> output_mask) {
  return kernels().cbn_act_backward(grad_out, input, scale, shift, mean, var, training, eps,
                                    negative_slope, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("bn_act_forward", &bn_act_forward);
  m.impl("bn_act_backward", &bn_act_backward);
  m.impl("gan_loss_forward", &gan_loss_forward);
  m.impl("gan_loss_backward", &gan_loss_backward);
  m.impl("bias_act_forward", &bias_act_forward);
  m.impl("bias_act_backward", &bias_act_backward);
  m.impl("upfirdn2d", &upfirdn2d);
  m.impl("cbn_act_forward", &cbn_act_forward);
  m.impl("cbn_act_backward", &cbn_act_backward);
}

}  // namespace cpu
}  // namespace fastgan
