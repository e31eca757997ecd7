"""The `triton` backend of bias_act (kernels/bias_act.py, fastgan/ops/bias_act_triton.py).

Interpreter tests: with TRITON_INTERPRET=1 the Triton kernels run on CPU tensors. The
variable has to be set before triton is imported and must not leak into the rest of the
suite, so all interpreter cases run in one subprocess (this file, `--worker`), and the
tests here check its per-case results (as tests/test_gan_loss_triton.py does). The same
checks run in-process on CUDA tensors in the `gpu` tests, which skip without a device.

The ops are called directly (fastgan::triton_bias_act_forward / _backward), with the
arguments the Python front passes: alpha and gain resolved, clamp -1 for none, dim
non-negative. The oracle is the reference (fastgan/ops/bias_act_reference.py) in fp64 on
the same (rounded) inputs, with its autograd for the gradients of first and second order.
Tolerances (docs/ARCHITECTURE.md, "Numerics"), relative to max(1, |reference|): fp64
1e-10, fp32 1e-5, bf16 / fp16 twice the reference's own error in that dtype (at least one
ulp). The interpreter cases are kept small: the whole file runs in well under a minute.
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

from fastgan.ops.bias_act_reference import ACTIVATIONS
from fastgan.ops.bias_act_reference import bias_act as reference

ACTS = list(ACTIVATIONS)
SECOND = [a for a in ACTS if ACTIVATIONS[a].has_2nd_grad]


def _ops():
    from fastgan.ops import bias_act_triton as T
    return T


@contextlib.contextmanager
def small_tiles(index64: bool = False):
    """Lowers the kernels' tile sizes so that interpreter-sized inputs take several
    programs and several tiles per program in both layouts (grad_b from many partials),
    and with index64 the 64-bit offset path."""
    from fastgan.kernels import bias_act as K
    names = ("TILE", "MAX_BLOCK_C", "MAX_ITERS", "INDEX64_MIN_NUMEL")
    saved = {n: getattr(K, n) for n in names}
    K.TILE, K.MAX_BLOCK_C, K.MAX_ITERS = 16, 4, 2
    if index64:
        K.INDEX64_MIN_NUMEL = 0
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(K, n, v)


def _data(shape, dtype, device, seed, scale=2.0):
    """Values away from relu's / lrelu's kink at 0 (finite differences and the reference's
    derivative at 0 are not comparable there), in fp64 then rounded to `dtype`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * scale + 0.05
    x = torch.where(torch.rand(shape, generator=g) < 0.5, -x, x)
    return x.to(dtype).to(device)


def _err(name, ours, ref, tol, dtype=None) -> list[str]:
    if ours is None or ref is None:
        return [] if ours is None and ref is None else [f"{name}: got {ours}, expected {ref}"]
    if ours.shape != ref.shape or (dtype is not None and ours.dtype != dtype):
        return [f"{name}: got {tuple(ours.shape)} {ours.dtype}, expected {tuple(ref.shape)} "
                f"{dtype}"]
    o, r = ours.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(o).all():
        return [f"{name}: not finite"]
    scale = max(1.0, r.abs().max().item())
    err = (o - r).abs().max().item()
    return [] if err <= tol * scale else [f"{name}: max error {err:.3g} > {tol:.3g} * {scale:.3g}"]


def _tol(dtype, eager=None, ref=None) -> float:
    """fp64 1e-10, fp32 1e-5; bf16 / fp16: twice eager's error against the fp64 reference
    (relative to its scale), at least one ulp."""
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-5
    eps = torch.finfo(dtype).eps
    if eager is None:
        return eps
    scale = max(1.0, ref.abs().max().item())
    return max(eps, 2 * (eager.double() - ref.double()).abs().max().item() / scale)


def _gain(act):
    return float(ACTIVATIONS[act].def_gain)


def _alpha(act):
    return float(ACTIVATIONS[act].def_alpha)


def _call(x, b, dim, act, alpha, gain, clamp):
    return _ops().triton_bias_act_forward(x, b, dim, act, alpha, gain, clamp)


def _ref(x, b, dim, act, alpha, gain, clamp):
    return reference(x, b, dim, act, alpha, gain, None if clamp < 0 else clamp)


# ---------------------------------------------------------------------------
# Checks, shared by the interpreter worker and the GPU tests. Each returns a list of
# failure messages (empty when it passes).

