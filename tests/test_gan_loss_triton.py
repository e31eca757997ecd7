"""The `triton` backend of gan_loss (kernels/gan_loss.py, fastgan/ops/gan_loss_triton.py).

Interpreter tests: with TRITON_INTERPRET=1 and the backend forced, the Triton kernels run
on CPU tensors. The variable has to be set before triton is imported and must not leak
into the rest of the suite, so all interpreter cases run in one subprocess (this file,
`--worker`), and the tests here check its per-case results (as tests/test_bn_act_triton.py
does). The same checks run in-process on CUDA tensors in the `gpu` tests, which skip
without a device.

The oracle is reference_forward (fastgan/ops/gan_loss.py) in fp64 on the same (rounded)
inputs, with its autograd for the gradients. Tolerances (docs/ARCHITECTURE.md, "Numerics"): fp64
1e-10, fp32 1e-5, relative to max(1, |reference|); the fp32 losses of bf16/fp16 inputs
1e-5 too; bf16/fp16 gradients one ulp of their dtype at the gradient's scale (each is
one rounding of an fp32 value).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch
from _testutil import interpreter_tests, interpreter_worker, report_worker_results

import fastgan
from fastgan.functional import gan_loss
from fastgan.ops import gan_loss as G

KINDS = G.KINDS
REDUCTIONS = G.REDUCTIONS
DTYPES = ("float32", "float64", "bfloat16", "float16")
GAN_BATCH = (37, 5)  # odd, and the two batches differ
LARGE = (5000, 4099)  # multi-program path (with small_tiles() in the interpreter)


# ---------------------------------------------------------------------------
# Checks, shared by the interpreter worker and the GPU tests. Each returns a list of
# failure messages (empty when it passes).

@contextlib.contextmanager
def small_tiles(index64: bool = False):
    """Lowers the kernels' tile and threshold sizes so that interpreter-sized inputs take
    the partials + finalize path with several programs and several finalize steps (and,
    with index64, the 64-bit offset path)."""
    from fastgan.kernels import gan_loss as K
    names = ("BLOCK", "SINGLE_PROGRAM_MAX_NUMEL", "MIN_ELEMS_PER_PROGRAM", "FINALIZE_BLOCK",
             "INDEX64_MIN_NUMEL")
    saved = {n: getattr(K, n) for n in names}
    K.BLOCK, K.SINGLE_PROGRAM_MAX_NUMEL, K.MIN_ELEMS_PER_PROGRAM, K.FINALIZE_BLOCK = 256, 0, 1024, 2
    if index64:
        K.INDEX64_MIN_NUMEL = 0
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(K, n, v)


def _logits(n: int, dtype: torch.dtype, device: str, seed: int, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def _tol(dtype: torch.dtype, grad: bool) -> float:
    if dtype == torch.float64:
        return 1e-10
    if grad and dtype != torch.float32:
        return torch.finfo(dtype).eps
    return 1e-5


def _err(name: str, ours: torch.Tensor | None, ref: torch.Tensor | None, tol: float,
         dtype: torch.dtype | None = None) -> list[str]:
    if ours is None or ref is None:
        return [] if ours is None and ref is None else [f"{name}: got {ours}, expected {ref}"]
    if dtype is not None and (ours.dtype != dtype or ours.shape != ref.shape):
        return [(f"{name}: got {tuple(ours.shape)} {ours.dtype}, expected "
                 f"{tuple(ref.shape)} {dtype}")]
    o, r = ours.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(o).all():
        return [f"{name}: not finite: {o}"]
    scale = max(1.0, r.abs().max().item())
    err = (o - r).abs().max().item()
    return [] if err <= tol * scale else [f"{name}: max error {err:.3g} > {tol:.1g} * {scale:.3g}"]


def _run(real, fake, kind, reduction, real_label, backend, combine):
    """Losses, and the gradients of combine(d_loss, g_loss) for the inputs that need one."""
    with fastgan.use_backend(backend):
        out = gan_loss(real, fake, kind, reduction, real_label=real_label)
    ins = [t for t in (real, fake) if t.requires_grad]
    loss = combine(out.d_loss, out.g_loss)
    grads = dict(zip((id(t) for t in ins), torch.autograd.grad(loss, ins, allow_unused=True)))
    return out, grads.get(id(real)), grads.get(id(fake))


COMBOS = {"d+2g": lambda d, g: d + 2.0 * g, "d": lambda d, g: d, "g": lambda d, g: g}


def check_values(kind: str, reduction: str, dtype: str, sizes: tuple[int, int], device: str,
                 real_label: float = 1.0, combos: tuple[str, ...] = tuple(COMBOS)) -> list[str]:
    """Outputs and gradients of d_loss + 2 g_loss (and of each loss alone) against the fp64
    reference on the same inputs."""
    if kind in G.PAIRED_KINDS:  # r[i] pairs with f[i]
        sizes = (sizes[0], sizes[0])
    dt = getattr(torch, dtype)
    r0 = _logits(sizes[0], dt, device, seed=1)
    f0 = _logits(sizes[1], dt, device, seed=2)
    fails = []
    for name in combos:
        combine = COMBOS[name]
        r, f = r0.clone().requires_grad_(), f0.clone().requires_grad_()
        out, gr, gf = _run(r, f, kind, reduction, real_label, "triton", combine)
        rr, fr = r0.double().requires_grad_(), f0.double().requires_grad_()
        ref = G.reference_forward(rr, fr, kind, reduction, real_label)
        ref_gr, ref_gf = torch.autograd.grad(combine(ref[0], ref[1]), (rr, fr),
                                             allow_unused=True)
        if name == "g" and kind not in G.PAIRED_KINDS:
            if gr is not None:
                fails.append("g_loss alone gave the real logits a gradient")
            ref_gr = None
        acc = torch.float64 if dt == torch.float64 else torch.float32
        if name == "d+2g":
            for i, field in enumerate(G_FIELDS):
                fails += _err(field, out[i], ref[i].to(acc), _tol(dt, False), acc)
            if out.d_real.requires_grad or out.d_fake.requires_grad:
                fails.append("d_real / d_fake require grad")
        fails += _err(f"{name}: grad real", gr, ref_gr, _tol(dt, True), dt)
        fails += _err(f"{name}: grad fake", gf, ref_gf, _tol(dt, True), dt)
    return [f"{kind} {reduction} {dtype} {sizes} label={real_label}: {m}" for m in fails]


G_FIELDS = ("d_loss", "g_loss", "d_real", "d_fake")


def check_extremes(device: str) -> list[str]:
    """Logits of +-1e4 give finite losses and gradients in every dtype (stable forms),
    close to the fp64 reference on the same rounded values."""
    fails = []
    for kind in KINDS:
        for dtype in DTYPES:
            dt = getattr(torch, dtype)
            x = torch.tensor([1e4, -1e4, 0.0, 30.0, -30.0], dtype=dt, device=device)
            fails += [f"extreme {m}" for m in
                      _check_pair(x, x.flip(0), kind, "mean", 1.0, 1e-6)]
    return fails


def _check_pair(real, fake, kind, reduction, real_label, tol) -> list[str]:
    r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
    out, gr, gf = _run(r, f, kind, reduction, real_label, "triton", lambda d, g: d + g)
    rr, fr = real.double().requires_grad_(), fake.double().requires_grad_()
    ref = G.reference_forward(rr, fr, kind, reduction, real_label)
    ref_gr, ref_gf = torch.autograd.grad(ref[0] + ref[1], (rr, fr))
    fails = []
    for i, field in enumerate(G_FIELDS):
        fails += _err(field, out[i], ref[i], tol)
    dt = real.dtype
    fails += _err("grad real", gr, ref_gr, max(tol, _tol(dt, True)), dt)
    fails += _err("grad fake", gf, ref_gf, max(tol, _tol(dt, True)), dt)
    return [f"{kind} {dt}: {m}" for m in fails]


def check_label_smoothing(device: str) -> list[str]:
    fails = []
    for kind in G.LOGISTIC_KINDS:
        for dtype in ("float32", "float64"):
            for label in (0.9, 0.0):
                fails += check_values(kind, "mean", dtype, GAN_BATCH, device, label)
    return fails


def check_flows(device: str) -> list[str]:
    """Which inputs get gradients and which outputs require grad, as eager and the C++ op:
    detached fake (the discriminator step), frozen real (the generator step), d_loss and
    g_loss backpropagated one after the other, nothing requiring grad."""
    fails = []
    real0, fake0 = _logits(9, torch.float32, device, 3), _logits(7, torch.float32, device, 4)
    with fastgan.use_backend("triton"):
        real, fake = real0.clone().requires_grad_(), fake0.clone().requires_grad_()
        out = gan_loss(real, fake.detach())
        if out.g_loss.requires_grad:
            fails.append("detached fake: g_loss requires grad (eager's would not)")
        out.d_loss.backward()
        if fake.grad is not None or real.grad is None:
            fails.append("detached fake: wrong inputs got gradients")
        real.grad = None
        gan_loss(real.detach(), fake).g_loss.backward()
        gan_loss(real, fake).g_loss.backward()
        if real.grad is not None:
            fails.append("g_loss gave the real logits a gradient")
        real.grad = fake.grad = None
        out = gan_loss(real, fake)
        out.d_loss.backward()
        out.g_loss.backward()
        rr = real0.double().requires_grad_()
        fr = fake0.double().requires_grad_()
        ref = G.reference_forward(rr, fr, "ns", "mean", 1.0)
        ref_gr, ref_gf = torch.autograd.grad(ref[0] + ref[1], (rr, fr))
        fails += _err("separate backward: grad real", real.grad, ref_gr, 1e-5)
        fails += _err("separate backward: grad fake", fake.grad, ref_gf, 1e-5)
        out = gan_loss(real.detach(), fake.detach())
        if any(t.requires_grad for t in out):
            fails.append("no input requires grad, but an output does")
        # rpgan: g_loss depends on the real logits too
        fake2 = _logits(9, torch.float32, device, 4).requires_grad_()
        real.grad = None
        out = gan_loss(real, fake2.detach(), "rpgan")
        if not out.g_loss.requires_grad:
            fails.append("rpgan, detached fake: g_loss does not require grad")
        out.g_loss.backward()
        out = gan_loss(real.detach(), fake2, "rpgan")
        out.d_loss.backward()
        rr = real0.double().requires_grad_()
        fr = fake2.detach().double().requires_grad_()
        ref = G.reference_forward(rr, fr, "rpgan", "mean", 1.0)
        ref_gr = torch.autograd.grad(ref[1], rr)[0]
        ref_gf = torch.autograd.grad(ref[0], fr)[0]
        fails += _err("rpgan g_loss alone: grad real", real.grad, ref_gr, 1e-5)
        fails += _err("rpgan d_loss alone: grad fake", fake2.grad, ref_gf, 1e-5)
        r = real * 1.0
        out = gan_loss(r, fake)
        with torch.no_grad():
            r.add_(1.0)
        try:
            out.d_loss.backward()
            fails.append("an in-place change of the saved logits went unnoticed")
        except RuntimeError as e:
            if "modified by an inplace operation" not in str(e):
                fails.append(f"in-place change: unclear error {e}")
    return fails


def check_layout(device: str) -> list[str]:
    """Any shape; a non-contiguous input; gradients in the inputs' shapes."""
    real0 = _logits(24, torch.float64, device, 5).reshape(2, 3, 4)
    fake0 = _logits(24, torch.float64, device, 6).reshape(6, 4).t()  # non-contiguous (4, 6)
    r, f = real0.clone().requires_grad_(), fake0.clone().requires_grad_()
    out, gr, gf = _run(r, f, "hinge", "sum", 1.0, "triton", lambda d, g: d + g)
    rr, fr = real0.clone().requires_grad_(), fake0.clone().requires_grad_()
    ref = G.reference_forward(rr, fr, "hinge", "sum", 1.0)
    ref_gr, ref_gf = torch.autograd.grad(ref[0] + ref[1], (rr, fr))
    fails = _err("d_loss", out.d_loss, ref[0], 1e-10)
    fails += _err("grad real", gr, ref_gr, 1e-10, torch.float64)
    fails += _err("grad fake", gf, ref_gf, 1e-10, torch.float64)
    # rpgan pairs them after flattening: (2, 3, 4) with the non-contiguous (4, 6)
    r, f = real0.clone().requires_grad_(), fake0.clone().requires_grad_()
    out, gr, gf = _run(r, f, "rpgan", "mean", 1.0, "triton", lambda d, g: d + 2.0 * g)
    rr, fr = real0.clone().requires_grad_(), fake0.clone().requires_grad_()
    ref = G.reference_forward(rr, fr, "rpgan", "mean", 1.0)
    ref_gr, ref_gf = torch.autograd.grad(ref[0] + 2.0 * ref[1], (rr, fr))
    fails += _err("rpgan g_loss", out.g_loss, ref[1], 1e-10)
    fails += _err("rpgan grad real", gr, ref_gr, 1e-10, torch.float64)
    fails += _err("rpgan grad fake", gf, ref_gf, 1e-10, torch.float64)
    return fails


