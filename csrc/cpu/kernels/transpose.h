// Tile transposes shared by the mixed-layout BatchNorm backward (bn_act_nhwc.cpp) and
// the NCHW <-> NHWC relayout (relayout.cpp).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {

// Transposes the M x N matrix src (leading dimension ld_src) into dst (ld_dst), in
// 16 x 16 tiles, which at::vec transposes in registers for float, bf16 and fp16.
// ByDst = false: row tiles outer, each group of 16 source rows is read front to back.
// ByDst = true: column tiles outer, each group of 16 destination rows is written front
// to back (for a destination whose rows lie a power-of-two stride apart, which would
// otherwise all fall on the same cache sets).
template <typename scalar_t, bool ByDst = false>
inline void transpose_tiles(const scalar_t* src, int64_t ld_src, scalar_t* dst, int64_t ld_dst,
                            int64_t M, int64_t N) {
  constexpr int64_t T = 16;
  auto tile = [&](int64_t i, int64_t j) {
    at::vec::transpose_mxn<scalar_t>(src + i * ld_src + j, ld_src, dst + j * ld_dst + i, ld_dst,
                                     static_cast<int>(std::min(T, M - i)),
                                     static_cast<int>(std::min(T, N - j)));
  };
  const int64_t outer = ByDst ? N : M, inner = ByDst ? M : N;
  for (int64_t a = 0; a < outer; a += T) {
    for (int64_t b = 0; b < inner; b += T) {
      if constexpr (ByDst) {
        tile(b, a);
      } else {
        tile(a, b);
      }
    }
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
