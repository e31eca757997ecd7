// NCHW <-> channels_last copies of 4-D CPU tensors by tile transposes:
// fastgan._C.relayout(x, to_channels_last) -> Tensor, or None where it does not apply.
//
// A training ConvTranspose2d block that runs its convolution in channels_last for an
// NCHW caller (fastgan/nn/blocks.py) relays its input forward, again in backward (the
// saved input is the caller's tensor), and the input's gradient back. ATen's strided
// copy does that element by element: 1.5-4.6 ms against 0.55-1.3 ms here for 8-16 MiB
// of fp32 (BENCHMARKS.md).
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../common.h"
#include "transpose.h"

namespace fastgan {
namespace cpu {
namespace {

constexpr int64_t kPos = 64;  // positions per task: C x kPos values move per task

at::Tensor relayout(const at::Tensor& x, bool to_channels_last) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor out =
      to_channels_last
          ? at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast))
          : at::empty(x.sizes(), x.options());
  const int64_t blocks = (HW + kPos - 1) / kPos;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "relayout", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t per_task = C * std::min(kPos, HW);
    const int64_t grain = x.numel() < 65536 ? N * blocks : std::max<int64_t>(1, 16384 / per_task);
    at::parallel_for(0, N * blocks, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / blocks, p0 = (t % blocks) * kPos, len = std::min(kPos, HW - p0);
        const int64_t base = n * C * HW;
        if (to_channels_last) {  // [C][HW] -> [HW][C]
          transpose_tiles<scalar_t>(src + base + p0, HW, dst + base + p0 * C, C, C, len);
        } else {  // [HW][C] -> [C][HW]
          transpose_tiles<scalar_t, true>(src + base + p0 * C, C, dst + base + p0, HW, len, C);
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace cpu

// relayout(x, to_channels_last): x NCHW-contiguous (to_channels_last=True) or strictly
// channels_last (False), 4-D, floating, on the CPU, not requiring grad; else None.
PyObject* relayout_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 2 || !THPVariable_Check(args[0]) || !PyBool_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "relayout(x: Tensor, to_channels_last: bool)");
    return nullptr;
  }
  const at::Tensor& x = THPVariable_Unpack(args[0]);
  const bool to_cl = args[1] == Py_True;
  const bool ok_layout = to_cl ? x.is_contiguous() : is_channels_last(x);
  if (!x.is_cpu() || x.dim() != 4 || !at::isFloatingType(x.scalar_type()) || !ok_layout ||
      x.requires_grad() || x.numel() == 0 || x.is_conj() || x.is_neg()) {
    Py_RETURN_NONE;
  }
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = cpu::relayout(x, to_cl);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

}  // namespace fastgan
