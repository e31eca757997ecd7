"""Triton kernels of the combined GAN loss op, and their host-side launchers.

The launchers `forward` and `backward` have the semantics of fastgan::gan_loss_forward /
fastgan::gan_loss_backward (csrc/gan_loss.cpp); fastgan/ops/gan_loss_triton.py registers
them as the torch.library.triton_op ops fastgan::triton_gan_loss_forward / _backward.

Both inputs are flattened (copied only when not contiguous). The forward needs five sums:
the real d_loss term and sigmoid(r) over the real logits, the fake d_loss term, the
g_loss term and sigmoid(f) over the fake ones.
  small inputs   nr + nf <= SINGLE_PROGRAM_MAX_NUMEL (every GAN batch, 64..4096 logits
                 each): ONE launch of one program, which walks the real then the fake
                 logits in BLOCK-wide tiles (per-lane sums), reduces the lanes and writes
                 the four results.
  larger         _forward_kernel on a 1-D grid, the real logits' chunks then the fake
                 ones', each program writing its sums into a (5, programs) fp64 buffer;
                 then _finalize_kernel, one program, adds them in a fixed order in fp64.
No atomics: the result depends on the sizes only, never on scheduling.
Backward: one elementwise launch over the tiles of the real logits then of the fake
ones (only those output_mask asks for).
The paired kind, rpgan, has kernels of its own (_pair_*), which walk r[i] and f[i]
together: four sums (d_loss, g_loss, sigmoid(r), sigmoid(f)) over the N pairs in the
forward, on the same one-program / partials + finalize split; one elementwise launch over
the pairs in the backward, writing whichever of the two gradients is asked for. grad_d_loss and grad_g_loss are read on the
device (no host sync), and the per-element derivatives are recomputed from the logits.

Traffic per logit, in units of its size: forward reads it once (plus 16 or 24 bytes of
fp64 partials per program on the large path); backward reads it once and writes its
gradient once. At
GAN batch sizes all of it is a few KB: the op is bound by launch latency, not bandwidth.

Numerics: the formulas of csrc/gan_loss_math.h (written once here as jit helpers, with
the same stable forms: everything logistic from e = exp(-|x|) in (0, 1], so logits of
+-1e4 give finite results in every dtype). Arithmetic and per-lane sums in fp32 for
fp32/bf16/fp16 inputs, fp64 for fp64; lane and program sums are combined in fp64.
log1p(e) is computed from log (Goldberg's log(u) * e / (u - 1), u = 1 + e, as the CPU
kernels do for fp32): exact to a few ulp and the same code in the interpreter, which has
no libdevice. real_label travels as an fp32 (hi, lo) pair, exact for fp64 inputs.
Offsets are 64-bit when an input has >= INDEX64_MIN_NUMEL elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastgan.kernels.common import acc_dtype, f64, log1p, split_f64

# csrc/gan_loss_math.h's Kind enum.
KIND_IDS = {"minimax": 0, "ns": 1, "lsgan": 2, "hinge": 3, "wgan": 4, "rpgan": 5}
PAIRED_KINDS = ("rpgan",)  # the kinds run by the _pair_* kernels

# Tunables, module attributes so that tests can lower them to reach every path on
# interpreter-sized inputs.
BLOCK = 1024  # elements per tile (4 warps: 8 per thread)
NUM_WARPS = 4
SINGLE_PROGRAM_MAX_NUMEL = 8192  # nr + nf up to this: one program, one launch
MIN_ELEMS_PER_PROGRAM = 4096  # larger inputs: at least this many logits per program
MAX_PROGRAMS_PER_INPUT = 1024  # ... and at most this many programs per input
FINALIZE_BLOCK = 256
INDEX64_MIN_NUMEL = 2**31


# ---------------------------------------------------------------------------
# Per-element math (csrc/gan_loss_math.h). KIND is a constexpr: each kind compiles to
# its own branch-free code.

@triton.jit
def _exp_terms(x):
    """e = exp(-|x|) and q = 1 / (1 + e): sigmoid(x) is q (x >= 0) or e * q."""
    e = tl.exp(-tl.abs(x))
    return e, 1.0 / (1.0 + e)


@triton.jit
def _sigmoid_pos(x, e, q):
    return tl.where(0.0 > x, e * q, q)


@triton.jit
def _sigmoid_neg(x, e, q):
    return tl.where(0.0 > x, q, e * q)


@triton.jit
def _relu(x):
    return tl.where(x > 0.0, x, 0.0)


@triton.jit
def _real_terms(r, label, KIND: tl.constexpr):
    """(real half of d_loss, sigmoid(r)). Logistic kinds: with target `label`,
    label * softplus(-r) + (1 - label) * softplus(r) == softplus(-r) + (1 - label) * r."""
    e, q = _exp_terms(r)
    if KIND <= 1:  # minimax, ns
        d = _relu(-r) + log1p(e) + (1.0 - label) * r
    elif KIND == 2:  # lsgan
        t = r - 1.0
        d = 0.5 * t * t
    elif KIND == 3:  # hinge
        d = _relu(1.0 - r)
    else:  # wgan
        d = -r
    return d, _sigmoid_pos(r, e, q)


@triton.jit
def _fake_terms(f, KIND: tl.constexpr):
    """(fake half of d_loss, g_loss term, sigmoid(f))."""
    e, q = _exp_terms(f)
    if KIND == 0:  # minimax
        d = _relu(f) + log1p(e)
        g = -d
    elif KIND == 1:  # ns
        lp = log1p(e)
        d = _relu(f) + lp
        g = _relu(-f) + lp
    elif KIND == 2:  # lsgan
        t = f - 1.0
        d = 0.5 * f * f
        g = 0.5 * t * t
    elif KIND == 3:  # hinge
        d = _relu(1.0 + f)
        g = -f
    else:  # wgan
        d = f
        g = -f
    return d, g, _sigmoid_pos(f, e, q)


@triton.jit
def _real_grad(r, label, KIND: tl.constexpr):
    """d(real term of d_loss)/dr. Logistic: sigmoid(r) - label as (1 - label) -
    sigmoid(-r) (no cancellation for large r). Hinge: relu'(0) = 0, as torch."""
    if KIND <= 1:
        e, q = _exp_terms(r)
        g = (1.0 - label) - _sigmoid_neg(r, e, q)
    elif KIND == 2:
        g = r - 1.0
    elif KIND == 3:
        g = tl.where(1.0 - r > 0.0, -1.0, 0.0).to(r.dtype)
    else:
        g = tl.full(r.shape, -1.0, r.dtype)
    return g