def check_values(act: str, dtype: str, shape: tuple, dim: int, layout: str, device: str,
                 alpha: float | None = None, gain: float | None = None,
                 clamp: float = -1.0, second: bool = True, bias: bool = True) -> list[str]:
    """y, then grad_x and grad_b of <y, w> (order 1), then of <grad_x, v> + <grad_b, u>
    (order 2, through create_graph) against the fp64 reference's autograd."""
    dt = getattr(torch, dtype)
    alpha = _alpha(act) if alpha is None else alpha
    gain = _gain(act) if gain is None else gain
    x0 = _data(shape, dt, device, 1)
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":  # neither contiguous nor channels_last: made contiguous
        x0 = x0.transpose(-1, -2).contiguous().transpose(-1, -2)
    b0 = _data((shape[dim],), dt, device, 2, 0.5) if bias else None
    w = _data(shape, torch.float64, device, 3, 1.0)
    v = _data(shape, torch.float64, device, 4, 1.0)
    u = _data((shape[dim],), torch.float64, device, 5, 1.0)
    tag = f"{act} {dtype} {shape} dim={dim} {layout} alpha={alpha} gain={gain} clamp={clamp}"
    fails = []

    x = x0.clone().requires_grad_()
    b = b0.clone().requires_grad_() if bias else None
    y = _call(x, b, dim, act, alpha, gain, clamp)
    xr = x0.double().requires_grad_()
    br = b0.double().requires_grad_() if bias else None
    yr = _ref(xr, br, dim, act, alpha, gain, clamp)
    half = dt.itemsize == 2
    if half:  # eager in the same dtype, for the tolerance
        xe = x0.clone().requires_grad_()
        be = b0.clone().requires_grad_() if bias else None
        ye = _ref(xe, be, dim, act, alpha, gain, clamp)
    fails += _err("y", y, yr, _tol(dt, ye if half else None, yr), dt)
    want_fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    if not y.is_contiguous(memory_format=want_fmt):
        fails.append(f"y has strides {y.stride()}, expected {want_fmt}")
    if fails:
        return [f"{tag}: {m}" for m in fails]

    ins, ins_r = [t for t in (x, b) if t is not None], [t for t in (xr, br) if t is not None]
    gs = torch.autograd.grad((y * w.to(dt)).sum(), ins, create_graph=second and not half)
    gr = torch.autograd.grad((yr * w.to(dt).double()).sum(), ins_r, create_graph=second)
    if half:
        ge = torch.autograd.grad((ye * w.to(dt)).sum(), [t for t in (xe, be) if t is not None])
    for i, (name, ours, ref) in enumerate(zip(("grad_x", "grad_b"), gs, gr)):
        fails += _err(name, ours, ref, _tol(dt, ge[i] if half else None, ref), dt)
    if second and not half and act in SECOND and not fails:
        def second_order(g, inputs):
            loss = (g[0] * v.to(g[0].dtype)).sum()
            if len(g) > 1:
                loss = loss + (g[1] * u.to(g[1].dtype)).sum()
            return torch.autograd.grad(loss, inputs, allow_unused=True)
        for name, ours, ref in zip(("2nd: x", "2nd: b"), second_order(gs, ins),
                                   second_order(gr, ins_r)):
            fails += _err(name, ours, ref, 10 * _tol(dt), dt)
    return [f"{tag}: {m}" for m in fails]


