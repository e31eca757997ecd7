"""Triton kernels of the fused conditional BatchNorm2d + LeakyReLU op (cbn_act), and their
host-side launchers.

The per-channel batch statistics are bn_act's (fastgan.kernels.bn_act.batch_stats, which
fastgan/ops/cbn_act_triton.py calls before `forward`): this module holds what differs,
the passes with the per-sample affine z = x * A[n,c] + B[n,c], A = scale[n,c] * invstd[c],
B = shift[n,c] - mean[c] * A (csrc/cbn_act_math.h is the same math in C++).

Every kernel runs on the grid (channel programs, samples): program (pc, n) walks the H*W
values of its channel (NCHW: one plane, 1-D tiles) or its block of BLOCK_K channels
(channels_last: [BLOCK_R rows, BLOCK_K channels] tiles) of sample n. So the per-(n, c)
values are loaded once per program, no element needs an integer division, and the
backward's per-(n, c) sums need no merge across programs (deterministic).

Passes (each reads the input once):
  forward      _apply_kernel: y = leaky(x * A + B) with the statistics given
  backward     _grad_sums_kernel -> (N, C) S1 = sum(dz), S2 = sum(dz * (x - mean)),
               dz = dy * leaky'(z) recomputed from x; per channel (torch ops on (N, C)):
               T1 = sum_n scale * S1, T2 = sum_n scale * S2; _grad_input_kernel ->
               dx = invstd * (scale * dz - proj * (x - mean) - mean_dz), in training
               proj = invstd^2 * T2 / M and mean_dz = T1 / M, in eval both 0.
grad_shift = S1 and grad_scale = invstd * S2.

Numerics as kernels/bn_act.py: fp32 arithmetic for fp32/bf16/fp16 inputs, fp64 for fp64
(the dtype of the statistics), eps and the slope passed as (hi, lo) fp32 pairs; offsets
are 64-bit when the input has >= 2**31 elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastgan.kernels.common import acc_dtype, f64, leaky, leaky_grad, split_f64

INDEX64_MIN_NUMEL = 2**31
TILE = 1024  # values per tile (NCHW: a run of a plane; NHWC: BLOCK_R x BLOCK_K)
MAX_BLOCK_K = 64
NUM_WARPS = 4


@triton.jit
def _program(C, HW, CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr,
             BLOCK_K: tl.constexpr):
    """This program's (pid_c, n, base offset of its sample, channel columns, column mask):
    the columns are [1, BLOCK_K] channel indices (NHWC) or the channel itself (NCHW)."""
    pid_c = tl.program_id(0)
    n = tl.program_id(1)
    if INDEX_64:
        n = n.to(tl.int64)
    if CHANNELS_LAST:
        cols = pid_c * BLOCK_K + tl.arange(0, BLOCK_K)
        cmask = cols < C
        base = n * HW * C
    else:
        cols = pid_c
        cmask = pid_c < C
        base = (n * C + pid_c) * HW
    return pid_c, n, base, cols, cmask


@triton.jit
def _load_per_channel(ptr, cols, cmask, acc_ty: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """A C-vector's values for this program: [1, BLOCK_K] (NHWC) or a scalar (NCHW)."""
    if CHANNELS_LAST:
        v = tl.load(ptr + cols, mask=cmask, other=0.0).to(acc_ty)[None, :]
    else:
        v = tl.load(ptr + cols).to(acc_ty)
    return v