@triton.jit
def _fake_grads(f, KIND: tl.constexpr):
    """(d(fake term of d_loss)/df, d(g_loss term)/df)."""
    if KIND <= 1:
        e, q = _exp_terms(f)
        s = _sigmoid_pos(f, e, q)
        if KIND == 0:
            g = -s
        else:  # ns: -sigmoid(-f), without the cancellation of s - 1
            g = -_sigmoid_neg(f, e, q)
        d = s
    elif KIND == 2:
        d = f
        g = f - 1.0
    elif KIND == 3:
        d = tl.where(1.0 + f > 0.0, 1.0, 0.0).to(f.dtype)
        g = tl.full(f.shape, -1.0, f.dtype)
    else:
        d = tl.full(f.shape, 1.0, f.dtype)
        g = tl.full(f.shape, -1.0, f.dtype)
    return d, g


@triton.jit
def _pair_terms(r, f):
    """rpgan per pair, u = f - r: (softplus(u), softplus(-u), sigmoid(r), sigmoid(f)).
    The two softplus share log1p(exp(-|u|))."""
    u = f - r
    lp = log1p(tl.exp(-tl.abs(u)))
    er, qr = _exp_terms(r)
    ef, qf = _exp_terms(f)
    return _relu(u) + lp, _relu(-u) + lp, _sigmoid_pos(r, er, qr), _sigmoid_pos(f, ef, qf)


