// Helpers of the eager fast paths of csrc/fastgan.cpp: raw METH_FASTCALL functions of
// fastgan._C that skip the Python around an op call (gan_loss_eager, bn_act_eager).
#pragma once

#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <utility>

namespace fastgan {

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