def check_multi_program(device: str) -> list[str]:
    """The partials + finalize path against the one-program path and the reference, its
    results bitwise reproducible; and the 64-bit offset paths."""
    fails = []
    r = _logits(LARGE[0], torch.float32, device, 7)
    f = _logits(LARGE[1], torch.float32, device, 8)
    with fastgan.use_backend("triton"):
        one = gan_loss(r, f, "ns", "mean")
        with small_tiles():
            many = [gan_loss(r, f, "ns", "mean") for _ in range(2)]
        with small_tiles(index64=True):
            wide = gan_loss(r, f, "ns", "mean")
        f2 = _logits(LARGE[0], torch.float32, device, 8)  # rpgan pairs them
        pone = gan_loss(r, f2, "rpgan", "mean")
        with small_tiles():
            pmany = [gan_loss(r, f2, "rpgan", "mean") for _ in range(2)]
        with small_tiles(index64=True):
            pwide = gan_loss(r, f2, "rpgan", "mean")
    for tag, (o, m, w) in {"": (one, many, wide), "rpgan ": (pone, pmany, pwide)}.items():
        for i, field in enumerate(G_FIELDS):
            fails += _err(f"{tag}partials vs one program: {field}", m[0][i], o[i], 1e-6)
            fails += _err(f"{tag}64-bit offsets: {field}", w[i], m[0][i], 0.0)
            if not torch.equal(m[0][i], m[1][i]):
                fails.append(f"{tag}{field}: two runs differ")
    with small_tiles(index64=True):
        fails += check_values("lsgan", "sum", "float32", GAN_BATCH, device)
        fails += check_values("rpgan", "sum", "float32", (333, 333), device, 1.0, ("d+2g",))
    return fails