@triton.jit
def _pair_grads(r, f):
    """rpgan: (s, t) = (sigmoid(f - r), sigmoid(r - f)), each from exp(-|f - r|) (t is
    never 1 - s, which cancels for large f - r). d(d_loss)/df = s = -d(d_loss)/dr;
    d(g_loss)/dr = t = -d(g_loss)/df."""
    u = f - r
    e, q = _exp_terms(u)
    return _sigmoid_pos(u, e, q), _sigmoid_neg(u, e, q)


# ---------------------------------------------------------------------------
# Sums over a range of one input: per-lane in the accumulation type, lanes added in fp64.

@triton.jit
def _real_sums(ptr, lo, hi, label, acc_ty: tl.constexpr, KIND: tl.constexpr,
               BLOCK: tl.constexpr):
    s_d = tl.zeros([BLOCK], acc_ty)
    s_s = tl.zeros([BLOCK], acc_ty)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < hi
        r = tl.load(ptr + offs, mask=mask, other=0.0).to(acc_ty)
        d, s = _real_terms(r, label, KIND)
        s_d += tl.where(mask, d, 0.0)
        s_s += tl.where(mask, s, 0.0)
    return tl.sum(s_d.to(tl.float64), 0), tl.sum(s_s.to(tl.float64), 0)


@triton.jit
def _fake_sums(ptr, lo, hi, acc_ty: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr):
    s_d = tl.zeros([BLOCK], acc_ty)
    s_g = tl.zeros([BLOCK], acc_ty)
    s_s = tl.zeros([BLOCK], acc_ty)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < hi
        f = tl.load(ptr + offs, mask=mask, other=0.0).to(acc_ty)
        d, g, s = _fake_terms(f, KIND)
        s_d += tl.where(mask, d, 0.0)
        s_g += tl.where(mask, g, 0.0)
        s_s += tl.where(mask, s, 0.0)
    return (tl.sum(s_d.to(tl.float64), 0), tl.sum(s_g.to(tl.float64), 0),
            tl.sum(s_s.to(tl.float64), 0))


@triton.jit
def _pair_sums(r_ptr, f_ptr, lo, hi, acc_ty: tl.constexpr, BLOCK: tl.constexpr):
    """rpgan's four sums over the pairs [lo, hi)."""
    s_d = tl.zeros([BLOCK], acc_ty)
    s_g = tl.zeros([BLOCK], acc_ty)
    s_r = tl.zeros([BLOCK], acc_ty)
    s_f = tl.zeros([BLOCK], acc_ty)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < hi
        r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        d, g, sr, sf = _pair_terms(r, f)
        s_d += tl.where(mask, d, 0.0)
        s_g += tl.where(mask, g, 0.0)
        s_r += tl.where(mask, sr, 0.0)
        s_f += tl.where(mask, sf, 0.0)
    return (tl.sum(s_d.to(tl.float64), 0), tl.sum(s_g.to(tl.float64), 0),
            tl.sum(s_r.to(tl.float64), 0), tl.sum(s_f.to(tl.float64), 0))


@triton.jit
def _store_pair_results(d_ptr, g_ptr, dr_ptr, df_ptr, p_d, p_g, p_r, p_f, n,
                        MEAN: tl.constexpr):
    """rpgan's outputs from its fp64 sums over the n pairs: each loss one mean (or sum)
    over the pairs; d_real, d_fake always means."""
    out_ty: tl.constexpr = d_ptr.dtype.element_ty
    if MEAN:
        p_d = p_d / n
        p_g = p_g / n
    tl.store(d_ptr, p_d.to(out_ty))
    tl.store(g_ptr, p_g.to(out_ty))
    tl.store(dr_ptr, (p_r / n).to(out_ty))
    tl.store(df_ptr, (p_f / n).to(out_ty))


