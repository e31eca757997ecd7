"""Triton kernels of the bias_act op (StyleGAN's bias + activation + gain + clamp), and
their host-side launchers.

The launchers `forward` and `backward` have the semantics of fastgan::bias_act_forward /
fastgan::bias_act_backward (csrc/bias_act.cpp); fastgan/ops/bias_act_triton.py registers
them as the torch.library.triton_op ops fastgan::triton_bias_act_forward / _backward.

Layout. x (for the backward: grad, with ref brought to grad's memory format) is walked in
memory order, viewed as (outer, C, inner) around `dim`: `dim`'s position in the memory
order of a contiguous tensor, or of a 4-D channels_last one (N, H, W, C: dim=1 gives
inner == 1). Any other layout is made contiguous first. The outputs have the memory
format of the tensor walked. Without a bias the whole tensor is one run (C = 1).
  rows     inner > 1: a (outer * C, inner) matrix, a row per (outer, channel) pair. A
           program takes BLOCK_R rows and ITERS tiles of BLOCK_I along them; the channel
           (and the bias) is per row; grad_b's partials are per row and chunk.
  columns  inner == 1 (channels_last with dim=1, or dim the last dimension): an
           (outer, C) matrix; a program takes BLOCK_I channels and ITERS tiles of BLOCK_R
           rows; grad_b's partials are per channel and block of rows.
grad_b is computed in the backward's pass: each program writes the sums of its tile's
grad_x per row (rows) or per channel (columns) into a small fp32 (fp64 for fp64) buffer,
which torch sums in a fixed order. No atomics: the result depends on the shapes only.

Numerics: the per-element formulas of csrc/bias_act_math.h, written once here as jit
helpers, with its range guards (exp arguments clamped to 80, swish's to 40) and its
ScalarOps min / max (a < b ? a : b). tanh, log1p and expm1 come from exp and log
(kernels/common.py), a few ulp, the same code in the interpreter. Arithmetic in fp32 for
fp32 / bf16 / fp16 inputs, fp64 for fp64; host doubles (alpha, gain, 1 / gain, clamp)
travel as fp32 (hi, lo) pairs. Offsets are 64-bit when a tensor has >= INDEX64_MIN_NUMEL
elements.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastgan.kernels.common import acc_dtype, f64, log1p, split_f64, tanh

# csrc/bias_act_math.h's Act enum (NVlabs' cuda_idx).
ACT_IDS = {"linear": 1, "relu": 2, "lrelu": 3, "tanh": 4, "sigmoid": 5, "elu": 6, "selu": 7,
           "softplus": 8, "swish": 9}
# RefKind::kY: the backward reads y (linear too when it clamps); swish reads x.
REF_Y = frozenset(("relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus"))
HAS_2ND_GRAD = frozenset(("tanh", "sigmoid", "elu", "selu", "softplus", "swish"))

_SELU_LAMBDA = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA: tl.constexpr = tl.constexpr(_SELU_LAMBDA)
SELU_LAMBDA_ALPHA: tl.constexpr = tl.constexpr(_SELU_LAMBDA * _SELU_ALPHA)

# Tunables, module attributes so that tests can lower them to reach every path on
# interpreter-sized inputs.
TILE = 1024  # elements per tile (4 warps: 8 per thread)
MAX_BLOCK_C = 128  # columns layout: channels per tile
MAX_ITERS = 4  # tiles per program
NUM_WARPS = 4
INDEX64_MIN_NUMEL = 2**31


def ref_kind(act: str, clamping: bool) -> str:
    """Which tensor the backward reads: 'y', 'x' or '' (csrc/bias_act_math.h, ref_kind)."""
    if act == "swish":
        return "x"
    if act == "linear":
        return "y" if clamping else ""
    return "y"


# ---------------------------------------------------------------------------
# Per-element math (csrc/bias_act_math.h). ACT is a constexpr: each activation compiles
# to its own branch-free code.

@triton.jit
def _min(a, b):
    return tl.where(a < b, a, b)


@triton.jit
def _max(a, b):
    return tl.where(a > b, a, b)


@triton.jit
def _activate(s, alpha, ACT: tl.constexpr):
    """act(s), no gain, no clamp."""
    if ACT == 1:  # linear
        r = s
    elif ACT == 2:  # relu
        r = _max(s, 0.0)
    elif ACT == 3:  # lrelu
        r = tl.where(s > 0.0, s, s * alpha)
    elif ACT == 4:  # tanh
        r = tanh(s)
    elif ACT == 5:  # sigmoid
        r = 1.0 / (1.0 + tl.exp(_min(-s, 80.0)))
    elif ACT == 6:  # elu
        r = tl.where(s >= 0.0, s, tl.exp(_min(s, 0.0)) - 1.0)
    elif ACT == 7:  # selu
        r = tl.where(s >= 0.0, s * SELU_LAMBDA, (tl.exp(_min(s, 0.0)) - 1.0) * SELU_LAMBDA_ALPHA)
    elif ACT == 8:  # softplus: max(s, 0) + log1p(exp(-|s|)), never overflows
        r = _max(s, 0.0) + log1p(tl.exp(-tl.abs(s)))
    else:  # swish: s * sigmoid(s)
        r = s / (1.0 + tl.exp(_min(-s, 80.0)))
    return r


@triton.jit
def _forward_value(s, alpha, gain, clamp, ACT: tl.constexpr, CLAMPING: tl.constexpr):
    y = _activate(s, alpha, ACT) * gain
    if CLAMPING:
        y = _max(_min(y, clamp), -clamp)
    return y


@triton.jit
def _d1_from_y(yy, alpha, ACT: tl.constexpr):
    """d act / d s from yy = y / gain (the RefKind::kY activations)."""
    if ACT == 2:  # relu
        r = tl.where(yy > 0.0, 1.0, 0.0).to(yy.dtype)
    elif ACT == 3:  # lrelu
        r = tl.where(yy > 0.0, 1.0, alpha).to(yy.dtype)
    elif ACT == 4:  # tanh
        r = 1.0 - yy * yy
    elif ACT == 5:  # sigmoid
        r = yy - yy * yy
    elif ACT == 6:  # elu
        r = tl.where(yy >= 0.0, 1.0, yy + 1.0)
    elif ACT == 7:  # selu
        r = tl.where(yy >= 0.0, tl.full(yy.shape, SELU_LAMBDA, yy.dtype),
                     yy + SELU_LAMBDA_ALPHA)
    else:  # softplus: sigmoid(s) = 1 - exp(-softplus(s))
        r = 1.0 - tl.exp(-yy)
    return r


@triton.jit
def _d2_from_y(yy, ACT: tl.constexpr):
    """d d1 / d yy (the RefKind::kY activations; zero for those without a 2nd derivative)."""
    if ACT == 4:  # tanh
        r = -2.0 * yy
    elif ACT == 5:  # sigmoid
        r = 1.0 - 2.0 * yy
    elif ACT == 6 or ACT == 7:  # elu, selu
        r = tl.where(yy >= 0.0, 0.0, 1.0).to(yy.dtype)
    elif ACT == 8:  # softplus
        r = tl.exp(-yy)
    else:
        r = tl.zeros_like(yy)
    return r


@triton.jit
def _swish_d1(s):
    c = tl.exp(_min(s, 40.0))
    d = c + 1.0
    return tl.where(s > 40.0, 1.0, c * (s + d) / (d * d))


@triton.jit
def _swish_d2(s):
    c = tl.exp(_min(s, 40.0))
    d = c + 1.0
    return tl.where(s > 40.0, 0.0, c * (s * (2.0 - d) + 2.0 * d) / (d * d * d))


@triton.jit
def _backward_value(g, ref, b, alpha, gain, inv_gain, clamp, ACT: tl.constexpr,
                    ORDER: tl.constexpr, CLAMPING: tl.constexpr):
    """csrc/bias_act_math.h `backward`: order 1 (dL/dx from g = dL/dy) or order 2 (the
    derivative of the order-1 result with respect to ref, times g)."""
    if ACT == 9:  # swish: ref is x
        s = ref + b
        if ORDER == 1:
            out = g * gain * _swish_d1(s)
        else:
            out = g * gain * _swish_d2(s)
        if CLAMPING:
            y = _activate(s, alpha, ACT) * gain
            out = tl.where(clamp > tl.abs(y), out, 0.0)
    else:  # ref is y (or absent: linear without clamp)
        yy = ref * inv_gain
        if ORDER == 1:
            if ACT == 1:
                out = g * gain
            else:
                out = g * gain * _d1_from_y(yy, alpha, ACT)
        else:
            out = g * _d2_from_y(yy, ACT)
        if CLAMPING:
            out = tl.where(clamp > tl.abs(ref), out, 0.0)
    return out


# ---------------------------------------------------------------------------
# Tiles of the (outer, C, inner) view.

@triton.jit
def _tile(pid, it, R, C, inner, n_chunks, ELEMS, COLUMNS: tl.constexpr,
          BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """Offsets and mask of tile `it` of program `pid`, and the channels of its rows
    (rows: the matrix is (R = outer * C, inner)) or columns (columns: (R = outer, C)),
    1-D, with their mask."""
    rb = pid // n_chunks
    ch = pid - rb * n_chunks
    if COLUMNS:
        rows = rb * ELEMS + it * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = ch * BLOCK_I + tl.arange(0, BLOCK_I)
        mask = (rows < R)[:, None] & (cols < C)[None, :]
        offs = rows[:, None] * C + cols[None, :]
        chan = cols
        chan_mask = cols < C
    else:
        rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = ch * ELEMS + it * BLOCK_I + tl.arange(0, BLOCK_I)
        mask = (rows < R)[:, None] & (cols < inner)[None, :]
        offs = rows[:, None] * inner + cols[None, :]
        chan = rows % C
        chan_mask = rows < R
    return offs, mask, chan, chan_mask


@triton.jit
def _load_bias(b_ptr, chan, chan_mask, acc_ty: tl.constexpr, COLUMNS: tl.constexpr):
    """The bias of a tile's channels, broadcastable to the tile (one load per channel)."""
    b = tl.load(b_ptr + chan, mask=chan_mask, other=0.0).to(acc_ty)
    if COLUMNS:
        return b[None, :]
    else:
        return b[:, None]


