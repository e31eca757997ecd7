"""Helpers shared by the Triton kernel modules of fastgan.kernels: host doubles passed to
kernels as fp32 pairs, and the accumulation type of an input."""

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