@triton.jit
def _store_results(d_ptr, g_ptr, dr_ptr, df_ptr, r_d, r_s, f_d, f_g, f_s, nr, nf,
                   MEAN: tl.constexpr):
    """The four 0-dim outputs from the fp64 sums: each term a mean (or sum) over its own
    batch; d_real, d_fake always means."""
    out_ty: tl.constexpr = d_ptr.dtype.element_ty
    if MEAN:
        d_loss = r_d / nr + f_d / nf
        g_loss = f_g / nf
    else:
        d_loss = r_d + f_d
        g_loss = f_g
    tl.store(d_ptr, d_loss.to(out_ty))
    tl.store(g_ptr, g_loss.to(out_ty))
    tl.store(dr_ptr, (r_s / nr).to(out_ty))
    tl.store(df_ptr, (f_s / nf).to(out_ty))


# ---------------------------------------------------------------------------
# Kernels.

@triton.jit
def _forward_kernel(r_ptr, f_ptr, d_ptr, g_ptr, dr_ptr, df_ptr, part_ptr, nr, nf,
                    label_hi, label_lo, r_programs, elems, stride,
                    KIND: tl.constexpr, MEAN: tl.constexpr, SINGLE: tl.constexpr,
                    INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """SINGLE: one program computes everything and writes the outputs (part_ptr is None).
    Otherwise program
    p < r_programs sums real logits [p * elems, (p + 1) * elems) into part[0:2, p], the
    others fake chunks into part[2:5, p - r_programs] (part is (5, stride) fp64)."""
    acc_ty: tl.constexpr = d_ptr.dtype.element_ty
    label = f64(label_hi, label_lo, acc_ty)
    if SINGLE:
        r_d, r_s = _real_sums(r_ptr, 0, nr, label, acc_ty, KIND, BLOCK)
        f_d, f_g, f_s = _fake_sums(f_ptr, 0, nf, acc_ty, KIND, BLOCK)
        _store_results(d_ptr, g_ptr, dr_ptr, df_ptr, r_d, r_s, f_d, f_g, f_s, nr, nf, MEAN)
    else:
        pid = tl.program_id(0)
        if INDEX_64:
            pid = pid.to(tl.int64)
        if pid < r_programs:
            lo = pid * elems
            r_d, r_s = _real_sums(r_ptr, lo, tl.minimum(lo + elems, nr), label, acc_ty, KIND,
                                  BLOCK)
            tl.store(part_ptr + pid, r_d)
            tl.store(part_ptr + stride + pid, r_s)
        else:
            k = pid - r_programs
            lo = k * elems
            f_d, f_g, f_s = _fake_sums(f_ptr, lo, tl.minimum(lo + elems, nf), acc_ty, KIND,
                                       BLOCK)
            tl.store(part_ptr + 2 * stride + k, f_d)
            tl.store(part_ptr + 3 * stride + k, f_g)
            tl.store(part_ptr + 4 * stride + k, f_s)


@triton.jit
def _sum_row(ptr, n, BLOCK: tl.constexpr):
    """Sum of ptr[0:n] (fp64) in a fixed order."""
    acc = tl.zeros([BLOCK], tl.float64)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(ptr + offs, mask=offs < n, other=0.0)
    return tl.sum(acc, 0)


@triton.jit
def _finalize_kernel(part_ptr, d_ptr, g_ptr, dr_ptr, df_ptr, nr, nf, r_programs, f_programs,
                     stride, MEAN: tl.constexpr, BLOCK: tl.constexpr):
    """One program: adds _forward_kernel's per-program sums and writes the outputs."""
    r_d = _sum_row(part_ptr, r_programs, BLOCK)
    r_s = _sum_row(part_ptr + stride, r_programs, BLOCK)
    f_d = _sum_row(part_ptr + 2 * stride, f_programs, BLOCK)
    f_g = _sum_row(part_ptr + 3 * stride, f_programs, BLOCK)
    f_s = _sum_row(part_ptr + 4 * stride, f_programs, BLOCK)
    _store_results(d_ptr, g_ptr, dr_ptr, df_ptr, r_d, r_s, f_d, f_g, f_s, nr, nf, MEAN)


@triton.jit
def _pair_forward_kernel(r_ptr, f_ptr, d_ptr, g_ptr, dr_ptr, df_ptr, part_ptr, n, elems, stride,
                         MEAN: tl.constexpr, SINGLE: tl.constexpr, INDEX_64: tl.constexpr,
                         BLOCK: tl.constexpr):
    """rpgan. SINGLE: one program sums all n pairs and writes the outputs (part_ptr is
    None). Otherwise program p sums the pairs [p * elems, (p + 1) * elems) into
    part[0:4, p] (part is (4, stride) fp64), for _pair_finalize_kernel."""
    acc_ty: tl.constexpr = d_ptr.dtype.element_ty
    if SINGLE:
        p_d, p_g, p_r, p_f = _pair_sums(r_ptr, f_ptr, 0, n, acc_ty, BLOCK)
        _store_pair_results(d_ptr, g_ptr, dr_ptr, df_ptr, p_d, p_g, p_r, p_f, n, MEAN)
    else:
        pid = tl.program_id(0)
        if INDEX_64:
            pid = pid.to(tl.int64)
        lo = pid * elems
        p_d, p_g, p_r, p_f = _pair_sums(r_ptr, f_ptr, lo, tl.minimum(lo + elems, n), acc_ty,
                                        BLOCK)
        tl.store(part_ptr + pid, p_d)
        tl.store(part_ptr + stride + pid, p_g)
        tl.store(part_ptr + 2 * stride + pid, p_r)
        tl.store(part_ptr + 3 * stride + pid, p_f)


@triton.jit
def _pair_finalize_kernel(part_ptr, d_ptr, g_ptr, dr_ptr, df_ptr, n, programs, stride,
                          MEAN: tl.constexpr, BLOCK: tl.constexpr):
    """One program: adds _pair_forward_kernel's per-program sums, writes the outputs."""
    p_d = _sum_row(part_ptr, programs, BLOCK)
    p_g = _sum_row(part_ptr + stride, programs, BLOCK)
    p_r = _sum_row(part_ptr + 2 * stride, programs, BLOCK)
    p_f = _sum_row(part_ptr + 3 * stride, programs, BLOCK)
    _store_pair_results(d_ptr, g_ptr, dr_ptr, df_ptr, p_d, p_g, p_r, p_f, n, MEAN)


@triton.jit
def _pair_backward_kernel(r_ptr, f_ptr, gr_ptr, gf_ptr, gd_ptr, gg_ptr, n,
                          WANT_REAL: tl.constexpr, WANT_FAKE: tl.constexpr,
                          MEAN: tl.constexpr, INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """rpgan, program p on the pairs of tile p: grad_real = c * (gg * t - gd * s) and
    grad_fake = -grad_real (c = 1/n for "mean", 1 for "sum"), each stored only if asked
    for."""
    acc_ty: tl.constexpr = gd_ptr.dtype.element_ty
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    gd = tl.load(gd_ptr)
    gg = tl.load(gg_ptr)
    if MEAN:
        gd = gd / n
        gg = gg / n
    s, t = _pair_grads(r, f)
    grad = gg * t - gd * s
    if WANT_REAL:
        tl.store(gr_ptr + offs, grad.to(gr_ptr.dtype.element_ty), mask=mask)
    if WANT_FAKE:
        tl.store(gf_ptr + offs, (-grad).to(gf_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(r_ptr, f_ptr, gr_ptr, gf_ptr, gd_ptr, gg_ptr, nr, nf, label_hi,
                     label_lo, r_programs, KIND: tl.constexpr, MEAN: tl.constexpr,
                     INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """Program p < r_programs: grad_real = gd * s_r * dD/dr on tile p of the real logits;
    the others: grad_fake = s_f * (gd * dD/df + gg * dG/df) on tile p - r_programs of the
    fake ones (s = 1/N for "mean", 1 for "sum"; gd, gg in the accumulation type)."""
    acc_ty: tl.constexpr = gd_ptr.dtype.element_ty
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    gd = tl.load(gd_ptr)
    if pid < r_programs:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < nr
        r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        if MEAN:
            gd = gd / nr
        grad = gd * _real_grad(r, f64(label_hi, label_lo, acc_ty), KIND)
        tl.store(gr_ptr + offs, grad.to(gr_ptr.dtype.element_ty), mask=mask)
    else:
        offs = (pid - r_programs) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < nf
        f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        gg = tl.load(gg_ptr)
        if MEAN:
            gd = gd / nf
            gg = gg / nf
        dd, dg = _fake_grads(f, KIND)
        grad = gd * dd + gg * dg
        tl.store(gf_ptr + offs, grad.to(gf_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Host side.

def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(-1)


def _meta(kind: str, reduction: str, n: int) -> dict:
    return {"KIND": KIND_IDS[kind], "MEAN": reduction == "mean",
            "INDEX_64": n >= INDEX64_MIN_NUMEL, "BLOCK": BLOCK}


def forward(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str, reduction: str,
            real_label: float):
    """(d_loss, g_loss, d_real, d_fake) as fastgan::gan_loss_forward: 0-dim, fp32 (fp64
    for fp64 input)."""
    r, f = _flat(real_logits), _flat(fake_logits)
    nr, nf = r.numel(), f.numel()
    acc = acc_dtype(r)
    outs = [r.new_empty((), dtype=acc) for _ in range(4)]
    if kind in PAIRED_KINDS:
        return _pair_forward(r, f, outs, reduction)
    label = split_f64(real_label)
    meta = _meta(kind, reduction, max(nr, nf))
    if nr + nf <= SINGLE_PROGRAM_MAX_NUMEL:
        wrap_triton(_forward_kernel)[(1,)](r, f, *outs, None, nr, nf, *label, 1, 1, 1,
                                           SINGLE=True, num_warps=NUM_WARPS, **meta)
        return tuple(outs)
    elems = max(MIN_ELEMS_PER_PROGRAM, triton.cdiv(max(nr, nf), MAX_PROGRAMS_PER_INPUT))
    elems = triton.cdiv(elems, BLOCK) * BLOCK
    r_programs, f_programs = triton.cdiv(nr, elems), triton.cdiv(nf, elems)
    stride = max(r_programs, f_programs)
    part = r.new_empty((5, stride), dtype=torch.float64)
    wrap_triton(_forward_kernel)[(r_programs + f_programs,)](
        r, f, *outs, part, nr, nf, *label, r_programs, elems, stride, SINGLE=False,
        num_warps=NUM_WARPS, **meta)
    wrap_triton(_finalize_kernel)[(1,)](part, *outs, nr, nf, r_programs, f_programs, stride,
                                        MEAN=meta["MEAN"], BLOCK=FINALIZE_BLOCK,
                                        num_warps=NUM_WARPS)
    return tuple(outs)


def _pair_forward(r: torch.Tensor, f: torch.Tensor, outs: list, reduction: str):
    """forward() for the paired kind: r and f flat, of the same length n (checked by
    the op); the same one-program / partials split as the other kinds, by 2n logits."""
    n = r.numel()
    meta = {"MEAN": reduction == "mean", "INDEX_64": n >= INDEX64_MIN_NUMEL, "BLOCK": BLOCK}
    if 2 * n <= SINGLE_PROGRAM_MAX_NUMEL:
        wrap_triton(_pair_forward_kernel)[(1,)](r, f, *outs, None, n, 1, 1, SINGLE=True,
                                                num_warps=NUM_WARPS, **meta)
        return tuple(outs)
    elems = max(MIN_ELEMS_PER_PROGRAM, triton.cdiv(n, MAX_PROGRAMS_PER_INPUT))
    elems = triton.cdiv(elems, BLOCK) * BLOCK
    programs = triton.cdiv(n, elems)
    part = r.new_empty((4, programs), dtype=torch.float64)
    wrap_triton(_pair_forward_kernel)[(programs,)](r, f, *outs, part, n, elems, programs,
                                                   SINGLE=False, num_warps=NUM_WARPS, **meta)
    wrap_triton(_pair_finalize_kernel)[(1,)](part, *outs, n, programs, programs,
                                             MEAN=meta["MEAN"], BLOCK=FINALIZE_BLOCK,
                                             num_warps=NUM_WARPS)
    return tuple(outs)


def backward(grad_d_loss: torch.Tensor, grad_g_loss: torch.Tensor, real_logits: torch.Tensor,
             fake_logits: torch.Tensor, kind: str, reduction: str, real_label: float,
             output_mask):
    """(grad_real, grad_fake) as fastgan::gan_loss_backward: in the inputs' shapes and
    dtype (contiguous); an output masked off is an empty (0,) tensor."""
    r, f = _flat(real_logits), _flat(fake_logits)
    nr, nf = r.numel(), f.numel()
    want_r, want_f = bool(output_mask[0]), bool(output_mask[1])
    gr = r.new_empty(real_logits.shape if want_r else (0,))
    gf = f.new_empty(fake_logits.shape if want_f else (0,))
    if want_r or want_f:
        acc = acc_dtype(r)
        gd = grad_d_loss.to(acc).reshape(())  # no copy in the usual case (0-dim, acc dtype)
        gg = grad_g_loss.to(acc).reshape(())
        if kind in PAIRED_KINDS:  # nr == nf; one program per tile of pairs
            wrap_triton(_pair_backward_kernel)[(triton.cdiv(nr, BLOCK),)](
                r, f, gr, gf, gd, gg, nr, WANT_REAL=want_r, WANT_FAKE=want_f,
                MEAN=reduction == "mean", INDEX_64=nr >= INDEX64_MIN_NUMEL, BLOCK=BLOCK,
                num_warps=NUM_WARPS)
            return gr, gf
        r_programs = triton.cdiv(nr, BLOCK) if want_r else 0
        f_programs = triton.cdiv(nf, BLOCK) if want_f else 0
        # An output not asked for is never written; its pointer is that of its empty (0,)
        # tensor (possibly null, which Triton accepts). Never the other output's: under
        # torch.compile each pointer argument is a tensor written back after the kernel.
        wrap_triton(_backward_kernel)[(r_programs + f_programs,)](
            r, f, gr, gf, gd, gg, nr, nf,
            *split_f64(real_label), r_programs, num_warps=NUM_WARPS,
            **_meta(kind, reduction, max(nr, nf)))
    return gr, gf


# Every kernel of this file, for the ahead-of-time compile check (fastgan.kernels.aot).
KERNELS = (_forward_kernel, _finalize_kernel, _backward_kernel, _pair_forward_kernel,
           _pair_finalize_kernel, _pair_backward_kernel)


def aot_cases(quick: bool = False) -> list:
    """Representative calls of the launchers (on meta tensors) for fastgan.kernels.aot:
    every kind, mean and sum, a GAN batch (one program) and a large input (partials +
    finalize), fp32 and bf16 (fp16 compiles like bf16), fp64 once per path; forward and
    backward (both gradients, and the fake one alone). `quick` keeps one kind per path."""
    small, large = (64, 64), (100_000, 70_001)
    combos = [(k, red, sizes, dt) for k in KIND_IDS for red in ("mean", "sum")
              for sizes in (small, large) for dt in (torch.float32, torch.bfloat16)]
    if quick:
        combos = [("ns", "mean", small, torch.float32), ("hinge", "sum", large, torch.bfloat16),
                  ("rpgan", "mean", large, torch.float32)]
    combos += [("ns", "mean", small, torch.float64), ("lsgan", "sum", large, torch.float64),
               ("rpgan", "sum", small, torch.float64)]

    def case(kind, reduction, sizes, dtype):
        if kind in PAIRED_KINDS:  # paired: as many fake logits as real ones
            sizes = (sizes[0], sizes[0])

        def run():
            r = torch.empty(sizes[0], dtype=dtype, device="meta")
            f = torch.empty(sizes[1], dtype=dtype, device="meta")
            label = 0.9 if kind in ("minimax", "ns") else 1.0
            d_loss, g_loss, _, _ = forward(r, f, kind, reduction, label)
            backward(d_loss, g_loss, r, f, kind, reduction, label, [True, True])
            backward(d_loss, g_loss, r, f, kind, reduction, label, [False, True])
        return run

    return [case(*c) for c in combos]
