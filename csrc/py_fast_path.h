// Helpers of the eager fast paths of csrc/fastgan.cpp: raw METH_FASTCALL functions of
// fastgan._C that skip the Python around an op call (gan_loss_eager, bn_act_eager).
#pragma once

#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdlib>
#include <string_view>
#include <utility>

namespace fastgan {

// Whether the backend requested for a tensor on the CPU (cuda = false) or a CUDA device
// is the one that device's compiled kernels serve: "auto", or the device's own name.
// `stack` is fastgan._backend._stack (use_backend's nesting, innermost last); when it
// is empty the request comes from $FASTGAN_BACKEND (os.environ writes reach getenv
// through putenv), else "auto". `ok` is false when the stack is not a list of str.
inline bool requested_backend_is(PyObject* stack, bool cuda, bool& ok) {
  std::string_view name = "auto";
  if (!PyList_Check(stack)) return ok = false;
  const Py_ssize_t n = PyList_GET_SIZE(stack);
  if (n > 0) {
    PyObject* top = PyList_GET_ITEM(stack, n - 1);
    if (!PyUnicode_Check(top)) return ok = false;
    Py_ssize_t len = 0;
    const char* s = PyUnicode_AsUTF8AndSize(top, &len);
    if (s == nullptr) {
      PyErr_Clear();
      return ok = false;
    }
    name = std::string_view(s, len);
  } else if (const char* env = std::getenv("FASTGAN_BACKEND"); env != nullptr && *env) {
    name = env;
  }
  ok = true;
  return name == "auto" || name == (cuda ? "cuda" : "cpu");
}

// Whether `t` is on a device this build has kernels for (the CPU; CUDA when built with
// it) and the requested backend (see requested_backend_is) is that device's.
inline bool compiled_backend_serves(PyObject* stack, const at::Tensor& t) {
#ifdef FASTGAN_WITH_CUDA
  const bool device_ok = t.is_cpu() || t.is_cuda();
#else
  const bool device_ok = t.is_cpu();
#endif
  bool ok = false;
  return device_ok && requested_backend_is(stack, t.is_cuda(), ok) && ok;
}

// A float or int argument (not a bool) as a double; false for anything else.
inline bool number_arg(PyObject* o, double& v) {
  if (PyBool_Check(o) || !(PyFloat_Check(o) || PyLong_Check(o))) return false;
  v = PyFloat_AsDouble(o);
  if (v == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

// A new tuple of the tensors as Python objects; nullptr with the exception set on failure.
template <typename... Tensors>
PyObject* tensors_tuple(Tensors&&... ts) {
  PyObject* tuple = PyTuple_New(sizeof...(Tensors));
  if (tuple == nullptr) return nullptr;
  Py_ssize_t i = 0;
  bool ok = true;
  auto put = [&](at::Tensor t) {
    PyObject* o = ok ? THPVariable_Wrap(std::move(t)) : nullptr;
    if (o == nullptr) ok = false;
    else PyTuple_SET_ITEM(tuple, i++, o);
  };
  (put(std::forward<Tensors>(ts)), ...);
  if (!ok) {
    Py_DECREF(tuple);  // unset items are NULL, which tuple deallocation skips
    return nullptr;
  }
  return tuple;
}

}  // namespace fastgan