def check_backward_op(device: str) -> list[str]:
    """The backward op on its own: every output_mask, grad_b without b (what the forward's
    node asks for when the activation does not read b), ref in another layout than grad,
    and grad_b bitwise reproducible from many partials."""
    T = _ops()
    fails = []
    shape = (3, 5, 4, 3)
    x = _data(shape, torch.float32, device, 6)
    b = _data((5,), torch.float32, device, 7)
    g = _data(shape, torch.float32, device, 8)
    y = T.triton_bias_act_forward(x, b, 1, "tanh", 0.0, 1.5, -1.0)
    xr, br = x.double().requires_grad_(), b.double().requires_grad_()
    ref_gx, ref_gb = torch.autograd.grad(_ref(xr, br, 1, "tanh", 0.0, 1.5, -1.0), (xr, br),
                                         g.double())
    for mask in ([True, True], [True, False], [False, True], [False, False]):
        for bias in (b, None):
            gx, gb = T.triton_bias_act_backward(g, y, bias, 1, "tanh", 0.0, 1.5, -1.0, 1, mask)
            for name, got, want, m in (("grad_x", gx, ref_gx, mask[0]),
                                       ("grad_b", gb, ref_gb, mask[1])):
                if not m:
                    if got.shape != (0,):
                        fails.append(f"mask {mask}: {name} should be empty, got {got.shape}")
                else:
                    fails += [f"mask {mask} b={bias is not None}: {e}"
                              for e in _err(name, got, want, 1e-5, torch.float32)]
    gx, _ = T.triton_bias_act_backward(g.contiguous(memory_format=torch.channels_last), y, b, 1,
                                       "tanh", 0.0, 1.5, -1.0, 1, [True, False])
    fails += _err("grad_x (channels_last grad, contiguous ref)", gx, ref_gx, 1e-5)
    if not gx.is_contiguous(memory_format=torch.channels_last):
        fails.append("grad_x does not follow grad's memory format")
    for layout in ("contiguous", "channels_last"):
        gg = g.contiguous(memory_format=torch.channels_last) if layout != "contiguous" else g
        with small_tiles():
            runs = [T.triton_bias_act_backward(gg, y, b, 1, "tanh", 0.0, 1.5, -1.0, 1,
                                               [True, True])[1] for _ in range(2)]
        fails += _err(f"grad_b from many partials ({layout})", runs[0], ref_gb, 1e-5)
        if not torch.equal(runs[0], runs[1]):
            fails.append(f"grad_b ({layout}): two runs differ")
    return fails


def check_small_tiles(device: str) -> list[str]:
    """Several programs and tiles per program in both layouts, 32- and 64-bit offsets."""
    fails = []
    for index64 in (False, True):
        with small_tiles(index64):
            fails += check_values("swish", "float64", (3, 6, 5, 3), 1, "contiguous", device,
                                  clamp=0.7, second=False)
            fails += check_values("lrelu", "float64", (3, 6, 5, 3), 1, "channels_last", device,
                                  second=False)
            fails += check_values("sigmoid", "float32", (13, 6), 1, "contiguous", device,
                                  second=False)
    return fails


def check_extremes(device: str) -> list[str]:
    """Inputs of +-100 and +-1e4 give finite outputs and gradients (the range guards) that
    match the reference in fp32."""
    fails = []
    big = torch.tensor([-1e4, -100.0, -50.0, -30.0, 30.0, 50.0, 100.0, 1e4], device=device)
    for act in ACTS:
        x = big.clone().requires_grad_()
        y = _call(x, None, 1, act, 0.2, 1.0, -1.0)
        xr = big.double().requires_grad_()
        yr = _ref(xr, None, 1, act, 0.2, 1.0, -1.0)
        fails += [f"{act}: {m}" for m in _err("y", y, yr, 1e-6)]
        (gx,) = torch.autograd.grad(y.sum(), x)
        (gr,) = torch.autograd.grad(yr.sum(), xr)
        fails += [f"{act}: {m}" for m in _err("grad", gx, gr, 1e-6)]
    return fails


def check_gradcheck(device: str) -> list[str]:
    """fp64 gradcheck and gradgradcheck of every activation through the triton ops (fast
    mode in the interpreter), with bias, gain, and clamp for a few."""
    fails = []
    for i, act in enumerate(ACTS):
        clamp = 0.9 if i % 3 == 0 else -1.0
        x = _data((2, 3, 2, 2), torch.float64, device, 10 + i, 1.5).requires_grad_()
        b = _data((3,), torch.float64, device, 20 + i, 0.3).requires_grad_()

        def fn(x, b, act=act, clamp=clamp):
            return _call(x, b, 1, act, 0.3, 1.3, clamp)

        for check in (torch.autograd.gradcheck, torch.autograd.gradgradcheck):
            try:
                check(fn, (x, b), fast_mode=device == "cpu")
            except Exception as e:  # GradcheckError: report which combination
                fails.append(f"{check.__name__} {act} clamp={clamp}: {e}"[:600])
    return fails


def check_third_order(device: str) -> list[str]:
    """Differentiating a second-order gradient raises a clear error."""
    x = _data((2, 3), torch.float64, device, 30).requires_grad_()
    b = _data((3,), torch.float64, device, 31).requires_grad_()
    y = _call(x, b, 1, "swish", 0.0, 1.0, -1.0)
    (g1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x, create_graph=True)
    try:
        torch.autograd.grad(g2.sum(), x)
        return ["third order did not raise"]
    except RuntimeError as e:
        return [] if "third-order" in str(e) else [f"unclear third-order error: {e}"]


