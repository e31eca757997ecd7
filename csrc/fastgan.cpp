// The Python module fastgan._C: build information, and a check that this CPU can run
// the instruction set the kernels were compiled for. Importing it registers every
// fastgan:: op (their TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL blocks run at load).
#include <Python.h>
#include <torch/extension.h>

#include <string>

#ifndef FASTGAN_CPU_ISA
#define FASTGAN_CPU_ISA "default"
#endif
#ifndef FASTGAN_CUDA_ARCHS
#define FASTGAN_CUDA_ARCHS ""
#endif

namespace fastgan {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_forward_call(
    const at::Tensor& real, const at::Tensor& fake, const std::string& kind,
    const std::string& reduction, double real_label);
}  // namespace fastgan

namespace {

bool cpu_supports_build_isa() {
#if defined(__x86_64__) || defined(__i386__)
  const std::string isa = FASTGAN_CPU_ISA;
  if (isa == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return true;
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["cpu_isa"] = FASTGAN_CPU_ISA;
#ifdef FASTGAN_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = FASTGAN_CUDA_ARCHS;
#else
  d["cuda"] = false;
  d["cuda_archs"] = "";
#endif
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["torch_version"] = FASTGAN_TORCH_VERSION;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  if (!cpu_supports_build_isa()) {
    throw pybind11::import_error(std::string("fastgan._C was compiled for the ") +
                                 FASTGAN_CPU_ISA +
                                 " instruction set, which this CPU lacks; rebuild with "
                                 "FASTGAN_CPU_ISA=avx2 or FASTGAN_CPU_ISA=default");
  }
  m.doc() = "fastgan compiled kernels (CPU, and CUDA when built with it)";
  m.def("build_info", &build_info, "How this extension was built");
  m.def("gan_loss_forward", &fastgan::gan_loss_forward_call,
        "fastgan::gan_loss_forward without torch.ops' boxed call (eager fast path)");
}