def check_gradcheck(device: str) -> list[str]:
    """fp64 gradcheck of (d_loss, g_loss) for every kind and reduction (fast mode in the
    interpreter), with label smoothing for the logistic kinds."""
    fails = []
    for kind in KINDS:
        for reduction in REDUCTIONS:
            real = _logits(7, torch.float64, device, 9, 1.5).requires_grad_()
            nf = 7 if kind in G.PAIRED_KINDS else 4
            fake = _logits(nf, torch.float64, device, 10, 1.5).requires_grad_()
            label = 0.9 if kind in G.LOGISTIC_KINDS else 1.0

            def fn(r, f, kind=kind, reduction=reduction, label=label):
                with fastgan.use_backend("triton"):
                    out = gan_loss(r, f, kind, reduction, real_label=label)
                return out.d_loss, out.g_loss

            try:
                torch.autograd.gradcheck(fn, (real, fake), eps=1e-6, atol=1e-8,
                                         fast_mode=device == "cpu")
            except Exception as e:  # GradcheckError: report which combination
                fails.append(f"gradcheck {kind} {reduction}: {e}"[:500])
    return fails


def check_double_backward(device: str) -> list[str]:
    """create_graph=True gives the first-order gradients; differentiating them raises."""
    real = _logits(5, torch.float64, device, 11).requires_grad_()
    fake = _logits(5, torch.float64, device, 12).requires_grad_()
    with fastgan.use_backend("triton"):
        out = gan_loss(real, fake)
    (gr,) = torch.autograd.grad(out.d_loss, real, create_graph=True)
    (plain,) = torch.autograd.grad(out.d_loss, real)
    fails = _err("create_graph grad", gr, plain, 0.0)
    try:
        gr.sum().backward()
        fails.append("double backward did not raise")
    except RuntimeError as e:
        if "not implemented" not in str(e):
            fails.append(f"double backward raised an unclear error: {e}")
    return fails


