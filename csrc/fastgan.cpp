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

#include "gan_loss_math.h"

namespace fastgan {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_forward_call(
    const at::Tensor& real, const at::Tensor& fake, c10::string_view kind,
    c10::string_view reduction, double real_label);
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

// fastgan.functional.gan_loss's eager fast path. At GAN batch sizes the loss op itself
// takes ~2 us, and its Python wrapper (argument checks, backend choice, torch.ops'
// boxed call) as long again. This binding recognises the common case in C++ -- two
// tensors of one floating dtype on one device (CPU, or CUDA when built with it), both
// non-empty, a known kind and reduction, a valid real_label -- and runs the op through
// the dispatcher (autograd included), returning (d_loss, g_loss, d_real, d_fake).
// Anything else returns None and the caller takes the Python path, which raises the
// errors, promotes mixed dtypes and honours forced backends; so this path never decides
// anything the Python one would decide differently. `backend` is the requested backend
// name ("auto" when none is forced).
pybind11::object gan_loss_eager(pybind11::handle real, pybind11::handle fake,
                                pybind11::handle kind, pybind11::handle reduction,
                                pybind11::handle real_label, const std::string& backend) {
  namespace gl = fastgan::gan_loss;
  const pybind11::object none = pybind11::none();
  if (!THPVariable_Check(real.ptr()) || !THPVariable_Check(fake.ptr()) ||
      !PyUnicode_Check(kind.ptr()) || !PyUnicode_Check(reduction.ptr()) ||
      PyBool_Check(real_label.ptr()) ||
      !(PyFloat_Check(real_label.ptr()) || PyLong_Check(real_label.ptr()))) {
    return none;
  }
  Py_ssize_t nk = 0, nr = 0;
  const char* k = PyUnicode_AsUTF8AndSize(kind.ptr(), &nk);
  const char* red = PyUnicode_AsUTF8AndSize(reduction.ptr(), &nr);
  if (k == nullptr || red == nullptr) {
    PyErr_Clear();
    return none;
  }
  const std::string_view kind_name(k, nk), reduction_name(red, nr);
  const int kid = gl::kind_from_name(kind_name);
  if (kid < 0 || gl::reduction_is_mean(reduction_name) < 0) return none;
  const double label = PyFloat_AsDouble(real_label.ptr());
  if (label == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return none;
  }
  if (label != 1.0 && !(label >= 0.0 && label <= 1.0 && gl::is_logistic(gl::Kind(kid)))) {
    return none;
  }
  const at::Tensor& r = THPVariable_Unpack(real.ptr());
  const at::Tensor& f = THPVariable_Unpack(fake.ptr());
  if (!at::isFloatingType(r.scalar_type()) || r.scalar_type() != f.scalar_type() ||
      r.numel() == 0 || f.numel() == 0 || r.device() != f.device()) {
    return none;
  }
  // the kernel auto picks for the device, unless another backend is requested
#ifdef FASTGAN_WITH_CUDA
  const bool cuda_ok = r.is_cuda() && (backend == "auto" || backend == "cuda");
#else
  const bool cuda_ok = false;
#endif
  const bool cpu_ok = r.is_cpu() && (backend == "auto" || backend == "cpu");
  if (!(cpu_ok || cuda_ok)) return none;
  auto out = fastgan::gan_loss_forward_call(r, f, c10::string_view(k, nk),
                                            c10::string_view(red, nr), label);
  return pybind11::make_tuple(std::get<0>(out), std::get<1>(out), std::get<2>(out),
                              std::get<3>(out));
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
  m.def("gan_loss_eager", &gan_loss_eager,
        "fastgan::gan_loss_forward for the common case, else None (eager fast path)");
}
