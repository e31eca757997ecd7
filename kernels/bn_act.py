"""Triton kernels of the fused BatchNorm2d + LeakyReLU op, and their host-side launchers.

The launchers `forward` and `backward` have the semantics of fastgan::bn_act_forward /
fastgan::bn_act_backward (csrc/bn_act.cpp); fastgan/ops/bn_act_triton.py registers them
as the torch.library.triton_op ops fastgan::triton_bn_act_forward / _backward.

Views. An NCHW-contiguous input is read as, per channel c, a (rows = N) x (cols = H*W)
matrix at (n*C + c)*HW + hw; a channels_last input as a (rows = N*H*W) x (cols = C)
matrix at r*C + c, with a block of BLOCK_K channels per program. Any other layout is
made contiguous first. Every main kernel runs on the grid (channel programs, row
splits): program (pc, s) walks rows [s*ROWS_PER_SPLIT, (s+1)*ROWS_PER_SPLIT) of its
channel (block) in [BLOCK_R, BLOCK_K] tiles, so the per-channel values (mean, scale,
...) are loaded once per program and no element needs an integer division.

Passes (each reads the input once):
  forward, training   _stats_partial (per-lane Welford over the program's tiles, then a
                      Chan merge of the lanes) -> (S, C) partial moments; _stats_merge
                      (Chan merge of the S partials, count-weighted) -> mean, biased var;
                      _apply -> y = leaky(x * scale + shift)
  forward, eval       _apply with the running statistics
  backward            _grad_partial -> (S, C) partial sum(dz), sum(dz * (x - mean));
                      _grad_merge -> the sums, grad_weight; _grad_input -> dx.
                      x_hat and the activation mask are recomputed from the saved input.

Traffic per element, in units of the element size: forward 3 in training (x twice, y
once), 2 in eval; backward 5 (x and dy twice, dx once), 3 in eval or for dx alone, 2
for grad_weight / grad_bias alone. Everything per channel is O(C * splits).

Numerics: statistics and all arithmetic in fp32 for fp32/bf16/fp16 inputs, in fp64 for
fp64 inputs (the accumulation type is the dtype of the statistics buffers, so each
kernel reads it from a pointer). Triton passes Python floats as fp32, so eps and the
slope travel as (hi, lo) fp32 pairs whose sum is exact to ~2^-48: fp64 inputs match the
fp64 reference to 1e-10. Offsets are 64-bit when the input has >= 2**31 elements.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastgan.kernels.common import (acc_dtype, f64, leaky, leaky_grad, merge_grid, merge_lanes,
                                    split_f64, stats_merge_kernel)

# 64-bit offsets from this many elements on (a module attribute so tests can lower it).
INDEX64_MIN_NUMEL = 2**31
# Work per program: below ~4K elements launch and tail costs dominate a memory-bound pass.
MIN_ELEMS_PER_PROGRAM = 4096
# Reductions: enough programs to fill any current GPU several times over, few enough
# that the (S, C) partials stay small. Elementwise passes are bounded by the grid limit.
MAX_REDUCE_PROGRAMS = 4096
MAX_SPLITS = 65535  # CUDA grid dimension y
MAX_BLOCK_K_NCHW = 1024
MAX_BLOCK_K_NHWC = 64


# ---------------------------------------------------------------------------
# Autotuning: configs differ in tile size (elements) and warps; BLOCK_K is fixed by the
# shape, BLOCK_R = TILE // BLOCK_K. The reductions keep three (Welford) or two running
# values per element, so they get 8 elements per thread; the elementwise passes up to 16.
# Every config compiles spill-free for sm_80 and sm_90 (`python -m fastgan.kernels.aot`).
# Pruned for spilling: 16 elements per thread in the Welford pass (sm_80, capped at 128
# registers), and (TILE 2048, 4 warps) elementwise on unaligned channel counts (sm_90).

REDUCE_CONFIGS = [
    triton.Config({"TILE": 1024}, num_warps=4),
    triton.Config({"TILE": 2048}, num_warps=8),
    triton.Config({"TILE": 4096}, num_warps=16),
]
ELEMENTWISE_CONFIGS = [
    triton.Config({"TILE": 1024}, num_warps=4),
    triton.Config({"TILE": 2048}, num_warps=8),
    triton.Config({"TILE": 4096}, num_warps=8),
]
_KEY = ["C", "HW", "ROWS_PER_SPLIT", "BLOCK_K", "CHANNELS_LAST"]


def prune_configs(configs, named_args, **kwargs):
    """Drop tiles taller than the rows a program owns (they would only mask lanes off),
    keeping the smallest; under TRITON_INTERPRET keep one config (nothing to tune)."""
    args = {**named_args, **kwargs}
    rows = triton.next_power_of_2(int(args["ROWS_PER_SPLIT"]))
    block_k = int(args["BLOCK_K"])
    fit = [c for c in configs if c.kwargs["TILE"] // block_k <= rows] or configs[:1]
    if os.environ.get("TRITON_INTERPRET") == "1":
        fit = fit[:1]
    return fit


def _autotune(configs):
    return triton.autotune(configs=configs, key=_KEY,
                           prune_configs_by={"early_config_prune": prune_configs})


# ---------------------------------------------------------------------------
# Shared device helpers (the math of csrc/bn_act_math.h, once).

@triton.jit
def _inv_std(var, eps):
    """1 / sqrt(var + eps). rsqrt (MUFU.RSQ, ~2 ulp in fp32, as eager's CUDA kernels use;
    libdevice's accurate rsqrt in fp64): sqrt.rn / div.rn expand to slow-path
    subroutines whose register saves spill."""
    return tl.rsqrt(var + eps)


@triton.jit
def _extent(HW, ROWS, ROWS_PER_SPLIT, CHANNELS_LAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """What this program walks, from its ids (channel block, row split): (pid_c, rows
    [r_lo, r_hi), columns [k_lo, k_hi)) -- its channel block (NHWC) or the whole plane
    (NCHW)."""
    pid_c = tl.program_id(0)
    r_lo = tl.program_id(1) * ROWS_PER_SPLIT
    r_hi = tl.minimum(r_lo + ROWS_PER_SPLIT, ROWS)
    if CHANNELS_LAST:
        k_lo = pid_c * BLOCK_K
        k_hi = k_lo + BLOCK_K
    else:
        k_lo = 0
        k_hi = HW
    return pid_c, r_lo, r_hi, k_lo, k_hi


@triton.jit
def _tile(pid_c, r0, k0, r_hi, C, HW, CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr,
          BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Offsets and mask of the [BLOCK_R, BLOCK_K] tile at row r0, column k0."""
    rows = r0 + tl.arange(0, BLOCK_R)
    cols = k0 + tl.arange(0, BLOCK_K)
    if CHANNELS_LAST:
        mask = (rows < r_hi)[:, None] & (cols < C)[None, :]
        if INDEX_64:
            rows = rows.to(tl.int64)
        offs = rows[:, None] * C + cols[None, :]
    else:
        mask = (rows < r_hi)[:, None] & (cols < HW)[None, :]
        if INDEX_64:
            rows = rows.to(tl.int64)
        offs = (rows * C + pid_c)[:, None] * HW + cols[None, :]
    return offs, mask


@triton.jit
def _per_channel(ptr, pid_c, k_lo, C, acc_ty: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """A per-channel vector's values for this program: [1, BLOCK_K] (NHWC) or a scalar."""
    if CHANNELS_LAST:
        cols = k_lo + tl.arange(0, BLOCK_K)
        v = tl.load(ptr + cols, mask=cols < C, other=0.0).to(acc_ty)[None, :]
    else:
        v = tl.load(ptr + pid_c).to(acc_ty)
    return v


@triton.jit
def _channel_affine(mean_ptr, var_ptr, w_ptr, b_ptr, pid_c, k_lo, C, eps,
                    acc_ty: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                    CHANNELS_LAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """mean, invstd, weight and the folded z = x * scale + shift of this program's channels."""
    mean = _per_channel(mean_ptr, pid_c, k_lo, C, acc_ty, CHANNELS_LAST, BLOCK_K)
    var = _per_channel(var_ptr, pid_c, k_lo, C, acc_ty, CHANNELS_LAST, BLOCK_K)
    invstd = _inv_std(var, eps)
    if HAS_WEIGHT:
        w = _per_channel(w_ptr, pid_c, k_lo, C, acc_ty, CHANNELS_LAST, BLOCK_K)
    else:
        w = tl.full(invstd.shape, 1.0, acc_ty)
    scale = w * invstd
    if HAS_BIAS:
        shift = _per_channel(b_ptr, pid_c, k_lo, C, acc_ty, CHANNELS_LAST, BLOCK_K) - mean * scale
    else:
        shift = -mean * scale
    return mean, invstd, w, scale, shift


@triton.jit
def _store_per_channel(ptr, row, v, pid_c, k_lo, C, CHANNELS_LAST: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """Stores this program's per-channel result into row `row` of a (S, C) buffer."""
    if CHANNELS_LAST:
        cols = k_lo + tl.arange(0, BLOCK_K)
        tl.store(ptr + row * C + cols, v, mask=cols < C)
    else:
        tl.store(ptr + row * C + pid_c, v)


@triton.jit
def _reduce_moments(mean, m2, cnt, CHANNELS_LAST: tl.constexpr):
    """Merges a tile of per-lane moments per channel: over rows (NHWC) or everything."""
    if CHANNELS_LAST:
        mean, m2, cnt = merge_lanes(mean, m2, cnt, 0)
    else:
        mean, m2, cnt = merge_lanes(mean, m2, cnt, None)
    return mean, m2, cnt


@triton.jit
def _sum_per_channel(v, CHANNELS_LAST: tl.constexpr):
    if CHANNELS_LAST:
        s = tl.sum(v, 0)
    else:
        s = tl.sum(v)
    return s


# ---------------------------------------------------------------------------
# Kernels.

@_autotune(REDUCE_CONFIGS)
@triton.jit
def _stats_partial_kernel(x_ptr, pmean_ptr, pm2_ptr, pcnt_ptr, C, HW, ROWS, ROWS_PER_SPLIT,
                          CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr,
                          BLOCK_K: tl.constexpr, TILE: tl.constexpr):
    """Partial (mean, M2, count) of each channel over one row split: per-lane Welford
    updates across the tiles (no reduction inside the loop), then a Chan merge of the
    lanes. Never sum / sum-of-squares."""
    BLOCK_R: tl.constexpr = TILE // BLOCK_K
    acc_ty: tl.constexpr = pmean_ptr.dtype.element_ty
    pid_c, r_lo, r_hi, k_lo, k_hi = _extent(HW, ROWS, ROWS_PER_SPLIT, CHANNELS_LAST, BLOCK_K)
    mean = tl.zeros([BLOCK_R, BLOCK_K], acc_ty)
    m2 = tl.zeros([BLOCK_R, BLOCK_K], acc_ty)
    cnt = tl.zeros([BLOCK_R, BLOCK_K], acc_ty)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs, mask = _tile(pid_c, r0, k0, r_hi, C, HW, CHANNELS_LAST, INDEX_64,
                               BLOCK_R, BLOCK_K)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            cnt += mask.to(acc_ty)
            delta = x - mean
            mean += tl.where(mask, delta / tl.maximum(cnt, 1.0), 0.0)
            m2 += tl.where(mask, delta * (x - mean), 0.0)
    mean, m2, cnt = _reduce_moments(mean, m2, cnt, CHANNELS_LAST)
    _store_per_channel(pmean_ptr, tl.program_id(1), mean, pid_c, k_lo, C, CHANNELS_LAST,
                       BLOCK_K)
    _store_per_channel(pm2_ptr, tl.program_id(1), m2, pid_c, k_lo, C, CHANNELS_LAST,
                       BLOCK_K)
    _store_per_channel(pcnt_ptr, tl.program_id(1), cnt, pid_c, k_lo, C, CHANNELS_LAST,
                       BLOCK_K)


@_autotune(ELEMENTWISE_CONFIGS)
@triton.jit
def _apply_kernel(x_ptr, y_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, C, HW, ROWS, ROWS_PER_SPLIT,
                  eps_hi, eps_lo, slope_hi, slope_lo,
                  HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                  CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr,
                  BLOCK_K: tl.constexpr, TILE: tl.constexpr):
    """y = leaky(x * scale + shift), scale = w * invstd, shift = b - mean * scale."""
    BLOCK_R: tl.constexpr = TILE // BLOCK_K
    acc_ty: tl.constexpr = mean_ptr.dtype.element_ty
    pid_c, r_lo, r_hi, k_lo, k_hi = _extent(HW, ROWS, ROWS_PER_SPLIT, CHANNELS_LAST, BLOCK_K)
    slope = f64(slope_hi, slope_lo, acc_ty)
    _mean, _invstd, _w, scale, shift = _channel_affine(
        mean_ptr, var_ptr, w_ptr, b_ptr, pid_c, k_lo, C, f64(eps_hi, eps_lo, acc_ty), acc_ty,
        HAS_WEIGHT, HAS_BIAS, CHANNELS_LAST, BLOCK_K)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs, mask = _tile(pid_c, r0, k0, r_hi, C, HW, CHANNELS_LAST, INDEX_64,
                               BLOCK_R, BLOCK_K)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            y = leaky(x * scale + shift, slope)
            tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@_autotune(REDUCE_CONFIGS)
@triton.jit
def _grad_partial_kernel(dy_ptr, x_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, psum_ptr, psumx_ptr,
                         C, HW, ROWS, ROWS_PER_SPLIT, eps_hi, eps_lo, slope_hi, slope_lo,
                         HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                         CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr,
                         BLOCK_K: tl.constexpr, TILE: tl.constexpr):
    """Partial sum(dz) and sum(dz * (x - mean)) of each channel over one row split,
    dz = dy * leaky'(z) with z recomputed from x."""
    BLOCK_R: tl.constexpr = TILE // BLOCK_K
    acc_ty: tl.constexpr = mean_ptr.dtype.element_ty
    pid_c, r_lo, r_hi, k_lo, k_hi = _extent(HW, ROWS, ROWS_PER_SPLIT, CHANNELS_LAST, BLOCK_K)
    slope = f64(slope_hi, slope_lo, acc_ty)
    mean, _invstd, _w, scale, shift = _channel_affine(
        mean_ptr, var_ptr, w_ptr, b_ptr, pid_c, k_lo, C, f64(eps_hi, eps_lo, acc_ty), acc_ty,
        HAS_WEIGHT, HAS_BIAS, CHANNELS_LAST, BLOCK_K)
    s_dz = tl.zeros([BLOCK_R, BLOCK_K], acc_ty)
    s_dzx = tl.zeros([BLOCK_R, BLOCK_K], acc_ty)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs, mask = _tile(pid_c, r0, k0, r_hi, C, HW, CHANNELS_LAST, INDEX_64,
                               BLOCK_R, BLOCK_K)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            dz = dy * leaky_grad(x * scale + shift, slope)  # 0 on masked lanes (dy = 0)
            s_dz += dz
            s_dzx += dz * (x - mean)
    split = tl.program_id(1)
    _store_per_channel(psum_ptr, split, _sum_per_channel(s_dz, CHANNELS_LAST), pid_c, k_lo, C,
                       CHANNELS_LAST, BLOCK_K)
    _store_per_channel(psumx_ptr, split, _sum_per_channel(s_dzx, CHANNELS_LAST), pid_c, k_lo,
                       C, CHANNELS_LAST, BLOCK_K)


@triton.jit
def _grad_merge_kernel(psum_ptr, psumx_ptr, var_ptr, sum_dz_ptr, sum_dzx_ptr, gw_ptr, C, S,
                       eps_hi, eps_lo, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Sums the (S, C) partials per channel; grad_weight = invstd * sum(dz * (x - mean))."""
    acc_ty: tl.constexpr = psum_ptr.dtype.element_ty
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    s_dz = tl.zeros([BLOCK_S, BLOCK_C], acc_ty)
    s_dzx = tl.zeros([BLOCK_S, BLOCK_C], acc_ty)
    for s0 in range(0, S, BLOCK_S):
        srows = s0 + tl.arange(0, BLOCK_S)
        mask = (srows < S)[:, None] & cmask[None, :]
        offs = srows[:, None] * C + cols[None, :]
        s_dz += tl.load(psum_ptr + offs, mask=mask, other=0.0)
        s_dzx += tl.load(psumx_ptr + offs, mask=mask, other=0.0)
    s_dz = tl.sum(s_dz, 0)
    s_dzx = tl.sum(s_dzx, 0)
    var = tl.load(var_ptr + cols, mask=cmask, other=0.0).to(acc_ty)
    invstd = _inv_std(var, f64(eps_hi, eps_lo, acc_ty))
    tl.store(sum_dz_ptr + cols, s_dz, mask=cmask)
    tl.store(sum_dzx_ptr + cols, s_dzx, mask=cmask)
    tl.store(gw_ptr + cols, s_dzx * invstd, mask=cmask)


@_autotune(ELEMENTWISE_CONFIGS)
@triton.jit
def _grad_input_kernel(dy_ptr, x_ptr, dx_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, sum_dz_ptr,
                       sum_dzx_ptr, C, HW, ROWS, ROWS_PER_SPLIT, COUNT, eps_hi, eps_lo,
                       slope_hi, slope_lo, TRAINING: tl.constexpr,
                       HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                       CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr,
                       BLOCK_K: tl.constexpr, TILE: tl.constexpr):
    """dx = gain * (dz - proj * (x - mean) - mean_dz) (grad_coeffs in csrc/bn_act_math.h):
    gain = w * invstd; in training proj = invstd^2 * sum(dz * (x - mean)) / M and
    mean_dz = sum(dz) / M, in eval both are 0 (the statistics are constants)."""
    BLOCK_R: tl.constexpr = TILE // BLOCK_K
    acc_ty: tl.constexpr = mean_ptr.dtype.element_ty
    pid_c, r_lo, r_hi, k_lo, k_hi = _extent(HW, ROWS, ROWS_PER_SPLIT, CHANNELS_LAST, BLOCK_K)
    slope = f64(slope_hi, slope_lo, acc_ty)
    mean, invstd, w, scale, shift = _channel_affine(
        mean_ptr, var_ptr, w_ptr, b_ptr, pid_c, k_lo, C, f64(eps_hi, eps_lo, acc_ty), acc_ty,
        HAS_WEIGHT, HAS_BIAS, CHANNELS_LAST, BLOCK_K)
    gain = w * invstd
    if TRAINING:
        inv_m = 1.0 / COUNT.to(acc_ty)
        proj = invstd * invstd * _per_channel(sum_dzx_ptr, pid_c, k_lo, C, acc_ty,
                                              CHANNELS_LAST, BLOCK_K) * inv_m
        mean_dz = _per_channel(sum_dz_ptr, pid_c, k_lo, C, acc_ty, CHANNELS_LAST, BLOCK_K) * inv_m
    for r0 in range(r_lo, r_hi, BLOCK_R):
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs, mask = _tile(pid_c, r0, k0, r_hi, C, HW, CHANNELS_LAST, INDEX_64,
                               BLOCK_R, BLOCK_K)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            dz = dy * leaky_grad(x * scale + shift, slope)
            if TRAINING:
                dz = dz - (proj * (x - mean) + mean_dz)
            tl.store(dx_ptr + offs, (gain * dz).to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Host side.

def _channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _Geometry:
    """How one input is walked: layout, per-program column block and row splits."""

    def __init__(self, x: torch.Tensor, reduction: bool) -> None:
        N, C, H, W = x.shape
        self.C, self.HW = C, H * W
        # With H = W = 1 both layouts are one (N, C) matrix: walk it along the channels.
        self.channels_last = _channels_last(x) or self.HW == 1
        self.index_64 = x.numel() >= INDEX64_MIN_NUMEL
        if self.channels_last:
            self.rows = N * self.HW
            self.block_k = min(triton.next_power_of_2(C), MAX_BLOCK_K_NHWC)
            self.channel_programs = triton.cdiv(C, self.block_k)
            row_elems = self.block_k
        else:
            self.rows = N
            self.block_k = min(triton.next_power_of_2(self.HW), MAX_BLOCK_K_NCHW)
            self.channel_programs = C
            row_elems = self.HW
        splits = max(1, self.rows * row_elems // MIN_ELEMS_PER_PROGRAM)
        if reduction:
            splits = min(splits, max(1, MAX_REDUCE_PROGRAMS // self.channel_programs))
        splits = min(splits, self.rows, MAX_SPLITS)
        self.rows_per_split = triton.cdiv(self.rows, splits)
        self.splits = triton.cdiv(self.rows, self.rows_per_split)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.channel_programs, self.splits)

    def args(self) -> tuple[int, int, int, int]:
        return (self.C, self.HW, self.rows, self.rows_per_split)

    def meta(self) -> dict:
        return {"CHANNELS_LAST": self.channels_last, "INDEX_64": self.index_64,
                "BLOCK_K": self.block_k}


def _layout(t: torch.Tensor, like_channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if like_channels_last else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of x (N, C, H, W), in the accumulation type."""
    geo = _Geometry(x, reduction=True)
    acc = acc_dtype(x)
    S, C = geo.splits, geo.C
    pmean = x.new_empty((S, C), dtype=acc)
    pm2 = x.new_empty((S, C), dtype=acc)
    pcnt = x.new_empty((S, C), dtype=acc)
    wrap_triton(_stats_partial_kernel)[geo.grid](x, pmean, pm2, pcnt, *geo.args(), **geo.meta())
    mean = x.new_empty((C,), dtype=acc)
    var = x.new_empty((C,), dtype=acc)
    grid, meta = merge_grid(C, S)
    wrap_triton(stats_merge_kernel)[grid](pmean, pm2, pcnt, mean, var, C, S, **meta)
    return mean, var


def forward(input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
            training: bool, eps: float, negative_slope: float):
    """(y, mean, var) as fastgan::bn_act_forward; y keeps the input's layout
    (channels_last stays channels_last, anything else becomes NCHW-contiguous)."""
    x = _layout(input, _channels_last(input))
    acc = acc_dtype(x)
    if training:
        mean, var = batch_stats(x)
    else:
        mean = running_mean.to(acc, copy=True).contiguous()
        var = running_var.to(acc, copy=True).contiguous()
    y = torch.empty_like(x)
    geo = _Geometry(x, reduction=False)
    w = weight.contiguous() if weight is not None else mean
    b = bias.contiguous() if bias is not None else mean
    wrap_triton(_apply_kernel)[geo.grid](
        x, y, mean, var, w, b, *geo.args(), *split_f64(eps), *split_f64(negative_slope),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, **geo.meta())
    return y, mean, var


def backward(grad_out: torch.Tensor, input: torch.Tensor, weight: torch.Tensor | None,
             bias: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor, training: bool,
             eps: float, negative_slope: float, output_mask):
    """(grad_input, grad_weight, grad_bias) as fastgan::bn_act_backward; outputs masked
    off (or without a weight / bias) are empty."""
    cl = _channels_last(input)
    x = _layout(input, cl)
    dy = _layout(grad_out, cl)
    acc = acc_dtype(x)
    C = x.shape[1]
    mean = mean.to(acc).contiguous()
    var = var.to(acc).contiguous()
    want_gx = bool(output_mask[0])
    want_gw = bool(output_mask[1]) and weight is not None
    want_gb = bool(output_mask[2]) and bias is not None
    w = weight.contiguous() if weight is not None else mean
    b = bias.contiguous() if bias is not None else mean
    flags = {"HAS_WEIGHT": weight is not None, "HAS_BIAS": bias is not None}
    eps2, slope2 = split_f64(eps), split_f64(negative_slope)

    sum_dz = sum_dzx = gw = mean  # placeholders, never read unless computed
    if (want_gx and training) or want_gw or want_gb:
        geo = _Geometry(x, reduction=True)
        S = geo.splits
        psum = x.new_empty((S, C), dtype=acc)
        psumx = x.new_empty((S, C), dtype=acc)
        wrap_triton(_grad_partial_kernel)[geo.grid](
            dy, x, mean, var, w, b, psum, psumx, *geo.args(), *eps2, *slope2, **flags,
            **geo.meta())
        sum_dz = x.new_empty((C,), dtype=acc)
        sum_dzx = x.new_empty((C,), dtype=acc)
        gw = x.new_empty((C,), dtype=acc)
        grid, meta = merge_grid(C, S)
        wrap_triton(_grad_merge_kernel)[grid](psum, psumx, var, sum_dz, sum_dzx, gw, C, S,
                                              *eps2, **meta)
    if want_gx:
        gx = torch.empty_like(x)
        geo = _Geometry(x, reduction=False)
        wrap_triton(_grad_input_kernel)[geo.grid](
            dy, x, gx, mean, var, w, b, sum_dz, sum_dzx, *geo.args(), x.numel() // C, *eps2,
            *slope2, TRAINING=bool(training), **flags, **geo.meta())
    else:
        gx = x.new_empty((0,))
    wdt = weight.dtype if weight is not None else x.dtype
    bdt = bias.dtype if bias is not None else x.dtype
    grad_w = gw.to(wdt) if want_gw else x.new_empty((0,), dtype=wdt)
    grad_b = sum_dz.to(bdt) if want_gb else x.new_empty((0,), dtype=bdt)
    return gx, grad_w, grad_b


# Every kernel of this file, for the ahead-of-time compile check (fastgan.kernels.aot).
KERNELS = (_stats_partial_kernel, stats_merge_kernel, _apply_kernel, _grad_partial_kernel,
           _grad_merge_kernel, _grad_input_kernel)


def aot_cases(quick: bool = False) -> list:
    """Representative calls of the launchers (on meta tensors) for fastgan.kernels.aot:
    the smallest and the largest DCGAN generator BN layer and an odd shape (unaligned
    channel and plane sizes), NCHW and channels_last, fp32 and bf16 (fp16 compiles like
    bf16), fp64 once; train and eval, forward and backward. `quick` keeps five."""
    dcgan, odd = [(128, 512, 4, 4), (128, 64, 32, 32)], (3, 33, 9, 11)
    dtypes = [torch.float32, torch.bfloat16]
    combos = [(s, dt, cl) for s in dcgan + [odd] for dt in dtypes for cl in (False, True)]
    if quick:
        combos = [(dcgan[1], torch.float32, False), (dcgan[1], torch.bfloat16, True),
                  (odd, torch.float32, True), (odd, torch.bfloat16, False)]
    combos.append((odd, torch.float64, False))

    def case(shape, dtype, channels_last):
        def run():
            x = torch.empty(shape, dtype=dtype, device="meta")
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            C = shape[1]
            w = torch.empty(C, dtype=dtype, device="meta")
            stats = torch.empty(C, dtype=acc_dtype(x), device="meta")
            y, mean, var = forward(x, w, w, None, None, True, 1e-5, 0.2)
            forward(x, w, w, stats, stats, False, 1e-5, 0.2)
            backward(y, x, w, w, mean, var, True, 1e-5, 0.2, [True, True, True])
            backward(y, x, w, w, mean, var, False, 1e-5, 0.2, [True, False, False])
        return run

    return [case(*c) for c in combos]