def check_errors(device: str) -> list[str]:
    """Clear errors from the ops called directly (gan_loss() checks first, the same way)."""
    from fastgan.ops import gan_loss_triton as T
    x = torch.ones(3, device=device)
    one = torch.tensor(1.0, device=device)
    cases = [
        (lambda: T.triton_gan_loss_forward(x, x, "bce", "mean", 1.0), ValueError, "unknown kind"),
        (lambda: T.triton_gan_loss_forward(x, x, "ns", "none", 1.0), ValueError,
         "unknown reduction"),
        (lambda: T.triton_gan_loss_forward(x, x.double(), "ns", "mean", 1.0), TypeError,
         "fake_logits has dtype torch.float64"),
        (lambda: T.triton_gan_loss_forward(x[:0], x, "ns", "mean", 1.0), ValueError,
         r"real_logits is empty"),
        (lambda: T.triton_gan_loss_forward(x.long(), x.long(), "ns", "mean", 1.0), TypeError,
         "floating-point"),
        (lambda: T.triton_gan_loss_forward(x, x, "hinge", "mean", 0.9), ValueError,
         "real_label"),
        (lambda: T.triton_gan_loss_backward(x[:2], one, x, x, "ns", "mean", 1.0, [True, True]),
         ValueError, r"grad_d_loss must be one floating-point value"),
        (lambda: T.triton_gan_loss_forward(x, x[:2], "rpgan", "mean", 1.0), ValueError,
         r"kind='rpgan' pairs real and fake logits.*shape \(3,\) and fake_logits of shape "
         r"\(2,\)"),
        (lambda: T.triton_gan_loss_backward(one, one, x, x[:2], "rpgan", "sum", 1.0,
                                            [True, True]), ValueError, "pairs real and fake"),
        (lambda: T.triton_gan_loss_forward(x, x, "rpgan", "mean", 0.9), ValueError,
         "real_label"),
    ]
    fails = []
    for i, (fn, exc, match) in enumerate(cases):
        try:
            fn()
            fails.append(f"case {i}: no error (expected {exc.__name__} matching {match!r})")
        except exc as e:
            if not re.search(match, str(e)):
                fails.append(f"case {i}: {exc.__name__} {e!r} does not match {match!r}")
        except Exception as e:
            fails.append(f"case {i}: {type(e).__name__} {e} (expected {exc.__name__})")
    return fails


