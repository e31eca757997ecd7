// NCHW <-> channels_last copies of 4-D CPU tensors by tile transposes (Python:
// fastgan._C.relayout(x, to_channels_last), csrc/cpu/dispatch.cpp).
//
// A training ConvTranspose2d block that runs its convolution in channels_last for an
// NCHW caller (fastgan/nn/blocks.py) relays its input forward, again in backward (the
// saved input is the caller's tensor), and the input's gradient back. ATen's strided
// copy does that element by element: 1.5-4.6 ms against 0.55-1.3 ms here for 8-16 MiB
// of fp32 (BENCHMARKS.md).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../../common.h"
#include "kernels.h"
#include "transpose.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {

namespace {
constexpr int64_t kPos = 64;  // positions per task: C x kPos values move per task
}  // namespace

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

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