@triton.jit
def _affine(mean_ptr, var_ptr, scale_ptr, shift_ptr, n, cols, cmask, C, eps,
            acc_ty: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """mean, invstd, scale and the folded (A, B) of sample n's channels of this program."""
    mean = _load_per_channel(mean_ptr, cols, cmask, acc_ty, CHANNELS_LAST)
    var = _load_per_channel(var_ptr, cols, cmask, acc_ty, CHANNELS_LAST)
    invstd = tl.rsqrt(var + eps)  # as kernels/bn_act.py: _inv_std
    s = _load_per_channel(scale_ptr + n * C, cols, cmask, acc_ty, CHANNELS_LAST)
    b = _load_per_channel(shift_ptr + n * C, cols, cmask, acc_ty, CHANNELS_LAST)
    a = s * invstd
    return mean, invstd, s, a, b - mean * a


@triton.jit
def _tile(base, t0, cols, cmask, C, HW, CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr,
          BLOCK_R: tl.constexpr):
    """Offsets and mask of the tile at position t0 of this program's H*W values."""
    if CHANNELS_LAST:
        rows = t0 + tl.arange(0, BLOCK_R)
        if INDEX_64:
            rows = rows.to(tl.int64)
        offs = base + rows[:, None] * C + cols
        mask = (rows < HW)[:, None] & cmask[None, :]
    else:
        hw = t0 + tl.arange(0, BLOCK_R)
        offs = base + hw
        mask = hw < HW
    return offs, mask


@triton.jit
def _apply_kernel(x_ptr, y_ptr, mean_ptr, var_ptr, scale_ptr, shift_ptr, C, HW,
                  eps_hi, eps_lo, slope_hi, slope_lo, CHANNELS_LAST: tl.constexpr,
                  INDEX_64: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    """y = leaky(x * A[n,c] + B[n,c])."""
    acc_ty: tl.constexpr = mean_ptr.dtype.element_ty
    _pid, n, base, cols, cmask = _program(C, HW, CHANNELS_LAST, INDEX_64, BLOCK_K)
    slope = f64(slope_hi, slope_lo, acc_ty)
    _m, _i, _s, a, b = _affine(mean_ptr, var_ptr, scale_ptr, shift_ptr, n, cols, cmask, C,
                               f64(eps_hi, eps_lo, acc_ty), acc_ty, CHANNELS_LAST)
    for t0 in range(0, HW, BLOCK_R):
        offs, mask = _tile(base, t0, cols, cmask, C, HW, CHANNELS_LAST, INDEX_64, BLOCK_R)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        tl.store(y_ptr + offs, leaky(x * a + b, slope).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_sums_kernel(dy_ptr, x_ptr, mean_ptr, var_ptr, scale_ptr, shift_ptr, s1_ptr, s2_ptr,
                      C, HW, eps_hi, eps_lo, slope_hi, slope_lo, CHANNELS_LAST: tl.constexpr,
                      INDEX_64: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    """S1[n,c] = sum(dz), S2[n,c] = sum(dz * (x - mean)) over sample n's H*W values."""
    acc_ty: tl.constexpr = mean_ptr.dtype.element_ty
    _pid, n, base, cols, cmask = _program(C, HW, CHANNELS_LAST, INDEX_64, BLOCK_K)
    slope = f64(slope_hi, slope_lo, acc_ty)
    mean, _i, _s, a, b = _affine(mean_ptr, var_ptr, scale_ptr, shift_ptr, n, cols, cmask, C,
                                 f64(eps_hi, eps_lo, acc_ty), acc_ty, CHANNELS_LAST)
    if CHANNELS_LAST:
        s1 = tl.zeros([BLOCK_R, BLOCK_K], acc_ty)
        s2 = tl.zeros([BLOCK_R, BLOCK_K], acc_ty)
    else:
        s1 = tl.zeros([BLOCK_R], acc_ty)
        s2 = tl.zeros([BLOCK_R], acc_ty)
    for t0 in range(0, HW, BLOCK_R):
        offs, mask = _tile(base, t0, cols, cmask, C, HW, CHANNELS_LAST, INDEX_64, BLOCK_R)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        dz = dy * leaky_grad(x * a + b, slope)  # 0 on masked lanes (dy = 0)
        s1 += dz
        s2 += dz * (x - mean)
    if CHANNELS_LAST:
        tl.store(s1_ptr + n * C + cols, tl.sum(s1, 0), mask=cmask)
        tl.store(s2_ptr + n * C + cols, tl.sum(s2, 0), mask=cmask)
    else:
        tl.store(s1_ptr + n * C + cols, tl.sum(s1, 0))
        tl.store(s2_ptr + n * C + cols, tl.sum(s2, 0))


@triton.jit
def _grad_input_kernel(dy_ptr, x_ptr, dx_ptr, mean_ptr, var_ptr, scale_ptr, shift_ptr, t1_ptr,
                       t2_ptr, C, HW, COUNT, eps_hi, eps_lo, slope_hi, slope_lo,
                       TRAINING: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                       INDEX_64: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    """dx = invstd * (scale * dz - (proj * (x - mean) + mean_dz)); proj, mean_dz = 0 in eval."""
    acc_ty: tl.constexpr = mean_ptr.dtype.element_ty
    _pid, n, base, cols, cmask = _program(C, HW, CHANNELS_LAST, INDEX_64, BLOCK_K)
    slope = f64(slope_hi, slope_lo, acc_ty)
    mean, invstd, s, a, b = _affine(mean_ptr, var_ptr, scale_ptr, shift_ptr, n, cols, cmask, C,
                                    f64(eps_hi, eps_lo, acc_ty), acc_ty, CHANNELS_LAST)
    if TRAINING:
        inv_m = 1.0 / COUNT.to(acc_ty)
        proj = invstd * invstd * _load_per_channel(t2_ptr, cols, cmask, acc_ty,
                                                   CHANNELS_LAST) * inv_m
        mean_dz = _load_per_channel(t1_ptr, cols, cmask, acc_ty, CHANNELS_LAST) * inv_m
    for t0 in range(0, HW, BLOCK_R):
        offs, mask = _tile(base, t0, cols, cmask, C, HW, CHANNELS_LAST, INDEX_64, BLOCK_R)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        g = dy * leaky_grad(x * a + b, slope) * s
        if TRAINING:
            g = g - (proj * (x - mean) + mean_dz)
        tl.store(dx_ptr + offs, (invstd * g).to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Host side.

def channels_last(x: torch.Tensor) -> bool:
    """Whether x is walked as channels_last (strictly: not also NCHW-contiguous)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _layout(t: torch.Tensor, cl: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def _launch(x: torch.Tensor, cl: bool) -> tuple[tuple[int, int], dict]:
    N, C, H, W = x.shape
    HW = H * W
    if cl:
        block_k = min(triton.next_power_of_2(C), MAX_BLOCK_K)
        block_r = max(1, min(triton.next_power_of_2(HW), TILE // block_k))
        grid = (triton.cdiv(C, block_k), N)
    else:
        block_k, block_r = 1, min(triton.next_power_of_2(HW), TILE)
        grid = (C, N)
    meta = {"CHANNELS_LAST": cl, "INDEX_64": x.numel() >= INDEX64_MIN_NUMEL,
            "BLOCK_K": block_k, "BLOCK_R": block_r, "num_warps": NUM_WARPS}
    return grid, meta


def forward(input: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, mean: torch.Tensor,
            var: torch.Tensor, eps: float, negative_slope: float) -> torch.Tensor:
    """y = leaky((x - mean) * invstd * scale + shift) with the statistics given; y keeps
    the input's layout (channels_last stays channels_last, anything else is NCHW)."""
    cl = channels_last(input)
    x = _layout(input, cl)
    acc = acc_dtype(x)
    y = torch.empty_like(x)
    grid, meta = _launch(x, cl)
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    wrap_triton(_apply_kernel)[grid](
        x, y, mean.to(acc).contiguous(), var.to(acc).contiguous(), scale.contiguous(),
        shift.contiguous(), C, HW, *split_f64(eps), *split_f64(negative_slope), **meta)
    return y


def backward(grad_out: torch.Tensor, input: torch.Tensor, scale: torch.Tensor,
             shift: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, training: bool,
             eps: float, negative_slope: float, output_mask):
    """(grad_input, grad_scale, grad_shift) as fastgan::cbn_act_backward; outputs masked
    off are empty."""
    cl = channels_last(input)
    x, dy = _layout(input, cl), _layout(grad_out, cl)
    acc = acc_dtype(x)
    N, C = x.shape[:2]
    HW = x.shape[2] * x.shape[3]
    mean, var = mean.to(acc).contiguous(), var.to(acc).contiguous()
    scale, shift = scale.contiguous(), shift.contiguous()
    grid, meta = _launch(x, cl)
    eps2, slope2 = split_f64(eps), split_f64(negative_slope)
    want_gx, want_gs, want_gb = (bool(m) for m in output_mask)
    s1 = s2 = t1 = t2 = mean  # placeholders, never read unless computed
    if (want_gx and training) or want_gs or want_gb:
        s1 = x.new_empty((N, C), dtype=acc)
        s2 = x.new_empty((N, C), dtype=acc)
        wrap_triton(_grad_sums_kernel)[grid](dy, x, mean, var, scale, shift, s1, s2, C, HW,
                                             *eps2, *slope2, **meta)
    if want_gx:
        if training:
            sa = scale.to(acc)
            t1, t2 = (sa * s1).sum(0), (sa * s2).sum(0)
        gx = torch.empty_like(x)
        wrap_triton(_grad_input_kernel)[grid](
            dy, x, gx, mean, var, scale, shift, t1, t2, C, HW, N * HW, *eps2, *slope2,
            TRAINING=bool(training), **meta)
    else:
        gx = x.new_empty((0,))
    gs = ((s2 * torch.rsqrt(var + eps)).to(scale.dtype) if want_gs
          else x.new_empty((0,), dtype=scale.dtype))
    gb = s1.to(shift.dtype) if want_gb else x.new_empty((0,), dtype=shift.dtype)
    return gx, gs, gb


# Every kernel of this file, for the ahead-of-time compile check (fastgan.kernels.aot).
KERNELS = (_apply_kernel, _grad_sums_kernel, _grad_input_kernel)


def aot_cases(quick: bool = False) -> list:
    """Representative calls of the launchers (on meta tensors) for fastgan.kernels.aot: a
    BigGAN-like generator layer and an odd shape, NCHW and channels_last, fp32 and bf16,
    fp64 once; forward, backward in training and eval. `quick` keeps three."""
    big, odd = (64, 256, 16, 16), (3, 33, 9, 11)
    combos = [(s, dt, cl) for s in (big, odd) for dt in (torch.float32, torch.bfloat16)
              for cl in (False, True)]
    if quick:
        combos = [(big, torch.float32, False), (odd, torch.bfloat16, True)]
    combos.append((odd, torch.float64, False))

    def case(shape, dtype, cl):
        def run():
            x = torch.empty(shape, dtype=dtype, device="meta")
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            N, C = shape[:2]
            s = torch.empty((N, C), dtype=torch.float32, device="meta")
            stats = torch.empty(C, dtype=acc_dtype(x), device="meta")
            y = forward(x, s, s, stats, stats, 1e-5, 0.2)
            backward(y, x, s, s, stats, stats, True, 1e-5, 0.2, [True, True, True])
            backward(y, x, s, s, stats, stats, False, 1e-5, 0.2, [True, False, False])
        return run

    return [case(*c) for c in combos]