@triton.jit
def _forward_kernel(x_ptr, b_ptr, y_ptr, R, C, inner, n_chunks, ELEMS,
                    alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
                    ACT: tl.constexpr, CLAMPING: tl.constexpr, HAS_B: tl.constexpr,
                    COLUMNS: tl.constexpr, ITERS: tl.constexpr, INDEX_64: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """y = clamp(act(x + b) * gain) over ITERS tiles."""
    acc_ty: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    alpha = f64(alpha_hi, alpha_lo, acc_ty)
    gain = f64(gain_hi, gain_lo, acc_ty)
    clamp = f64(clamp_hi, clamp_lo, acc_ty)
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    for it in tl.static_range(ITERS):
        offs, mask, chan, chan_mask = _tile(pid, it, R, C, inner, n_chunks, ELEMS, COLUMNS,
                                            BLOCK_R, BLOCK_I)
        s = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        if HAS_B:
            s = s + _load_bias(b_ptr, chan, chan_mask, acc_ty, COLUMNS)
        y = _forward_value(s, alpha, gain, clamp, ACT, CLAMPING)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(g_ptr, ref_ptr, b_ptr, gx_ptr, part_ptr, R, C, inner, n_chunks, ELEMS,
                     alpha_hi, alpha_lo, gain_hi, gain_lo, inv_hi, inv_lo, clamp_hi, clamp_lo,
                     ACT: tl.constexpr, ORDER: tl.constexpr, CLAMPING: tl.constexpr,
                     HAS_REF: tl.constexpr, HAS_B: tl.constexpr, WRITE_GX: tl.constexpr,
                     WRITE_GB: tl.constexpr, COLUMNS: tl.constexpr, ITERS: tl.constexpr,
                     INDEX_64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """grad_x over ITERS tiles (stored if WRITE_GX) and, if WRITE_GB, its sums: per row
    into part[row * n_chunks + chunk] (rows), per channel into part[row_block * C + c]
    (columns)."""
    acc_ty: tl.constexpr = tl.float64 if g_ptr.dtype.element_ty == tl.float64 else tl.float32
    alpha = f64(alpha_hi, alpha_lo, acc_ty)
    gain = f64(gain_hi, gain_lo, acc_ty)
    inv_gain = f64(inv_hi, inv_lo, acc_ty)
    clamp = f64(clamp_hi, clamp_lo, acc_ty)
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    if COLUMNS:
        total = tl.zeros([BLOCK_I], acc_ty)
    else:
        total = tl.zeros([BLOCK_R], acc_ty)
    for it in tl.static_range(ITERS):
        offs, mask, chan, chan_mask = _tile(pid, it, R, C, inner, n_chunks, ELEMS, COLUMNS,
                                            BLOCK_R, BLOCK_I)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        if HAS_REF:
            ref = tl.load(ref_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        else:
            ref = tl.zeros_like(g)
        if HAS_B:
            b = _load_bias(b_ptr, chan, chan_mask, acc_ty, COLUMNS)
        else:
            b = 0.0
        gx = _backward_value(g, ref, b, alpha, gain, inv_gain, clamp, ACT, ORDER, CLAMPING)
        if WRITE_GX:
            tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        if WRITE_GB:
            if COLUMNS:
                total += tl.sum(tl.where(mask, gx, 0.0), 0)
            else:
                total += tl.sum(tl.where(mask, gx, 0.0), 1)
    if WRITE_GB:
        if COLUMNS:
            cols = (pid % n_chunks) * BLOCK_I + tl.arange(0, BLOCK_I)
            tl.store(part_ptr + (pid // n_chunks) * C + cols, total, mask=cols < C)
        else:
            rows = (pid // n_chunks) * BLOCK_R + tl.arange(0, BLOCK_R)
            tl.store(part_ptr + rows * n_chunks + pid % n_chunks, total, mask=rows < R)


# ---------------------------------------------------------------------------
# Host side.

def _is_channels_last(t: torch.Tensor) -> bool:
    """As csrc/common.h: channels_last and not also NCHW-contiguous."""
    return (t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """The format the kernels walk `t` in (and give their outputs)."""
    return torch.channels_last if _is_channels_last(t) else torch.contiguous_format


def _view(t: torch.Tensor, dim: int, has_b: bool, fmt) -> tuple[int, int, int]:
    """(outer, C, inner) of `t` in memory order `fmt` around `dim`."""
    n = t.numel()
    if not has_b:
        return 1, 1, n
    order = (0, 2, 3, 1) if fmt == torch.channels_last else tuple(range(t.dim()))
    sizes = [t.shape[d] for d in order]
    p = order.index(dim)
    return math.prod(sizes[:p]), sizes[p], math.prod(sizes[p + 1:])


def _plan(outer: int, C: int, inner: int) -> dict:
    """Grid, tiles and buffer shape for the (outer, C, inner) view."""
    if C > 1 and inner == 1:  # columns
        block_i = min(triton.next_power_of_2(C), MAX_BLOCK_C)
        block_r = max(1, min(TILE // block_i, triton.next_power_of_2(outer)))
        iters = max(1, min(MAX_ITERS, triton.cdiv(outer, block_r)))
        elems = iters * block_r
        n_rb, n_chunks = triton.cdiv(outer, elems), triton.cdiv(C, block_i)
        return {"COLUMNS": True, "R": outer, "n_chunks": n_chunks, "ELEMS": elems,
                "ITERS": iters, "BLOCK_R": block_r, "BLOCK_I": block_i,
                "grid": n_rb * n_chunks, "part": (n_rb, C), "sum_dims": (0,)}
    rows = outer * C
    block_i = min(triton.next_power_of_2(inner), TILE)
    block_r = max(1, min(TILE // block_i, triton.next_power_of_2(rows)))
    iters = max(1, min(MAX_ITERS, triton.cdiv(inner, block_i)))
    elems = iters * block_i
    n_chunks = triton.cdiv(inner, elems)
    return {"COLUMNS": False, "R": rows, "n_chunks": n_chunks, "ELEMS": elems,
            "ITERS": iters, "BLOCK_R": block_r, "BLOCK_I": block_i,
            "grid": triton.cdiv(rows, block_r) * n_chunks,
            "part": (outer, C, n_chunks), "sum_dims": (0, 2)}


def _launch_meta(plan: dict) -> dict:
    return {k: plan[k] for k in ("COLUMNS", "ITERS", "BLOCK_R", "BLOCK_I")}


def forward(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float,
            gain: float, clamp: float) -> torch.Tensor:
    """y = clamp(act(x + b) * gain) as fastgan::bias_act_forward, in x's memory format
    (contiguous for layouts other than contiguous and channels_last)."""
    fmt = memory_format(x)
    x = x.contiguous(memory_format=fmt)
    y = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return y
    b = b.contiguous() if b is not None else None
    outer, C, inner = _view(x, dim, b is not None, fmt)
    plan = _plan(outer, C, inner)
    wrap_triton(_forward_kernel)[(plan["grid"],)](
        x, b, y, plan["R"], C, inner, plan["n_chunks"], plan["ELEMS"],
        *split_f64(alpha), *split_f64(gain), *split_f64(max(clamp, 0.0)),
        ACT=ACT_IDS[act], CLAMPING=clamp >= 0, HAS_B=b is not None,
        INDEX_64=x.numel() >= INDEX64_MIN_NUMEL, num_warps=NUM_WARPS, **_launch_meta(plan))
    return y


def backward(grad: torch.Tensor, ref: torch.Tensor | None, b: torch.Tensor | None, dim: int,
             act: str, alpha: float, gain: float, clamp: float, order: int,
             output_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_b) as fastgan::bias_act_backward: grad_x in grad's memory format (ref
    is brought to it), grad_b summed over every dimension but `dim` in fp32 (fp64 for fp64)
    and cast to b's dtype (grad's without b: the C++ node asks for grad_b without passing
    b when the activation does not read it); an output masked off is an empty (0,)
    tensor."""
    want_x = bool(output_mask[0])
    want_b = bool(output_mask[1])
    fmt = memory_format(grad)
    g = grad.contiguous(memory_format=fmt)
    gx = torch.empty_like(g, memory_format=fmt) if want_x else grad.new_empty((0,))
    gb_dtype = b.dtype if b is not None else grad.dtype
    if not want_b:
        gb = grad.new_empty((0,), dtype=gb_dtype)
    if not (want_x or want_b):
        return gx, gb
    acc = acc_dtype(g)
    if g.numel() == 0:
        if want_b:
            gb = g.new_zeros(g.shape[dim], dtype=gb_dtype)
        return gx, gb
    clamping = clamp >= 0
    if ref is not None and ref_kind(act, clamping):
        ref = ref.contiguous(memory_format=fmt)
    else:
        ref = None
    b = b.contiguous() if b is not None else None
    outer, C, inner = _view(g, dim, b is not None or want_b, fmt)
    plan = _plan(outer, C, inner)
    part = g.new_empty(plan["part"], dtype=acc) if want_b else None
    inv_gain = 1.0 / gain if gain != 0 else 0.0
    wrap_triton(_backward_kernel)[(plan["grid"],)](
        g, ref, b, gx if want_x else None, part, plan["R"], C, inner, plan["n_chunks"],
        plan["ELEMS"], *split_f64(alpha), *split_f64(gain), *split_f64(inv_gain),
        *split_f64(max(clamp, 0.0)),
        ACT=ACT_IDS[act], ORDER=int(order), CLAMPING=clamping, HAS_REF=ref is not None,
        HAS_B=b is not None, WRITE_GX=want_x, WRITE_GB=want_b,
        INDEX_64=g.numel() >= INDEX64_MIN_NUMEL, num_warps=NUM_WARPS, **_launch_meta(plan))
    if want_b:
        gb = part.sum(plan["sum_dims"]).to(gb_dtype)
    return gx, gb


# Every kernel of this file, for the ahead-of-time compile check (fastgan.kernels.aot).
KERNELS = (_forward_kernel, _backward_kernel)


def aot_cases(quick: bool = False) -> list:
    """Representative calls of the launchers (on meta tensors) for fastgan.kernels.aot:
    StyleGAN shapes, NCHW (rows) and channels_last (columns), every activation with and
    without clamp in fp32, bf16 and fp16 for lrelu (the mapping layers and the synthesis
    network's default), fp64 for every activation (rows) and one per other layout;
    backward of order 1 with grad_b and of order 2. `quick` keeps one case per layout,
    plus fp64."""
    nchw, cl = ((4, 512, 8, 8), torch.contiguous_format), ((4, 256, 32, 32), torch.channels_last)
    mapping = ((4, 512), torch.contiguous_format)  # dim 1 of a matrix: the columns layout
    if quick:  # rows and columns, an activation with a 2nd derivative, bf16 and fp64
        combos = [("lrelu", *nchw, torch.float32, 256.0), ("swish", *cl, torch.bfloat16, -1.0),
                  ("tanh", *nchw, torch.float64, -1.0)]
    else:
        combos = [(a, *shape, torch.float32, clamp) for a in ACT_IDS
                  for shape in (nchw, cl, mapping) for clamp in (-1.0, 256.0)]
        combos += [("lrelu", *nchw, torch.float16, 256.0), ("lrelu", *cl, torch.bfloat16, -1.0),
                   ("lrelu", *mapping, torch.bfloat16, -1.0)]
        combos += [(a, *nchw, torch.float64, 1.0) for a in ACT_IDS]
        combos += [("swish", *cl, torch.float64, -1.0), ("tanh", *mapping, torch.float64, -1.0)]

    def case(act, shape, fmt, dtype, clamp):
        def run():
            x = torch.empty(shape, dtype=dtype, device="meta").contiguous(memory_format=fmt)
            b = torch.empty(shape[1], dtype=dtype, device="meta")
            gain = math.sqrt(2.0)
            y = forward(x, b, 1, act, 0.2, gain, clamp)
            ref = x if act == "swish" else y
            backward(y, ref, b, 1, act, 0.2, gain, clamp, 1, [True, True])
            if act in HAS_2ND_GRAD:
                backward(y, ref, b, 1, act, 0.2, gain, clamp, 2, [True, act == "swish"])
        return run

    return [case(*c) for c in combos]
