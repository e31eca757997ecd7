"""Triton implicit-GEMM convolutions of the fully fused block, and their host launchers.

One block of a chain is conv -> BatchNorm -> LeakyReLU. Here the convolution carries the
BatchNorm around it: its **prologue** applies the producing block's normalisation and
activation, a = leaky(x * scale + shift), to each input tile as it is loaded, and its
**epilogue** writes the pre-normalisation output z together with per-tile, per-channel
(mean, M2, count) partials that `stats_merge_kernel` of kernels/common.py merges into the
batch statistics (Chan's formula, in a fixed order: no float atomics, bitwise repeatable).
A chain of blocks therefore never writes a normalised activation; the last block's output
is materialised by `affine_act` (one elementwise pass).

Layout. Every tensor is channels_last (NHWC): a pixel's channels are contiguous, so an
input tile [BLOCK_M pixels, BLOCK_K channels] is a strided 2-D load. Weights are packed
to [KH, KW, C_in, C_out] (packed_weight) so that each kernel tap is a [C_in, C_out]
matrix. The GEMM is M = output pixels, N = C_out, K = taps x C_in.

Geometry, for both convolutions in one formula. Conv2d reads input row
ih = oh * stride - pad + kh * dil. ConvTranspose2d is done gather-style by the sub-pixel
(phase) decomposition: output rows of phase ph = oh mod stride receive only the taps
with (ph + pad - kh * dil) divisible by stride, from ih = oh // stride + that quotient.
Programs are grouped by phase, so a dead tap is skipped by the whole program (a scalar
branch): stride 2 costs no masked-off MMAs, and any kernel, stride, padding,
output_padding and dilation is the same code. `_tap` holds the two formulas.

Backward. dgrad of a Conv2d is a ConvTranspose2d with the same parameters and vice
versa, so `_conv_dgrad_kernel` runs the same main loop with TRANSPOSED flipped on the
packed weight transposed per tap; its epilogue folds in the prologue's backward
(activation mask, scale) and writes the per-tile partial sums that give the gradients of
scale and shift. `_conv_wgrad_kernel` is a GEMM over pixels per tap; both sides of it
are loaded through the same prologues as in forward (the activation is recomputed,
never stored). The incoming gradient of a block whose statistics are used downstream
is g = dz + dmean / M + dvar * 2 (z - mean) / M; that sum is the A-operand prologue of
dgrad and wgrad (MODE_GRAD), so g is never stored either.

Numerics: fp32 accumulation for fp32/bf16/fp16 inputs (fp64 for fp64); the prologue
computes in the accumulation type and rounds a to the input dtype, as eager's
BatchNorm -> LeakyReLU -> conv chain does; the statistics are those of z as stored. fp32
GEMMs use TF32 exactly when eager's cuDNN convolutions do (torch.backends.cudnn.allow_tf32).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastgan.kernels.common import (acc_dtype, f64, leaky, leaky_grad, merge_grid, split_f64,
                                    stats_merge_kernel)

# A-operand prologues of the GEMMs (the `MODE` constexpr of _a_tile).
MODE_NONE = 0  # the tensor as stored
MODE_ACT = 1   # leaky(x * p + q): the producing block's BatchNorm + activation
MODE_GRAD = 2  # x + (aux - c) * p + q: a gradient plus its batch statistics' terms

# wgrad reduces over every pixel: split that reduction until there are about this many
# programs (the (splits, taps, C_in, C_out) fp32 partials are summed in a fixed order).
WGRAD_TARGET_PROGRAMS = 1024
MIN_PIXELS_PER_SPLIT = 256
INDEX64_MIN_NUMEL = 2**31


# ---------------------------------------------------------------------------
# Autotuning of the two implicit GEMMs (forward, dgrad): tiles and pipeline depth. A
# tile wider than the channels it covers only masks lanes off, so those are pruned
# (keeping the narrowest). BLOCK_M is at least MIN_BLOCK_M in every config: the
# statistics partials are allocated for that many rows per tile and zeroed; tiles of a
# larger config leave rows at count 0, which the merge drops (reset_to_zero clears the
# rows a benchmarked config wrote before the chosen one runs).
MIN_BLOCK_M = 64
# 128-row tiles take 8 warps: with 4, the A tile's prologue (fp32 values of a 128 x 64
# tile before rounding) and the pipeline's buffers reach 255 registers and spill on sm_80.
GEMM_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 16, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=4, num_stages=3),
]
_GEMM_KEY = ["N", "H", "W", "CI", "OH", "OW", "CO", "KH", "KW", "sh", "sw", "TRANSPOSED"]


def prune_gemm_configs(configs, named_args, **kwargs):
    """Drop tiles wider than the channels (output: BLOCK_N, reduction: BLOCK_K), keeping
    the narrowest; under TRITON_INTERPRET one config of the widest fitting tiles (nothing
    to tune, and fewer, larger tiles interpret faster)."""
    args = {**named_args, **kwargs}
    n_cap, k_cap = _block(int(args["CO"]), 128), _block(int(args["CI"]), 64)
    if _interpreting():
        return [triton.Config({"BLOCK_M": MIN_BLOCK_M, "BLOCK_N": min(n_cap, 64),
                               "BLOCK_K": k_cap})]
    fit = [c for c in configs if c.kwargs["BLOCK_N"] <= n_cap and c.kwargs["BLOCK_K"] <= k_cap]
    return fit or [min(configs, key=lambda c: (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]))]


def _gemm_autotune(reset):
    return triton.autotune(configs=GEMM_CONFIGS, key=_GEMM_KEY, reset_to_zero=reset,
                           prune_configs_by={"early_config_prune": prune_gemm_configs})


# ---------------------------------------------------------------------------
# Device helpers.

@triton.jit
def _tap(j, k, phase, stride, pad, dil, TRANSPOSED: tl.constexpr):
    """Input coordinate that output coordinate index j reads through tap k. Conv2d: j is
    the output coordinate; ConvTranspose2d: the output coordinate is phase + j * stride,
    and k one of the phase's live taps (tap_table), so the division is exact."""
    if TRANSPOSED:
        i = j + (phase + pad - k * dil) // stride
    else:
        i = j * stride - pad + k * dil
    return i