def check_saved(device: str) -> list[str]:
    """What the forward saves: y (relu .. softplus, linear with clamp), x and b (swish),
    nothing (linear without clamp); saved tensors are checked against in-place changes."""
    fails = []
    x0 = _data((2, 3), torch.float32, device, 40)
    for act, clamp, want in (("lrelu", -1.0, "y"), ("linear", 1.0, "y"), ("linear", -1.0, ""),
                             ("swish", -1.0, "x")):
        x = x0.clone().requires_grad_()
        b = torch.zeros(3, device=device, requires_grad=True)
        y = _call(x, b, 1, act, 0.2, 1.0, clamp)
        ptrs = {t.data_ptr() for t in y.grad_fn.saved_tensors if t is not None}
        got = "y" if y.data_ptr() in ptrs else "x" if x.data_ptr() in ptrs else ""
        if got != want:
            fails.append(f"{act} clamp={clamp}: saved {got or 'nothing'}, expected "
                         f"{want or 'nothing'}")
    x = x0.clone().requires_grad_()
    y = _call(x, None, 1, "tanh", 0.0, 1.0, -1.0)
    with torch.no_grad():
        y.mul_(2)
    try:
        y.sum().backward()
        fails.append("an in-place change of the saved y was not detected")
    except RuntimeError as e:
        if "modified by an inplace operation" not in str(e):
            fails.append(f"unclear in-place error: {e}")
    return fails


