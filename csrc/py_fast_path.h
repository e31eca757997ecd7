// Helpers of the eager fast paths (raw METH_FASTCALL functions of fastgan._C that run
// a common case in one C++ call and return None for everything else).
#pragma once

#include <Python.h>

#include <cstdlib>
#include <string_view>

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

}  // namespace fastgan
