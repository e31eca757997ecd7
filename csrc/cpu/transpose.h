// Tile transposes shared by the mixed-layout BatchNorm kernels (csrc/cpu/bn_act.cpp) and
// the NCHW <-> NHWC relayout (csrc/cpu/relayout.cpp).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace fastgan {
namespace cpu {

// Transposes the M x N matrix src (leading dimension ld_src) into dst (ld_dst), in
// 16 x 16 tiles, which at::vec transposes in registers for float, bf16 and fp16. Row
// tiles outer: each group of 16 source rows is read front to back.
template <typename scalar_t>
inline void transpose_tiles(const scalar_t* src, int64_t ld_src, scalar_t* dst, int64_t ld_dst,
                            int64_t M, int64_t N) {
  constexpr int64_t T = 16;
  for (int64_t i = 0; i < M; i += T) {
    const int mi = static_cast<int>(std::min(T, M - i));
    for (int64_t j = 0; j < N; j += T) {
      const int nj = static_cast<int>(std::min(T, N - j));
      at::vec::transpose_mxn<scalar_t>(src + i * ld_src + j, ld_src, dst + j * ld_dst + i,
                                       ld_dst, mi, nj);
    }
  }
}

// The same, column tiles outer: each group of 16 destination rows is written front to
// back (for a destination whose rows lie a power-of-two stride apart).
template <typename scalar_t>
inline void transpose_tiles_by_dst(const scalar_t* src, int64_t ld_src, scalar_t* dst,
                                   int64_t ld_dst, int64_t M, int64_t N) {
  constexpr int64_t T = 16;
  for (int64_t j = 0; j < N; j += T) {
    const int nj = static_cast<int>(std::min(T, N - j));
    for (int64_t i = 0; i < M; i += T) {
      const int mi = static_cast<int>(std::min(T, M - i));
      at::vec::transpose_mxn<scalar_t>(src + i * ld_src + j, ld_src, dst + j * ld_dst + i,
                                       ld_dst, mi, nj);
    }
  }
}

}  // namespace cpu
}  // namespace fastgan