def check_errors(device: str) -> list[str]:
    """Clear errors naming the argument, from the ops called directly."""
    T = _ops()
    x = torch.ones(2, 3, device=device)
    b = torch.ones(3, device=device)
    F, B = T.triton_bias_act_forward, T.triton_bias_act_backward
    cases = [
        (lambda: F(x, b, 1, "gelu", 0.0, 1.0, -1.0), ValueError, "unknown act 'gelu'"),
        (lambda: F(x, b[:2], 1, "relu", 0.0, 1.0, -1.0), ValueError, r"b must have shape \(3,\)"),
        (lambda: F(x, b.double(), 1, "relu", 0.0, 1.0, -1.0), TypeError,
         "b has dtype torch.float64"),
        (lambda: F(x.long(), None, 1, "relu", 0.0, 1.0, -1.0), TypeError, "floating-point"),
        (lambda: F(x, b, 2, "relu", 0.0, 1.0, -1.0), ValueError, "dim must be"),
        (lambda: B(x, x, b, 1, "relu", 0.0, 1.0, -1.0, 3, [True, True]), ValueError,
         "order must be 1 or 2"),
        (lambda: B(x, None, b, 1, "tanh", 0.0, 1.0, -1.0, 1, [True, True]), ValueError,
         r"ref \(the forward's output y\) is required"),
        (lambda: B(x, x[:1], b, 1, "tanh", 0.0, 1.0, -1.0, 1, [True, True]), ValueError,
         "ref must match grad's shape"),
        (lambda: B(x, x, None, 5, "tanh", 0.0, 1.0, -1.0, 1, [False, True]), ValueError,
         "dim must be in"),
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


def check_opcheck(device: str, utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor", "test_aot_dispatch_dynamic")):
    """torch.library.opcheck of both triton ops."""
    x = _data((2, 3, 3, 2), torch.float32, device, 50)
    b = _data((3,), torch.float32, device, 51)
    fwd = torch.ops.fastgan.triton_bias_act_forward.default
    bwd = torch.ops.fastgan.triton_bias_act_backward.default
    y = fwd(x, b, 1, "swish", 0.0, 1.4, -1.0)
    calls = [(fwd, (x.clone().requires_grad_(), b.clone().requires_grad_(), 1, "swish", 0.0,
                    1.4, -1.0)),
             (fwd, (x.contiguous(memory_format=torch.channels_last).requires_grad_(), None, 1,
                    "lrelu", 0.2, 1.4, 0.5)),
             (bwd, (y, x, b, 1, "swish", 0.0, 1.4, -1.0, 1, [True, True])),
             (bwd, (y.clone().requires_grad_(), x.clone().requires_grad_(), b, 1, "swish", 0.0,
                    1.4, 0.5, 2, [True, False])),
             (bwd, (y, y, None, 1, "tanh", 0.0, 1.0, -1.0, 1, [False, True]))]
    fails = []
    for op, args in calls:
        try:
            torch.library.opcheck(op, args, test_utils=list(utils))
        except Exception as e:
            fails.append(f"opcheck {op}: {type(e).__name__}: {e}"[:800])
    return fails


def _value_cases() -> dict[str, tuple]:
    cases = {}
    for act in ACTS:  # every activation: both layouts, fp32 defaults, fp64 with everything
        cases[f"{act}-fp32-nchw"] = (act, "float32", (2, 5, 3, 4), 1, "contiguous", {})
        cases[f"{act}-fp64-cl-clamp"] = (act, "float64", (2, 5, 3, 3), 1, "channels_last",
                                         {"alpha": 0.3, "gain": 1.7, "clamp": 0.9})
    cases["lrelu-fp64-dim0"] = ("lrelu", "float64", (3, 4, 5), 0, "contiguous", {})
    cases["tanh-fp64-dim2"] = ("tanh", "float64", (2, 3, 5), 2, "contiguous", {"gain": 0.5})
    cases["swish-fp64-dim3-cl"] = ("swish", "float64", (2, 3, 2, 5), 3, "channels_last", {})
    cases["elu-fp32-matrix"] = ("elu", "float32", (7, 5), 1, "contiguous", {"clamp": 1.5})
    cases["sigmoid-fp64-nobias"] = ("sigmoid", "float64", (3, 4, 5), 1, "contiguous",
                                    {"bias": False})
    cases["tanh-fp64-nobias-cl"] = ("tanh", "float64", (2, 3, 2, 2), 1, "channels_last",
                                    {"bias": False, "clamp": 0.5})
    cases["selu-fp64-transposed"] = ("selu", "float64", (2, 3, 4, 5), 1, "transposed", {})
    cases["lrelu-fp16-clamp"] = ("lrelu", "float16", (2, 5, 3, 4), 1, "channels_last",
                                 {"clamp": 1.0})
    cases["softplus-bf16"] = ("softplus", "bfloat16", (2, 5, 3, 4), 1, "contiguous", {})
    cases["gain-zero"] = ("tanh", "float64", (2, 3), 1, "contiguous", {"gain": 0.0})
    return cases


VALUE_CASES = _value_cases()
EXTRA_CHECKS = {"backward_op": check_backward_op, "small_tiles": check_small_tiles,
                "extremes": check_extremes, "gradcheck": check_gradcheck,
                "third_order": check_third_order, "saved": check_saved,
                "errors": check_errors}


# ---------------------------------------------------------------------------
# Interpreter worker: runs every check under TRITON_INTERPRET=1, prints JSON results.

INTERP_OPCHECK = ("test_schema", "test_autograd_registration")  # fake tensors need a GPU


def _run_worker() -> None:
    results, run = interpreter_worker()
    for name, (act, dtype, shape, dim, layout, kw) in VALUE_CASES.items():
        run(name, lambda *a, kw=kw: check_values(*a, **kw), act, dtype, shape, dim, layout,
            "cpu")
    for name, fn in EXTRA_CHECKS.items():
        run(name, fn, "cpu")
    run("opcheck", check_opcheck, "cpu", INTERP_OPCHECK)
    report_worker_results(results)


INTERP_IDS = [*VALUE_CASES, *EXTRA_CHECKS, "opcheck"]


interp_results, test_interpreter = interpreter_tests(__file__, INTERP_IDS)


# ---------------------------------------------------------------------------
# Main process (no interpreter): laziness, launch counts, fake tensors.

def test_triton_modules_are_lazy():
    pytest.importorskip("triton")
    code = ("import sys, fastgan; "
            "assert 'fastgan.ops.bias_act_triton' not in sys.modules; "
            "assert 'fastgan.kernels.bias_act' not in sys.modules; "
            "assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="records launches of compiled kernels")
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_one_launch_each(fmt):
    """Forward and backward (grad_x and grad_b) are one kernel launch each."""
    pytest.importorskip("triton")
    from fastgan.kernels import aot
    from fastgan.kernels import bias_act as K
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = torch.empty((4, 512, 16, 16), device="meta").contiguous(memory_format=mf)
    b = torch.empty(512, device="meta")
    with aot.recording(K) as fwd:
        y = K.forward(x, b, 1, "lrelu", 0.2, 1.4, -1.0)
    with aot.recording(K) as bwd:
        gx, gb = K.backward(y, y, b, 1, "lrelu", 0.2, 1.4, -1.0, 1, [True, True])
    assert len(fwd) == 1 and len(bwd) == 1
    assert y.is_contiguous(memory_format=mf) and gx.is_contiguous(memory_format=mf)
    assert gb.shape == (512,)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="interpreted kernels run eagerly on fake tensors")
def test_fake_tensors():
    """Each triton_op is its own fake kernel (allocate, record launches): outputs in x's
    (grad's) shape, dtype and memory format; grad_b in b's dtype; masked outputs empty.
    Where the compiled op has fake kernels, the same metadata as those."""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastgan.ops import bias_act_triton  # noqa: F401  (registers the ops)
    ops = torch.ops.fastgan

    def meta(ts):
        ts = ts if isinstance(ts, (tuple, list)) else (ts,)
        return [(tuple(t.shape), t.dtype, t.stride()) for t in ts]

    def compiled(name, args):
        try:
            return meta(getattr(ops, name)(*args))
        except Exception:  # no compiled op or no fake kernel for it (yet)
            return None

    with FakeTensorMode():
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            for fmt in (torch.contiguous_format, torch.channels_last):
                x = torch.empty((2, 5, 3, 4), dtype=dtype).contiguous(memory_format=fmt)
                b = torch.empty(5, dtype=dtype)
                args = (x, b, 1, "tanh", 0.0, 1.0, -1.0)
                y = ops.triton_bias_act_forward(*args)
                assert meta(y) == meta(x)
                want = compiled("bias_act_forward", args)
                assert want is None or want == meta(y)
                for mask in ([True, True], [False, True], [True, False]):
                    args = (y, y, b, 1, "tanh", 0.0, 1.0, -1.0, 1, mask)
                    gx, gb = ops.triton_bias_act_backward(*args)
                    assert meta(gx) == (meta(x) if mask[0] else [((0,), dtype, (1,))])
                    assert meta(gb) == ([((5,), dtype, (1,))] if mask[1]
                                        else [((0,), dtype, (1,))])
                    want = compiled("bias_act_backward", args)
                    assert want is None or want == meta((gx, gb))


# ---------------------------------------------------------------------------
# GPU: the same checks on CUDA tensors with the compiled kernels.

@pytest.mark.parametrize("name", list(VALUE_CASES))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_values(name):
    pytest.importorskip("triton")
    act, dtype, shape, dim, layout, kw = VALUE_CASES[name]
    fails = check_values(act, dtype, shape, dim, layout, "cuda", **kw)
    assert not fails, "\n".join(fails)


@pytest.mark.parametrize("name", list(EXTRA_CHECKS))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_checks(name):
    pytest.importorskip("triton")
    fails = EXTRA_CHECKS[name]("cuda")
    assert not fails, "\n".join(fails)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_opcheck():
    pytest.importorskip("triton")
    fails = check_opcheck("cuda")
    assert not fails, "\n".join(fails)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_gpu_large(fmt):
    """StyleGAN sizes, many programs: fp32 values and grad_b against the reference."""
    pytest.importorskip("triton")
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = _data((8, 256, 64, 64), torch.float32, "cuda", 60).contiguous(memory_format=mf)
    x.requires_grad_()
    b = _data((256,), torch.float32, "cuda", 61).requires_grad_()
    y = _call(x, b, 1, "lrelu", 0.2, 2 ** 0.5, 256.0)
    gx, gb = torch.autograd.grad(y.square().sum(), (x, b))
    xr, br = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    yr = _ref(xr, br, 1, "lrelu", 0.2, 2 ** 0.5, 256.0)
    rx, rb = torch.autograd.grad(yr.square().sum(), (xr, br))
    fails = _err("y", y, yr, 1e-5) + _err("grad_x", gx, rx, 1e-5) + _err("grad_b", gb, rb, 1e-5)
    assert not fails, "\n".join(fails)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_compile_fullgraph():
    pytest.importorskip("triton")
    torch._dynamo.reset()

    def step(x, b):
        return _call(x, b, 1, "lrelu", 0.2, 2 ** 0.5, 256.0).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    for shape in ((4, 64, 8, 8), (4, 64, 16, 16)):
        x0 = _data(shape, torch.float32, "cuda", 70)
        b0 = _data((64,), torch.float32, "cuda", 71)
        xa, ba = x0.clone().requires_grad_(), b0.clone().requires_grad_()
        xb, bb = x0.clone().requires_grad_(), b0.clone().requires_grad_()
        loss, ref_loss = compiled(xa, ba), step(xb, bb)
        torch.testing.assert_close(loss, ref_loss)
        loss.backward()
        ref_loss.backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(ba.grad, bb.grad)


if __name__ == "__main__" and "--worker" in sys.argv:
    _run_worker()
