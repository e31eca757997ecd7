// The Python module fastgan._C: build information, the CPU kernels' instruction set
// (chosen at import, csrc/cpu/dispatch.cpp), and the eager fast paths. Importing it
// registers every fastgan:: op (their TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL blocks
// run at load).
#include <Python.h>
#include <torch/extension.h>

#include <string>
#include <string_view>

#ifndef FASTGAN_CUDA_ARCHS
#define FASTGAN_CUDA_ARCHS ""
#endif

#include "cpu/dispatch.h"
#include "gan_loss_math.h"
#include "py_fast_path.h"

namespace fastgan {
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_forward_call(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    double slope);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_forward_call(
    const at::Tensor& real, const at::Tensor& fake, c10::string_view kind,
    c10::string_view reduction, double real_label);
}  // namespace fastgan

namespace {

pybind11::dict build_info() {
  pybind11::dict d;
  d["cpu_capabilities"] = fastgan::cpu::built_capabilities();
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
// boxed call) as long again. This function recognises the common case in C++ -- two
// tensors of one floating dtype on one device, both non-empty, a known kind and
// reduction, a valid real_label, on a device whose backend is this extension's kernel --
// and runs the op through the dispatcher (autograd included), returning (d_loss, g_loss,
// d_real, d_fake). Anything else returns None and the caller takes the Python path,
// which raises the errors, promotes mixed dtypes and runs the other backends; so this
// path never decides anything the Python one would decide differently.
//
// gan_loss_eager(real, fake, kind, reduction, real_label, compiled_devices):
// compiled_devices is fastgan._backend.compiled_devices("gan_loss", ...), the device
// types (a mask: 1 the CPU, 2 CUDA) on which the backend choice -- made in Python only --
// is this extension's kernel. It is a raw METH_FASTCALL function rather than a pybind11
// binding: pybind11's argument dispatch alone costs a tenth of the op here.
PyObject* gan_loss_eager(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  namespace gl = fastgan::gan_loss;
  if (nargs != 6) {
    PyErr_Format(PyExc_TypeError, "gan_loss_eager() takes 6 arguments (%zd given)", nargs);
    return nullptr;
  }
  PyObject *real = args[0], *fake = args[1], *kind = args[2], *reduction = args[3],
           *real_label = args[4];
  double label = 1.0;
  long devices = PyLong_Check(args[5]) ? PyLong_AsLong(args[5]) : 0;
  if (devices == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    devices = 0;
  }
  if (!THPVariable_Check(real) || !THPVariable_Check(fake) || !PyUnicode_Check(kind) ||
      !PyUnicode_Check(reduction) || !fastgan::number_arg(real_label, label)) {
    Py_RETURN_NONE;
  }
  Py_ssize_t nk = 0, nr = 0;
  const char* k = PyUnicode_AsUTF8AndSize(kind, &nk);
  const char* red = PyUnicode_AsUTF8AndSize(reduction, &nr);
  if (k == nullptr || red == nullptr) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  const std::string_view kind_name(k, nk), reduction_name(red, nr);
  const int kid = gl::kind_from_name(kind_name);
  if (kid < 0 || gl::reduction_is_mean(reduction_name) < 0) Py_RETURN_NONE;
  if (label != 1.0 && !(label >= 0.0 && label <= 1.0 && gl::is_logistic(gl::Kind(kid)))) {
    Py_RETURN_NONE;
  }
  const at::Tensor& r = THPVariable_Unpack(real);
  const at::Tensor& f = THPVariable_Unpack(fake);
  if (!at::isFloatingType(r.scalar_type()) || r.scalar_type() != f.scalar_type() ||
      r.numel() == 0 || f.numel() == 0 || r.device() != f.device()) {
    Py_RETURN_NONE;
  }
  // rpgan pairs the logits: unequal sizes are the Python path's ValueError.
  if (gl::is_paired(gl::Kind(kid)) && r.numel() != f.numel()) Py_RETURN_NONE;
  if (!(devices & (r.is_cpu() ? 1 : r.is_cuda() ? 2 : 0))) Py_RETURN_NONE;
  auto [d_loss, g_loss, d_real, d_fake] = fastgan::gan_loss_forward_call(
      r, f, c10::string_view(k, nk), c10::string_view(red, nr), label);
  return fastgan::tensors_tuple(std::move(d_loss), std::move(g_loss), std::move(d_real),
                                std::move(d_fake));
  END_HANDLE_TH_ERRORS
}

// fastgan.ops.bn_act.forward_with_stats on the compiled backends in eager mode, after
// its argument checks and backend choice: fastgan::bn_act_forward (autograd and the
// running-stats update included) called from C++ (csrc/bn_act.cpp's bn_act_forward_call).
// At DCGAN layer sizes a boxed torch.ops call and its Python glue cost more than the
// fused kernel saves on a small layer.
// bn_act_eager(x, weight, bias, running_mean, running_var, training, momentum, eps,
//              negative_slope) -> (y, mean, var): the op's arguments; the tensors other
// than x may be None.
PyObject* bn_act_eager(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 9) {
    PyErr_Format(PyExc_TypeError, "bn_act_eager() takes 9 arguments (%zd given)", nargs);
    return nullptr;
  }
  c10::optional<at::Tensor> opt[4];
  bool ok = THPVariable_Check(args[0]) && PyBool_Check(args[5]);
  for (int i = 0; ok && i < 4; ++i) {
    if (THPVariable_Check(args[i + 1])) opt[i] = THPVariable_Unpack(args[i + 1]);
    else ok = args[i + 1] == Py_None;
  }
  double momentum = 0, eps = 0, slope = 0;
  ok = ok && fastgan::number_arg(args[6], momentum) && fastgan::number_arg(args[7], eps) &&
       fastgan::number_arg(args[8], slope);
  if (!ok) {
    PyErr_SetString(PyExc_TypeError,
                    "bn_act_eager(x, weight, bias, running_mean, running_var, training, "
                    "momentum, eps, negative_slope): expected tensors (or None), a bool and "
                    "three numbers");
    return nullptr;
  }
  auto [y, mean, var] =
      fastgan::bn_act_forward_call(THPVariable_Unpack(args[0]), opt[0], opt[1], opt[2],
                                     opt[3], args[5] == Py_True, momentum, eps, slope);
  return fastgan::tensors_tuple(std::move(y), std::move(mean), std::move(var));
  END_HANDLE_TH_ERRORS
}

PyMethodDef kRawMethods[] = {
    {"gan_loss_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&gan_loss_eager)),
     METH_FASTCALL,
     "gan_loss_eager(real, fake, kind, reduction, real_label, compiled_devices): "
     "fastgan::gan_loss_forward for the common case, else None (eager fast path)"},
    {"bn_act_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&bn_act_eager)),
     METH_FASTCALL,
     "bn_act_eager(x, weight, bias, running_mean, running_var, training, momentum, eps, "
     "negative_slope): fastgan::bn_act_forward, called from C++"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PYBIND11_MODULE(_C, m) {
  try {
    fastgan::cpu::capability();  // chosen now, so a bad FASTGAN_CPU_CAPABILITY fails the import
  } catch (const c10::Error& e) {
    throw pybind11::import_error(e.what_without_backtrace());
  }
  m.doc() = "fastgan compiled kernels (CPU, and CUDA when built with it)";
  m.def("build_info", &build_info, "How this extension was built");
  m.def("cpu_capability", &fastgan::cpu::capability,
        "The instruction set of the CPU kernels in use: default, avx2 or avx512");
  m.def("cpu_capabilities_supported", &fastgan::cpu::supported_capabilities,
        "The instruction sets this build has CPU kernels for that this CPU runs");
  if (PyModule_AddFunctions(m.ptr(), kRawMethods) != 0) throw pybind11::error_already_set();
}
