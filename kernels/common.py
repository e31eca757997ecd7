"""What the Triton kernel modules of fastgan.kernels share, once: host doubles passed to
kernels as fp32 pairs, the accumulation type of an input, the LeakyReLU and its
derivative, the per-channel moments merge (Chan's formula; the math of
csrc/bn_act_math.h) with its kernel, which bn_act.py and conv_bn_act.py both launch on
their (splits, C) partial moments, and log1p / expm1 / tanh written with exp and log only
(the interpreter has no libdevice). Op modules import from here, never from each other."""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl


def split_f64(v: float) -> tuple[float, float]:
    """(hi, lo) fp32 values with hi + lo == v to ~2^-48 (Triton passes floats as fp32)."""
    hi = struct.unpack("f", struct.pack("f", v))[0]
    return hi, float(v - hi)


@triton.jit
def f64(hi, lo, acc_ty: tl.constexpr):
    """A host double passed as an fp32 (hi, lo) pair (split_f64), in the accumulation type."""
    return tl.cast(hi, acc_ty) + tl.cast(lo, acc_ty)


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs, fp64 for fp64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# LeakyReLU and the per-channel moments merge.

@triton.jit
def chan_combine(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
    """Chan et al.'s count-weighted merge of two (mean, M2, count) moments (as
    merge_moments in csrc/bn_act_math.h); empty sides (count 0) drop out."""
    n = n_a + n_b
    frac_b = n_b / tl.maximum(n, 1.0)
    delta = mean_b - mean_a
    return mean_a + delta * frac_b, m2_a + m2_b + delta * delta * n_a * frac_b, n


@triton.jit
def merge_lanes(mean, m2, cnt, AXIS: tl.constexpr):
    """Count-weighted merge of per-lane moments along AXIS (None: all of them): Chan's
    formula for k parts at once, mean = sum(n_i mean_i) / n and
    M2 = sum(M2_i) + sum(n_i (mean_i - mean)^2); deviations only, so it is as stable as
    the pairwise merge (and needs only plain sums)."""
    n = tl.sum(cnt, AXIS)
    mu = tl.sum(cnt * mean, AXIS) / tl.maximum(n, 1.0)
    if AXIS is None:
        d = mean - mu
    else:
        d = mean - tl.expand_dims(mu, AXIS)
    return mu, tl.sum(m2, AXIS) + tl.sum(cnt * d * d, AXIS), n


@triton.jit
def leaky(z, slope):
    return tl.where(z > 0, z, z * slope)


@triton.jit
def leaky_grad(z, slope):
    # torch's leaky_relu_backward tests z > 0: the derivative at 0 is the slope.
    return tl.where(z > 0, 1.0, slope)


@triton.jit
def stats_merge_kernel(pmean_ptr, pm2_ptr, pcnt_ptr, mean_ptr, var_ptr, C, S,
                        BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Merges the (S, C) partial moments per channel (Chan, count-weighted) into the
    mean and the biased variance."""
    acc_ty: tl.constexpr = pmean_ptr.dtype.element_ty
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mean = tl.zeros([BLOCK_S, BLOCK_C], acc_ty)
    m2 = tl.zeros([BLOCK_S, BLOCK_C], acc_ty)
    cnt = tl.zeros([BLOCK_S, BLOCK_C], acc_ty)
    for s0 in range(0, S, BLOCK_S):
        srows = s0 + tl.arange(0, BLOCK_S)
        mask = (srows < S)[:, None] & cmask[None, :]
        offs = srows[:, None] * C + cols[None, :]
        mean, m2, cnt = chan_combine(mean, m2, cnt,
                                      tl.load(pmean_ptr + offs, mask=mask, other=0.0),
                                      tl.load(pm2_ptr + offs, mask=mask, other=0.0),
                                      tl.load(pcnt_ptr + offs, mask=mask, other=0.0))
    mean, m2, cnt = merge_lanes(mean, m2, cnt, 0)
    tl.store(mean_ptr + cols, mean, mask=cmask)
    tl.store(var_ptr + cols, m2 / tl.maximum(cnt, 1.0), mask=cmask)


def merge_grid(C: int, S: int) -> tuple[tuple[int], dict]:
    block_s = min(triton.next_power_of_2(S), 16)
    block_c = min(triton.next_power_of_2(C), 64)
    return (triton.cdiv(C, block_c),), {"BLOCK_S": block_s, "BLOCK_C": block_c}


# ---------------------------------------------------------------------------
# Elementary functions from exp and log (Triton's interpreter has no libdevice, so the
# kernels and their interpreter tests run the same code).

@triton.jit
def log1p(e):
    """log1p(e) for e > -1, a few ulp: Goldberg's log(u) * e / (u - 1), u = 1 + e (e
    itself where u rounds to 1)."""
    u = 1.0 + e
    d = u - 1.0
    tiny = d == 0.0
    return tl.where(tiny, e, tl.log(u) * (e / tl.where(tiny, 1.0, d)))


@triton.jit
def expm1(x):
    """expm1(x), a few ulp: Kahan's (u - 1) * x / log(u), u = exp(x) (x where u rounds to
    1, -1 where it rounds to 0 or u - 1 to -1)."""
    u = tl.exp(x)
    d = u - 1.0
    one = d == 0.0
    neg_one = d == -1.0
    safe_log = tl.where(one | neg_one, 1.0, tl.log(tl.where(one | neg_one, 2.0, u)))
    return tl.where(one, x, tl.where(neg_one, -1.0, d * (x / safe_log)))


@triton.jit
def tanh(x):
    """tanh(x) as -expm1(-2|x|) / (2 + expm1(-2|x|)) with x's sign: no cancellation near 0,
    exactly +-1 where exp(-2|x|) underflows, NaN for NaN."""
    m = expm1(-2.0 * tl.abs(x))
    t = -m / (2.0 + m)
    return tl.where(x < 0.0, -t, t)