@triton.jit
def _a_tile(x_ptr, aux_ptr, p_ptr, q_ptr, c_ptr, rows, row_ok, ch, C, slope,
            acc_ty: tl.constexpr, MODE: tl.constexpr):
    """[len(rows), len(ch)] values of channels `ch` at the pixel offsets `rows` (element
    offsets of channel 0), after the prologue MODE, zero outside the tensor (padding is
    applied after the prologue, as eager pads the activation). A prologue's result is in
    the accumulation type: a GEMM operand rounds it to the input dtype (_operand), as
    eager's chain stores it; a reduction keeps it."""
    cmask = ch < C
    mask = row_ok[:, None] & cmask[None, :]
    offs = rows[:, None] + ch[None, :]
    a = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if MODE == 1:
        p = tl.load(p_ptr + ch, mask=cmask, other=0.0).to(acc_ty)
        q = tl.load(q_ptr + ch, mask=cmask, other=0.0).to(acc_ty)
        u = leaky(a.to(acc_ty) * p[None, :] + q[None, :], slope)
        a = tl.where(mask, u, 0.0)
    elif MODE == 2:
        p = tl.load(p_ptr + ch, mask=cmask, other=0.0).to(acc_ty)
        q = tl.load(q_ptr + ch, mask=cmask, other=0.0).to(acc_ty)
        c = tl.load(c_ptr + ch, mask=cmask, other=0.0).to(acc_ty)
        z = tl.load(aux_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        g = a.to(acc_ty) + (z - c[None, :]) * p[None, :] + q[None, :]
        a = tl.where(mask, g, 0.0)
    return a


@triton.jit
def _operand(a, x_ptr, dot_ty: tl.constexpr):
    """A GEMM operand from an _a_tile of x: rounded to x's dtype, then in the dot type."""
    return a.to(x_ptr.dtype.element_ty).to(dot_ty)


@triton.jit
def _out_pixels(pid, ROWS, N, OH, OW, sh, sw, TRANSPOSED: tl.constexpr,
                INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's output pixels: (n, jh, jw) per row, row validity, its phase, and the
    output pixel index of each row. Programs [phase * M_BLOCKS, (phase + 1) * M_BLOCKS)
    cover one phase of a ConvTranspose2d (a Conv2d has one phase), M_BLOCKS tiles of
    BLOCK_M rows covering the ROWS rows of the largest phase."""
    M_BLOCKS = tl.cdiv(ROWS, BLOCK_M)
    phase = pid // M_BLOCKS
    m = (pid % M_BLOCKS) * BLOCK_M + tl.arange(0, BLOCK_M)
    if TRANSPOSED:
        ph = phase // sw
        pw = phase % sw
        PH = (OH - ph + sh - 1) // sh
        PW = (OW - pw + sw - 1) // sw
    else:
        ph = phase * 0
        pw = phase * 0
        PH = OH
        PW = OW
    m_ok = m < N * PH * PW
    plane = tl.maximum(PH * PW, 1)
    PW1 = tl.maximum(PW, 1)
    n = m // plane
    rem = m % plane
    jh = rem // PW1
    jw = rem % PW1
    if INDEX_64:
        n = n.to(tl.int64)
    if TRANSPOSED:
        pix = (n * OH + ph + jh * sh) * OW + pw + jw * sw
    else:
        pix = (n * OH + jh) * OW + jw
    return n, jh, jw, m_ok, ph, pw, pix


@triton.jit
def _implicit_gemm(x_ptr, aux_ptr, p_ptr, q_ptr, c_ptr, w_ptr, taps_h_ptr, taps_w_ptr, n, jh, jw,
                   m_ok, ph, pw, co, H, W, CI, CO, KH, KW, sh, sw, pad_h, pad_w, dil_h, dil_w,
                   slope, acc_ty: tl.constexpr, dot_ty: tl.constexpr, TRANSPOSED: tl.constexpr,
                   MODE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc[BLOCK_M, BLOCK_N] = sum over the phase's live taps and the input channels of
    prologue(x)[pixel read by the tap, ci] * w[tap, ci, co] (w packed [KH, KW, CI, CO]).
    One flat loop over (live tap, channel block): the pipeliner sees a single loop, and a
    dead tap costs nothing (the live taps come from tap_table)."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], acc_ty)
    co_ok = co < CO
    row_h = taps_h_ptr + ph * (KH + 1)
    row_w = taps_w_ptr + pw * (KW + 1)
    n_w = tl.load(row_w)
    c_blocks = tl.cdiv(CI, BLOCK_K)
    for it in range(tl.load(row_h) * n_w * c_blocks):
        t = it // c_blocks
        ci = (it % c_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
        kh = tl.load(row_h + 1 + t // n_w)
        kw = tl.load(row_w + 1 + t % n_w)
        ih = _tap(jh, kh, ph, sh, pad_h, dil_h, TRANSPOSED)
        iw = _tap(jw, kw, pw, sw, pad_w, dil_w, TRANSPOSED)
        ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = _a_tile(x_ptr, aux_ptr, p_ptr, q_ptr, c_ptr, ((n * H + ih) * W + iw) * CI, ok, ci,
                    CI, slope, acc_ty, MODE)
        b = tl.load(w_ptr + ((kh * KW + kw) * CI + ci[:, None]) * CO + co[None, :],
                    mask=(ci < CI)[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(_operand(a, x_ptr, dot_ty), b.to(dot_ty), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _store_partial(ptr, row, cols, v, C):
    tl.store(ptr + row * C + cols, v, mask=cols < C)


@triton.jit
def _act_backward(da, x_ptr, dx_ptr, psum_ptr, psumx_ptr, row, offs, mask, cols, C, p, q,
                  slope):
    """Backward of a = leaky(u), u = x * p + q (p, q: [1, C] tiles) for one tile given
    da: writes dx = du * p, du = da * leaky'(u), and the tile's per-channel sum(du),
    sum(du * x) into row `row` of the (tiles, C) partials (the gradients of q and p)."""
    acc_ty: tl.constexpr = psum_ptr.dtype.element_ty
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    du = tl.where(mask, da * leaky_grad(x * p + q, slope), 0.0)
    tl.store(dx_ptr + offs, (du * p).to(dx_ptr.dtype.element_ty), mask=mask)
    _store_partial(psum_ptr, row, cols, tl.sum(du, 0), C)
    _store_partial(psumx_ptr, row, cols, tl.sum(du * x, 0), C)


# ---------------------------------------------------------------------------
# Kernels.

@_gemm_autotune(["pmean_ptr", "pm2_ptr", "pcnt_ptr"])
@triton.jit
def _conv_fwd_kernel(x_ptr, p_ptr, q_ptr, w_ptr, taps_h_ptr, taps_w_ptr, b_ptr, op_ptr, oq_ptr,
                     z_ptr, pmean_ptr, pm2_ptr, pcnt_ptr,
                     N, H, W, CI, OH, OW, CO, KH, KW, sh, sw, pad_h, pad_w, dil_h, dil_w,
                     ROWS, slope_hi, slope_lo, out_slope_hi, out_slope_lo,
                     TRANSPOSED: tl.constexpr, PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     STATS: tl.constexpr, EPILOGUE: tl.constexpr, INDEX_64: tl.constexpr,
                     PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """z = conv(prologue(x)) + bias for one [BLOCK_M pixels, BLOCK_N channels] tile, and
    with STATS the tile's per-channel (mean, M2, count) of z as stored, in row
    program_id(0) of the (tiles, CO) partials. With EPILOGUE (inference) the tile's own
    BatchNorm + activation instead: leaky(z * op + oq) is written, z never is."""
    acc_ty: tl.constexpr = pmean_ptr.dtype.element_ty
    dot_ty: tl.constexpr = acc_ty if UPCAST else x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n, jh, jw, m_ok, ph, pw, pix = _out_pixels(pid, ROWS, N, OH, OW, sh, sw, TRANSPOSED,
                                               INDEX_64, BLOCK_M)
    mode: tl.constexpr = 1 if PROLOGUE else 0
    acc = _implicit_gemm(x_ptr, x_ptr, p_ptr, q_ptr, p_ptr, w_ptr, taps_h_ptr, taps_w_ptr, n, jh,
                         jw, m_ok, ph, pw, co, H, W, CI, CO, KH, KW, sh, sw, pad_h, pad_w, dil_h, dil_w,
                         f64(slope_hi, slope_lo, acc_ty), acc_ty, dot_ty, TRANSPOSED, mode,
                         PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    co_ok = co < CO
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co_ok, other=0.0).to(acc_ty)[None, :]
    mask = m_ok[:, None] & co_ok[None, :]
    z = acc.to(z_ptr.dtype.element_ty)
    if EPILOGUE:  # as eager: BatchNorm of the stored (rounded) z, then the activation
        p_out = tl.load(op_ptr + co, mask=co_ok, other=0.0).to(acc_ty)[None, :]
        q_out = tl.load(oq_ptr + co, mask=co_ok, other=0.0).to(acc_ty)[None, :]
        u = z.to(acc_ty) * p_out + q_out
        z = leaky(u, f64(out_slope_hi, out_slope_lo, acc_ty)).to(z_ptr.dtype.element_ty)
    tl.store(z_ptr + pix[:, None] * CO + co[None, :], z, mask=mask)
    if STATS:
        v = tl.where(mask, z.to(acc_ty), 0.0)
        cnt = tl.sum(m_ok.to(acc_ty), 0)
        mean = tl.sum(v, 0) / tl.maximum(cnt, 1.0)
        d = tl.where(mask, v - mean[None, :], 0.0)
        _store_partial(pmean_ptr, pid, co, mean, CO)
        _store_partial(pm2_ptr, pid, co, tl.sum(d * d, 0), CO)
        _store_partial(pcnt_ptr, pid, co, tl.zeros([BLOCK_N], acc_ty) + cnt, CO)


@_gemm_autotune(["psum_ptr", "psumx_ptr"])
@triton.jit
def _conv_dgrad_kernel(g_ptr, z_ptr, gp_ptr, gq_ptr, gc_ptr, w_ptr, taps_h_ptr, taps_w_ptr,
                       x_ptr, p_ptr, q_ptr, dx_ptr, psum_ptr, psumx_ptr,
                       N, H, W, CI, OH, OW, CO, KH, KW, sh, sw, pad_h, pad_w, dil_h, dil_w,
                       ROWS, slope_hi, slope_lo,
                       TRANSPOSED: tl.constexpr, GRAD_MODE: tl.constexpr,
                       PROLOGUE: tl.constexpr, INDEX_64: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gradient of the forward op's input for one tile of it. Here (H, W, CI) is the
    gradient's geometry (the forward output) and (OH, OW, CO) the forward input's;
    TRANSPOSED is the forward's flipped; w is packed [KH, KW, CI, CO] for this GEMM. With
    PROLOGUE, da (the gradient of the activation a) becomes du = da * leaky'(u),
    u = x * p + q, dx = du * p, and the tile's per-channel sum(du), sum(du * x) go to row
    program_id(0) of the (tiles, CO) partials."""
    acc_ty: tl.constexpr = psum_ptr.dtype.element_ty
    dot_ty: tl.constexpr = acc_ty if UPCAST else g_ptr.dtype.element_ty
    pid = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n, jh, jw, m_ok, ph, pw, pix = _out_pixels(pid, ROWS, N, OH, OW, sh, sw, TRANSPOSED,
                                               INDEX_64, BLOCK_M)
    slope = f64(slope_hi, slope_lo, acc_ty)
    da = _implicit_gemm(g_ptr, z_ptr, gp_ptr, gq_ptr, gc_ptr, w_ptr, taps_h_ptr, taps_w_ptr, n,
                        jh, jw, m_ok, ph, pw, co, H, W, CI, CO, KH, KW, sh, sw, pad_h, pad_w, dil_h, dil_w, slope,
                        acc_ty, dot_ty, TRANSPOSED, GRAD_MODE, PRECISION, BLOCK_M, BLOCK_N,
                        BLOCK_K)
    co_ok = co < CO
    mask = m_ok[:, None] & co_ok[None, :]
    offs = pix[:, None] * CO + co[None, :]
    if PROLOGUE:
        p = tl.load(p_ptr + co, mask=co_ok, other=0.0).to(acc_ty)[None, :]
        q = tl.load(q_ptr + co, mask=co_ok, other=0.0).to(acc_ty)[None, :]
        _act_backward(da, x_ptr, dx_ptr, psum_ptr, psumx_ptr, pid, offs, mask, co, CO, p, q,
                      slope)
    else:
        tl.store(dx_ptr + offs, da.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_wgrad_kernel(x_ptr, p_ptr, q_ptr, g_ptr, z_ptr, gp_ptr, gq_ptr, gc_ptr, dw_ptr,
                       N, H, W, CI, OH, OW, CO, KH, KW, sh, sw, pad_h, pad_w, dil_h, dil_w,
                       PIX_PER_SPLIT, CI_BLOCKS, CO_BLOCKS, slope_hi, slope_lo,
                       TRANSPOSED: tl.constexpr, PROLOGUE: tl.constexpr,
                       GRAD_MODE: tl.constexpr, INDEX_64: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr):
    """dw[split, tap, ci, co] = sum over this split's pixels of prologue(x)[.., ci] *
    g[.., co]. Both convolutions relate a "direct" pixel (y, x) to a "gathered" one
    (y * stride - pad + kh * dil, ...): for Conv2d the direct side is the output (g) and
    x is gathered; for ConvTranspose2d the direct side is the input (x) and g is
    gathered. Program ids: (tap, ci block, co block) flattened, then the pixel split."""
    acc_ty: tl.constexpr = dw_ptr.dtype.element_ty
    dot_ty: tl.constexpr = acc_ty if UPCAST else x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    split = tl.program_id(1)
    cob = pid % CO_BLOCKS
    cib = (pid // CO_BLOCKS) % CI_BLOCKS
    tap = pid // (CO_BLOCKS * CI_BLOCKS)
    kh = tap // KW
    kw = tap % KW
    ci = cib * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co = cob * BLOCK_CO + tl.arange(0, BLOCK_CO)
    if TRANSPOSED:
        DH, DW, GH, GW = H, W, OH, OW
    else:
        DH, DW, GH, GW = OH, OW, H, W
    slope = f64(slope_hi, slope_lo, acc_ty)
    x_mode: tl.constexpr = 1 if PROLOGUE else 0
    n_pix = N * DH * DW
    lo = split * PIX_PER_SPLIT
    hi = tl.minimum(lo + PIX_PER_SPLIT, n_pix)
    acc = tl.zeros([BLOCK_CI, BLOCK_CO], acc_ty)
    for p0 in range(lo, hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        if INDEX_64:
            p = p.to(tl.int64)
        n = p // (DH * DW)
        y = (p // DW) % DH
        xx = p % DW
        gy = y * sh - pad_h + kh * dil_h
        gx = xx * sw - pad_w + kw * dil_w
        ok = (p < hi) & (gy >= 0) & (gy < GH) & (gx >= 0) & (gx < GW)
        gathered = (n * GH + gy) * GW + gx
        if TRANSPOSED:
            x_pix, g_pix = p, gathered
        else:
            x_pix, g_pix = gathered, p
        a = _a_tile(x_ptr, x_ptr, p_ptr, q_ptr, p_ptr, x_pix * CI, ok, ci, CI, slope, acc_ty,
                    x_mode)
        g = _a_tile(g_ptr, z_ptr, gp_ptr, gq_ptr, gc_ptr, g_pix * CO, ok, co, CO, slope,
                    acc_ty, GRAD_MODE)
        acc = tl.dot(tl.trans(_operand(a, x_ptr, dot_ty)), _operand(g, g_ptr, dot_ty), acc,
                     input_precision=PRECISION)
    offs = ((split * (KH * KW) + tap) * CI + ci[:, None]) * CO + co[None, :]
    tl.store(dw_ptr + offs, acc, mask=(ci < CI)[:, None] & (co < CO)[None, :])


@triton.jit
def _channel_sum_kernel(g_ptr, z_ptr, gp_ptr, gq_ptr, gc_ptr, out_ptr, ROWS, C,
                        ROWS_PER_SPLIT, GRAD_MODE: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """Per-channel sums of the (incoming) gradient over one split of its pixels: the
    convolution bias's gradient, as (splits, C) partials."""
    acc_ty: tl.constexpr = out_ptr.dtype.element_ty
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    lo = split * ROWS_PER_SPLIT
    hi = tl.minimum(lo + ROWS_PER_SPLIT, ROWS)
    acc = tl.zeros([BLOCK_R, BLOCK_C], acc_ty)
    for r0 in range(lo, hi, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        acc += _a_tile(g_ptr, z_ptr, gp_ptr, gq_ptr, gc_ptr, r.to(tl.int64) * C, r < hi, cols,
                       C, 0.0, acc_ty, GRAD_MODE).to(acc_ty)  # unrounded: a sum
    _store_partial(out_ptr, split, cols, tl.sum(acc, 0), C)


@triton.jit
def _affine_act_kernel(z_ptr, p_ptr, q_ptr, y_ptr, ROWS, C, slope_hi, slope_lo,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = leaky(z * p + q) per channel (NHWC rows x C)."""
    acc_ty: tl.constexpr = p_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < ROWS)[:, None] & (cols < C)[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    y = _a_tile(z_ptr, z_ptr, p_ptr, q_ptr, p_ptr, rows.to(tl.int64) * C, rows < ROWS, cols, C,
                f64(slope_hi, slope_lo, acc_ty), acc_ty, 1)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _affine_act_backward_kernel(gy_ptr, z_ptr, p_ptr, q_ptr, dz_ptr, psum_ptr, psumx_ptr,
                                ROWS, C, slope_hi, slope_lo, BLOCK_R: tl.constexpr,
                                BLOCK_C: tl.constexpr):
    """Backward of y = leaky(z * p + q) for one tile: dz, and the (tiles, C) partials of
    the gradients of q and p (row = program_id(0))."""
    acc_ty: tl.constexpr = psum_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < ROWS)[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    p = tl.load(p_ptr + cols, mask=cmask, other=0.0).to(acc_ty)[None, :]
    q = tl.load(q_ptr + cols, mask=cmask, other=0.0).to(acc_ty)[None, :]
    _act_backward(gy, z_ptr, dz_ptr, psum_ptr, psumx_ptr, tl.program_id(0), offs, mask, cols,
                  C, p, q, f64(slope_hi, slope_lo, acc_ty))


# ---------------------------------------------------------------------------
# Host side.

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _upcast(dtype: torch.dtype) -> bool:
    """Whether the GEMM operands go to fp32 before tl.dot: only under TRITON_INTERPRET,
    whose dot multiplies bf16/fp16 storage bits as integers (triton 3.8). Exact: a
    product of two 8- or 11-bit mantissas fits fp32, as in the tensor cores."""
    return _interpreting() and dtype in (torch.bfloat16, torch.float16)


def _precision(dtype: torch.dtype) -> str:
    """TF32 for fp32 GEMMs exactly where eager's cuDNN convolutions use it."""
    if dtype == torch.float32 and not _interpreting() and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def _block(n: int, cap: int) -> int:
    return max(16, min(triton.next_power_of_2(n), cap))  # tl.dot needs >= 16


def packed_weight(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """[KH, KW, C_in, C_out] contiguous from a Conv2d ([C_out, C_in, KH, KW]) or
    ConvTranspose2d ([C_in, C_out, KH, KW]) weight."""
    return weight.permute(2, 3, 0, 1).contiguous() if transposed else \
        weight.permute(2, 3, 1, 0).contiguous()


def unpacked_weight(w: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The inverse of packed_weight."""
    return w.permute(2, 3, 0, 1) if transposed else w.permute(3, 2, 0, 1)


def output_size(h: int, w: int, kernel, transposed: bool, stride, padding, output_padding,
                dilation) -> tuple[int, int]:
    """The spatial output size, as nn.Conv2d / nn.ConvTranspose2d compute it."""
    out = []
    for i, size in enumerate((h, w)):
        span = dilation[i] * (kernel[i] - 1)
        if transposed:
            out.append((size - 1) * stride[i] - 2 * padding[i] + span + output_padding[i] + 1)
        else:
            out.append((size + 2 * padding[i] - span - 1) // stride[i] + 1)
    return out[0], out[1]


def tap_table(k: int, stride: int, pad: int, dil: int, transposed: bool,
              device) -> torch.Tensor:
    """Per phase, the live taps of one spatial dimension: row ph = [count, taps...]
    (k + 1 int32 columns). Conv2d has one phase with every tap; a ConvTranspose2d output
    row of phase ph receives tap kh only where (ph + pad - kh * dil) is a multiple of the
    stride (the sub-pixel decomposition)."""
    rows = []
    for ph in range(stride if transposed else 1):
        live = [t for t in range(k) if not transposed or (ph + pad - t * dil) % stride == 0]
        rows.append([len(live)] + live + [0] * (k - len(live)))
    return torch.tensor(rows, dtype=torch.int32, device=device)


class _Gemm:
    """Grid of one implicit GEMM producing (N, C, OH, OW) through a Conv2d-style
    (transposed False) or ConvTranspose2d-style map: phases x row tiles of the largest
    phase, x output-channel tiles; `tiles` bounds the rows of the per-tile partials."""

    def __init__(self, N: int, OH: int, OW: int, C_out: int, transposed: bool, kernel, stride,
                 padding, dilation, dtype: torch.dtype, numel: int, device) -> None:
        sh, sw = stride
        self.taps = tuple(tap_table(kernel[i], stride[i], padding[i], dilation[i], transposed,
                                    device) for i in range(2))
        self.phases = sh * sw if transposed else 1
        self.rows = N * triton.cdiv(OH, sh) * triton.cdiv(OW, sw) if transposed else N * OH * OW
        self.tiles = self.phases * max(1, triton.cdiv(self.rows, MIN_BLOCK_M))
        self.meta = {"INDEX_64": numel >= INDEX64_MIN_NUMEL, "PRECISION": _precision(dtype),
                     "UPCAST": _upcast(dtype)}

        def grid(meta):
            return (self.phases * max(1, triton.cdiv(self.rows, meta["BLOCK_M"])),
                    triton.cdiv(C_out, meta["BLOCK_N"]))
        self.grid = grid


def forward(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            scale: torch.Tensor | None, shift: torch.Tensor | None, negative_slope: float,
            transposed: bool, stride, padding, output_padding, dilation, stats: bool,
            out_scale: torch.Tensor | None = None, out_shift: torch.Tensor | None = None,
            out_slope: float = 0.0):
    """(z, mean, var): z = conv(leaky(input * scale + shift)) + bias (no prologue when
    scale is None), channels_last; with `stats` z's per-channel mean and biased variance
    in the accumulation type (else empty). With out_scale (inference, no stats) the
    output is leaky(z * out_scale + out_shift, out_slope) instead of z."""
    x = _nhwc(input)
    N, CI, H, W = x.shape
    KH, KW = weight.shape[2], weight.shape[3]
    CO = weight.shape[1] if transposed else weight.shape[0]
    OH, OW = output_size(H, W, (KH, KW), transposed, stride, padding, output_padding, dilation)
    acc = acc_dtype(x)
    z = torch.empty((N, CO, OH, OW), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    gemm = _Gemm(N, OH, OW, CO, transposed, (KH, KW), stride, padding, dilation, x.dtype,
                 max(x.numel(), z.numel()), x.device)
    rows = gemm.tiles if stats else 1
    pmean, pm2, pcnt = (x.new_zeros((rows, CO), dtype=acc) for _ in range(3))
    p = scale.to(acc).contiguous() if scale is not None else pmean
    q = shift.to(acc).contiguous() if shift is not None else pmean
    b = bias.contiguous() if bias is not None else pmean
    epilogue = out_scale is not None
    op = out_scale.to(acc).contiguous() if epilogue else pmean
    oq = out_shift.to(acc).contiguous() if epilogue else pmean
    if z.numel() > 0:
        wrap_triton(_conv_fwd_kernel)[gemm.grid](
            x, p, q, packed_weight(weight, transposed), *gemm.taps, b, op, oq, z, pmean, pm2,
            pcnt, N, H, W, CI, OH, OW, CO, KH, KW, *stride, *padding, *dilation, gemm.rows,
            *split_f64(negative_slope), *split_f64(out_slope), TRANSPOSED=transposed,
            PROLOGUE=scale is not None, HAS_BIAS=bias is not None, STATS=stats,
            EPILOGUE=epilogue, **gemm.meta)
    if not stats:
        return z, x.new_empty((0,), dtype=acc), x.new_empty((0,), dtype=acc)
    mean = x.new_empty((CO,), dtype=acc)
    var = x.new_empty((CO,), dtype=acc)
    grid, meta = merge_grid(CO, rows)
    wrap_triton(stats_merge_kernel)[grid](pmean, pm2, pcnt, mean, var, CO, rows, **meta)
    return z, mean, var


def backward(grad_out: torch.Tensor, grad_mean: torch.Tensor | None,
             grad_var: torch.Tensor | None, input: torch.Tensor, weight: torch.Tensor,
             scale: torch.Tensor | None, shift: torch.Tensor | None, negative_slope: float,
             out: torch.Tensor, mean: torch.Tensor, transposed: bool, stride, padding,
             dilation, has_bias: bool, output_mask):
    """Gradients of forward's (input, weight, bias, scale, shift) given those of
    (z, mean, var) (grad_mean / grad_var None when there are none): empty where
    output_mask is False or the argument is absent. `out` and `mean` are forward's z and
    mean (read only when grad_var is given)."""
    x = _nhwc(input)
    g = _nhwc(grad_out)
    N, CI, H, W = x.shape
    CO, OH, OW = g.shape[1], g.shape[2], g.shape[3]
    KH, KW = weight.shape[2], weight.shape[3]
    acc = acc_dtype(x)
    empty = x.new_empty((0,), dtype=acc)
    want_x, want_w, want_b, want_p, want_q = (bool(m) for m in output_mask)
    prologue = scale is not None
    want_p, want_q = want_p and prologue, want_q and prologue
    want_b = want_b and has_bias
    slope = split_f64(negative_slope)
    count = N * OH * OW
    # The gradient the GEMMs read: g + (z - mean) * gp + gq (MODE_GRAD) or g itself.
    grad_mode = MODE_GRAD if grad_mean is not None or grad_var is not None else MODE_NONE
    zc, gp, gq, gc = g, empty, empty, empty
    if grad_mode == MODE_GRAD:
        zero = torch.zeros((CO,), dtype=acc, device=x.device)
        gv = grad_var.to(acc) if grad_var is not None else zero
        gm = grad_mean.to(acc) if grad_mean is not None else zero
        zc, gp, gq, gc = _nhwc(out), (gv * (2.0 / count)).contiguous(), \
            (gm / count).contiguous(), mean.to(acc).contiguous()
    p = scale.to(acc).contiguous() if prologue else empty
    q = shift.to(acc).contiguous() if prologue else empty
    numel = max(x.numel(), g.numel())

    gx = g_scale = g_shift = None
    if want_x or want_p or want_q:
        gx = torch.empty_like(x)
        gemm = _Gemm(N, H, W, CI, not transposed, (KH, KW), stride, padding, dilation, x.dtype,
                     numel, x.device)
        psum, psumx = (x.new_zeros((gemm.tiles if prologue else 1, CI), dtype=acc)
                       for _ in range(2))
        w_t = packed_weight(weight, transposed).transpose(2, 3).contiguous()
        wrap_triton(_conv_dgrad_kernel)[gemm.grid](
            g, zc, gp, gq, gc, w_t, *gemm.taps, x, p, q, gx, psum, psumx,
            N, OH, OW, CO, H, W, CI, KH, KW, *stride, *padding, *dilation, gemm.rows,
            *slope, TRANSPOSED=not transposed, GRAD_MODE=grad_mode, PROLOGUE=prologue,
            **gemm.meta)
        if prologue:
            g_shift, g_scale = psum.sum(0), psumx.sum(0)

    gw = None
    if want_w:
        d_h, d_w = (H, W) if transposed else (OH, OW)
        n_pix = N * d_h * d_w
        block_ci, block_co = _block(CI, 64), _block(CO, 64)
        ci_blocks, co_blocks = triton.cdiv(CI, block_ci), triton.cdiv(CO, block_co)
        base = KH * KW * ci_blocks * co_blocks
        splits = max(1, min(WGRAD_TARGET_PROGRAMS // base,
                            triton.cdiv(n_pix, MIN_PIXELS_PER_SPLIT), 65535))
        per_split = triton.cdiv(n_pix, splits)
        splits = triton.cdiv(n_pix, per_split)
        part = x.new_empty((splits, KH, KW, CI, CO), dtype=acc)
        wrap_triton(_conv_wgrad_kernel)[(base, splits)](
            x, p, q, g, zc, gp, gq, gc, part,
            N, H, W, CI, OH, OW, CO, KH, KW, *stride, *padding, *dilation,
            per_split, ci_blocks, co_blocks, *slope, TRANSPOSED=transposed,
            PROLOGUE=prologue, GRAD_MODE=grad_mode, INDEX_64=numel >= INDEX64_MIN_NUMEL,
            PRECISION=_precision(x.dtype), UPCAST=_upcast(x.dtype), BLOCK_P=64,
            BLOCK_CI=block_ci, BLOCK_CO=block_co)
        gw = unpacked_weight(part.sum(0), transposed).to(weight.dtype).contiguous()

    gb = _channel_sums(g, zc, gp, gq, gc, grad_mode).to(weight.dtype) if want_b else None
    if not want_p:
        g_scale = None
    if not want_q:
        g_shift = None

    def absent(dtype):  # each output its own tensor: outputs of an op may not alias
        return x.new_empty((0,), dtype=dtype)

    return (gx if gx is not None and want_x else absent(x.dtype),
            gw if gw is not None else absent(weight.dtype),
            gb if gb is not None else absent(weight.dtype),
            g_scale if g_scale is not None else absent(acc),
            g_shift if g_shift is not None else absent(acc))


def _channel_sums(g, zc, gp, gq, gc, grad_mode) -> torch.Tensor:
    rows, C = g.numel() // g.shape[1], g.shape[1]
    block_c = min(triton.next_power_of_2(C), 64)
    per_split = max(1024, triton.cdiv(rows, 256))
    splits = triton.cdiv(rows, per_split)
    part = g.new_empty((splits, C), dtype=acc_dtype(g))
    wrap_triton(_channel_sum_kernel)[(triton.cdiv(C, block_c), splits)](
        g, zc, gp, gq, gc, part, rows, C, per_split, GRAD_MODE=grad_mode, BLOCK_R=64,
        BLOCK_C=block_c)
    return part.sum(0)


def _elementwise_grid(rows: int, C: int):
    block_c = min(triton.next_power_of_2(C), 64)
    block_r = max(1, 4096 // block_c)
    return (triton.cdiv(rows, block_r), triton.cdiv(C, block_c)), block_r, block_c


def affine_act(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
               negative_slope: float) -> torch.Tensor:
    """y = leaky(z * scale + shift) per channel, channels_last."""
    z = _nhwc(z)
    acc = acc_dtype(z)
    y = torch.empty_like(z)
    rows, C = z.numel() // z.shape[1], z.shape[1]
    grid, block_r, block_c = _elementwise_grid(rows, C)
    if y.numel() > 0:
        wrap_triton(_affine_act_kernel)[grid](
            z, scale.to(acc).contiguous(), shift.to(acc).contiguous(), y, rows, C,
            *split_f64(negative_slope), BLOCK_R=block_r, BLOCK_C=block_c)
    return y


def affine_act_backward(grad_out: torch.Tensor, z: torch.Tensor, scale: torch.Tensor,
                        shift: torch.Tensor, negative_slope: float):
    """(grad_z, grad_scale, grad_shift) of affine_act, in one pass over (grad_out, z)."""
    z = _nhwc(z)
    gy = _nhwc(grad_out)
    acc = acc_dtype(z)
    rows, C = z.numel() // z.shape[1], z.shape[1]
    grid, block_r, block_c = _elementwise_grid(rows, C)
    dz = torch.empty_like(z)
    psum, psumx = (z.new_empty((max(grid[0], 1), C), dtype=acc).zero_() for _ in range(2))
    if z.numel() > 0:
        wrap_triton(_affine_act_backward_kernel)[grid](
            gy, z, scale.to(acc).contiguous(), shift.to(acc).contiguous(), dz, psum, psumx,
            rows, C, *split_f64(negative_slope), BLOCK_R=block_r, BLOCK_C=block_c)
    return dz, psumx.sum(0), psum.sum(0)


# Every kernel of this file, for the ahead-of-time compile check (fastgan.kernels.aot).
KERNELS = (_conv_fwd_kernel, _conv_dgrad_kernel, _conv_wgrad_kernel, _channel_sum_kernel,
           _affine_act_kernel, _affine_act_backward_kernel, stats_merge_kernel)

# The DCGAN 64x64 pair's convolutions at batch 128 (nz=100, ngf=ndf=64, nc=3): generator
# ConvTranspose2d layers, then discriminator Conv2d layers; (transposed, C_in, C_out,
# input size, kernel, stride, padding).
DCGAN_LAYERS = [
    (True, 100, 512, 1, 4, 1, 0), (True, 512, 256, 4, 4, 2, 1), (True, 256, 128, 8, 4, 2, 1),
    (True, 128, 64, 16, 4, 2, 1), (True, 64, 3, 32, 4, 2, 1),
    (False, 3, 64, 64, 4, 2, 1), (False, 64, 128, 32, 4, 2, 1), (False, 128, 256, 16, 4, 2, 1),
    (False, 256, 512, 8, 4, 2, 1), (False, 512, 1, 4, 4, 1, 0),
]


def aot_cases(quick: bool = False) -> list:
    """Representative calls of the launchers (on meta tensors) for fastgan.kernels.aot:
    every DCGAN layer at batch 128 in bf16 and fp32, training forward (prologue where a
    BatchNorm precedes, statistics where one follows) and backward (the statistics'
    gradient terms in the GEMM prologues), and an odd shape with a bias. `quick`: one
    ConvTranspose2d and one Conv2d layer, bf16, and the odd shape in fp32."""
    layers = [(layer, dt) for layer in DCGAN_LAYERS for dt in (torch.bfloat16, torch.float32)]
    odd = ((False, 5, 7, 9, 3, 2, 1), torch.float32)
    if quick:
        layers = [(DCGAN_LAYERS[3], torch.bfloat16), (DCGAN_LAYERS[6], torch.bfloat16)]

    def case(layer, dtype, batch=128, bias=False):
        transposed, c_in, c_out, size, k, s, p = layer

        def run():
            meta = {"device": "meta"}
            x = torch.empty((batch, c_in, size, size), dtype=dtype, **meta)
            x = x.contiguous(memory_format=torch.channels_last)
            wshape = (c_in, c_out, k, k) if transposed else (c_out, c_in, k, k)
            w = torch.empty(wshape, dtype=dtype, **meta)
            b = torch.empty((c_out,), dtype=dtype, **meta) if bias else None
            prologue = c_in not in (3, 100)  # the image / the noise: no BatchNorm before
            stats = c_out not in (1, 3)  # the logit / the image: no BatchNorm after
            v = torch.empty((c_in,), dtype=torch.float32, **meta)
            sc = v if prologue else None
            geo = ((s, s), (p, p), (0, 0), (1, 1))
            z, mean, var = forward(x, w, b, sc, sc, 0.2, transposed, *geo, stats)
            gm = mean if stats else None
            backward(z, gm, gm, x, w, sc, sc, 0.2, z, mean, transposed, geo[0], geo[1], geo[3],
                     bias, [True, True, bias, prologue, prologue])
            if stats:
                u = torch.empty((c_out,), dtype=torch.float32, **meta)
                affine_act(z, u, u, 0.2)
                affine_act_backward(z, z, u, u, 0.2)
                forward(x, w, b, sc, sc, 0.2, transposed, *geo, False, u, u, 0.0)  # sampling
        return run

    return [case(layer, dt) for layer, dt in layers] + [case(odd[0], odd[1], 3, True)]