def check_backward_masks(device: str) -> list[str]:
    """The backward op on its own: each output_mask, gradients read from the device."""
    from fastgan.ops import gan_loss_triton as T
    r = _logits(37, torch.float32, device, 13)
    f = _logits(5, torch.float32, device, 14)
    gd = torch.tensor(0.7, device=device)
    gg = torch.tensor(-1.3, device=device)
    rr, fr = r.double().requires_grad_(), f.double().requires_grad_()
    ref = G.reference_forward(rr, fr, "minimax", "sum", 0.8)
    ref_gr, ref_gf = torch.autograd.grad(0.7 * ref[0] - 1.3 * ref[1], (rr, fr))
    f2 = _logits(37, torch.float32, device, 14)  # rpgan pairs them
    fr2 = f2.double().requires_grad_()
    pref = G.reference_forward(rr, fr2, "rpgan", "mean", 1.0)
    pref_gr, pref_gf = torch.autograd.grad(0.7 * pref[0] - 1.3 * pref[1], (rr, fr2))
    fails = []
    for kind, fake, label, want_r, want_f in (("minimax", f, 0.8, ref_gr, ref_gf),
                                               ("rpgan", f2, 1.0, pref_gr, pref_gf)):
        red = "sum" if kind == "minimax" else "mean"
        for mask in ([True, True], [True, False], [False, True], [False, False]):
            gr, gf = T.triton_gan_loss_backward(gd, gg, r, fake, kind, red, label, mask)
            for name, got, want, m in (("real", gr, want_r, mask[0]),
                                       ("fake", gf, want_f, mask[1])):
                if not m:
                    if got.shape != (0,):
                        fails.append(f"{kind} mask {mask}: grad {name} should be empty, "
                                     f"got {got.shape}")
                else:
                    fails += [f"{kind} mask {mask}: {e}" for e in _err(name, got, want, 1e-5)]
    return fails


def check_opcheck(device: str, utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor", "test_aot_dispatch_dynamic")):
    """torch.library.opcheck of both triton ops."""
    r = _logits(13, torch.float32, device, 15).reshape(13, 1)
    f = _logits(6, torch.float32, device, 16).reshape(2, 3)
    g = torch.tensor(0.5, device=device)
    p = _logits(13, torch.float32, device, 19)  # rpgan's fake logits, paired with r
    calls = [(torch.ops.fastgan.triton_gan_loss_forward.default,
              (r.clone().requires_grad_(), f.clone().requires_grad_(), "ns", "mean", 0.9)),
             (torch.ops.fastgan.triton_gan_loss_forward.default,
              (r.clone().requires_grad_(), f, "hinge", "sum", 1.0)),
             (torch.ops.fastgan.triton_gan_loss_forward.default,
              (r.clone().requires_grad_(), p, "rpgan", "mean", 1.0))]
    for mask in ([True, True], [False, True]):
        calls.append((torch.ops.fastgan.triton_gan_loss_backward.default,
                      (g, g, r, f, "lsgan", "mean", 1.0, mask)))
        calls.append((torch.ops.fastgan.triton_gan_loss_backward.default,
                      (g, g, r, p, "rpgan", "sum", 1.0, mask)))
    fails = []
    for op, args in calls:
        try:
            torch.library.opcheck(op, args, test_utils=list(utils))
        except Exception as e:
            fails.append(f"opcheck {op}: {type(e).__name__}: {e}"[:800])
    return fails


def _value_cases() -> dict[str, tuple]:
    cases = {}
    for kind in KINDS:
        # a paired kind gets as many fake logits as real ones (check_values does the same)
        gan = (GAN_BATCH[0],) * 2 if kind in G.PAIRED_KINDS else GAN_BATCH
        for reduction in REDUCTIONS:
            for dtype in DTYPES:
                cases[f"{kind}-{reduction}-{dtype}-{gan[0]}x{gan[1]}"] = (kind, reduction,
                                                                          dtype, gan)
            for dtype in ("float32", "float64"):
                cases[f"{kind}-{reduction}-{dtype}-1x1"] = (kind, reduction, dtype, (1, 1))
        for dtype in ("float32", "bfloat16", "float64"):
            cases[f"{kind}-{dtype}-large"] = (kind, "sum" if dtype == "float32" else "mean",
                                              dtype, LARGE)
    for reduction in REDUCTIONS:  # rpgan: more odd sizes (pairs, so N x N)
        for dtype in ("float32", "float16"):
            cases[f"rpgan-{reduction}-{dtype}-7x7"] = ("rpgan", reduction, dtype, (7, 7))
        cases[f"rpgan-{reduction}-bfloat16-333x333"] = ("rpgan", reduction, "bfloat16",
                                                        (333, 333))
    return cases


VALUE_CASES = _value_cases()
EXTRA_CHECKS = {"extremes": check_extremes, "label_smoothing": check_label_smoothing,
                "flows": check_flows, "layout": check_layout,
                "multi_program": check_multi_program, "gradcheck": check_gradcheck,
                "double_backward": check_double_backward, "errors": check_errors,
                "backward_masks": check_backward_masks}


# ---------------------------------------------------------------------------
# Interpreter worker: runs every check under TRITON_INTERPRET=1, prints JSON results.

INTERP_OPCHECK = ("test_schema", "test_autograd_registration")  # fake tensors need a GPU


def _run_worker() -> None:
    results, run = interpreter_worker()
    run("backend", lambda: [] if G._backend.select(
        "gan_loss", torch.device("cpu"), G.KERNELS) == "triton" else ["triton not selected"])
    for name, (kind, reduction, dtype, sizes) in VALUE_CASES.items():
        if sizes == LARGE:  # the multi-program path; the others are the same there
            with small_tiles():
                run(name, check_values, kind, reduction, dtype, sizes, "cpu", 1.0, ("d+2g",))
        else:
            run(name, check_values, kind, reduction, dtype, sizes, "cpu")
    for name, fn in EXTRA_CHECKS.items():
        run(name, fn, "cpu")
    run("opcheck", check_opcheck, "cpu", INTERP_OPCHECK)
    report_worker_results(results)


INTERP_IDS = ["backend", *VALUE_CASES, *EXTRA_CHECKS, "opcheck"]


interp_results, test_interpreter = interpreter_tests(__file__, INTERP_IDS)


# ---------------------------------------------------------------------------
# Main process (no interpreter): registration, laziness, launch counts, fake tensors.

def test_triton_listed_and_lazy():
    pytest.importorskip("triton")
    assert "triton" in G.KERNELS
    code = ("import sys, fastgan; "
            "assert 'fastgan.ops.gan_loss_triton' not in sys.modules; "
            "assert 'fastgan.kernels.gan_loss' not in sys.modules; "
            "assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="records launches of compiled kernels")
@pytest.mark.parametrize("sizes,launches", [((64, 64), 1), ((4096, 4096), 1), ((1, 1), 1),
                                            ((4097, 4096), 2), ((100_000, 70_001), 2)])
def test_launch_count(sizes, launches):
    """GAN batches take one forward launch; larger inputs two (partials, finalize);
    backward is one launch for both gradients."""
    pytest.importorskip("triton")
    from fastgan.kernels import aot
    from fastgan.kernels import gan_loss as K
    r = torch.empty(sizes[0], device="meta")
    f = torch.empty(sizes[1], device="meta")
    with aot.recording(K) as fwd:
        d, g, _, _ = K.forward(r, f, "ns", "mean", 1.0)
    with aot.recording(K) as bwd:
        K.backward(d, g, r, f, "ns", "mean", 1.0, [True, True])
    assert len(fwd) == launches and len(bwd) == 1


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="records launches of compiled kernels")
@pytest.mark.parametrize("n,launches", [(64, 1), (4096, 1), (4097, 2), (100_000, 2)])
def test_launch_count_rpgan(n, launches):
    """rpgan: the same split by the 2n logits it reads; one backward launch over the pairs,
    also when only one gradient is asked for."""
    pytest.importorskip("triton")
    from fastgan.kernels import aot
    from fastgan.kernels import gan_loss as K
    r, f = torch.empty(n, device="meta"), torch.empty(n, device="meta")
    with aot.recording(K) as fwd:
        d, g, _, _ = K.forward(r, f, "rpgan", "mean", 1.0)
    with aot.recording(K) as bwd:
        K.backward(d, g, r, f, "rpgan", "mean", 1.0, [True, True])
        K.backward(d, g, r, f, "rpgan", "mean", 1.0, [True, False])
    assert len(fwd) == launches and len(bwd) == 2


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="interpreted kernels run eagerly on fake tensors")
def test_fake_tensors_match_the_compiled_op():
    """Each triton_op is its own fake kernel (allocate, record launches): same output
    shapes, dtypes and strides as fastgan::gan_loss_* (their fake kernels). No kernel
    runs, so no GPU is needed."""
    pytest.importorskip("triton")
    if not hasattr(torch.ops.fastgan, "gan_loss_forward"):
        pytest.skip("fastgan._C is not built")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastgan.ops import gan_loss_triton  # noqa: F401  (registers the ops)
    ops = torch.ops.fastgan

    def meta(ts):
        return [(tuple(t.shape), t.dtype, t.stride()) for t in ts]

    with FakeTensorMode():
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for sizes in ((37,), (5, 3)), ((100_000,), (70_001,)):
                r, f = torch.empty(sizes[0], dtype=dtype), torch.empty(sizes[1], dtype=dtype)
                args = (r, f, "ns", "mean", 1.0)
                fwd = ops.triton_gan_loss_forward(*args)
                assert meta(fwd) == meta(ops.gan_loss_forward(*args))
                for mask in ([True, True], [False, True], [True, False]):
                    args = (fwd[0], fwd[1], r, f, "ns", "mean", 1.0, mask)
                    assert meta(ops.triton_gan_loss_backward(*args)) == \
                        meta(ops.gan_loss_backward(*args))
                p = torch.empty(sizes[0], dtype=dtype)  # rpgan: paired with r
                args = (r, p, "rpgan", "sum", 1.0)
                fwd = ops.triton_gan_loss_forward(*args)
                assert meta(fwd) == meta(ops.gan_loss_forward(*args))
                args = (fwd[0], fwd[1], r, p, "rpgan", "sum", 1.0, [True, False])
                assert meta(ops.triton_gan_loss_backward(*args)) == \
                    meta(ops.gan_loss_backward(*args))


# ---------------------------------------------------------------------------
# GPU: the same checks on CUDA tensors with the compiled kernels.

GPU_SIZES = [(1, 1), GAN_BATCH, (4096, 4096), (100_000, 70_001)]


@pytest.fixture
def triton_backend():
    pytest.importorskip("triton")
    with fastgan.use_backend("triton"):
        yield


@pytest.mark.parametrize("sizes", GPU_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_values(kind, reduction, dtype, sizes):
    fails = check_values(kind, reduction, dtype, sizes, "cuda")
    assert not fails, "\n".join(fails)


@pytest.mark.parametrize("name", list(EXTRA_CHECKS))
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_checks(name):
    fails = EXTRA_CHECKS[name]("cuda")
    assert not fails, "\n".join(fails)


@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_opcheck():
    fails = check_opcheck("cuda")
    assert not fails, "\n".join(fails)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_auto_picks_a_gpu_kernel():
    assert G._backend.select("gan_loss", torch.device("cuda"), G.KERNELS) in ("cuda", "triton")


@pytest.mark.parametrize("kind", ["ns", "rpgan"])
@pytest.mark.parametrize("n", [64, 100_000])
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_compile_fullgraph(n, kind):
    torch._dynamo.reset()

    def step(r, f):
        out = gan_loss(r, f, kind)
        return out.d_loss + out.g_loss, out.d_real

    compiled = torch.compile(step, fullgraph=True)
    for size in (n, n + 40):  # a second size exercises recompilation / dynamic shapes
        r0 = _logits(size, torch.float32, "cuda", 17)
        f0 = _logits(size if kind in G.PAIRED_KINDS else size - 3, torch.float32, "cuda", 18)
        ra, fa = r0.clone().requires_grad_(), f0.clone().requires_grad_()
        rb, fb = r0.clone().requires_grad_(), f0.clone().requires_grad_()
        loss, d_real = compiled(ra, fa)
        ref_loss, ref_d_real = step(rb, fb)
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(d_real, ref_d_real)
        loss.backward()
        ref_loss.backward()
        torch.testing.assert_close(ra.grad, rb.grad)
        torch.testing.assert_close(fa.grad, fb.grad)


if __name__ == "__main__" and "--worker" in sys.argv:
    _run_worker()
