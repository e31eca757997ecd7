"""The `triton` backend of upfirdn2d (kernels/upfirdn2d.py, fastgan/ops/upfirdn2d_triton.py).

Interpreter tests: with TRITON_INTERPRET=1 the Triton kernel runs on CPU tensors. The
variable has to be set before triton is imported and must not leak into the rest of the
suite, so all interpreter cases run in one subprocess (this file, `--worker`), and the
tests here check its per-case results (as tests/test_gan_loss_triton.py does). The same
checks run in-process on CUDA tensors in the `gpu` tests, which skip without a device.

The op is called directly (fastgan::triton_upfirdn2d) with the arguments the Python
front passes: a 2-D filter on x's device, up / down [x, y], padding [x0, x1, y0, y1]. The
oracle is the reference (fastgan/ops/upfirdn2d_reference.py) in fp64 on the same (rounded)
inputs, with its autograd. Tolerances (docs/ARCHITECTURE.md, "Numerics"), relative to
max(1, |reference|): fp64 1e-10, fp32 1e-5, bf16 / fp16 twice the reference's own error
in that dtype (at least one ulp). The interpreter cases are kept small.
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

from fastgan.ops.upfirdn2d_reference import upfirdn2d as reference


def _ops():
    from fastgan.ops import upfirdn2d_triton as T
    return T


@contextlib.contextmanager
def small_tiles(index64: bool = False):
    """Lowers the tile sizes so that interpreter-sized outputs take several tiles per plane
    in both layouts (and with index64 the 64-bit offset path)."""
    from fastgan.kernels import upfirdn2d as K
    names = ("TILE", "MAX_BLOCK_W", "MAX_BLOCK_C", "INDEX64_MIN_NUMEL")
    saved = {n: getattr(K, n) for n in names}
    K.TILE, K.MAX_BLOCK_W, K.MAX_BLOCK_C = 8, 4, 2
    if index64:
        K.INDEX64_MIN_NUMEL = 0
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(K, n, v)


def _rand(shape, dtype, device, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def _err(name, ours, ref, tol, dtype=None) -> list[str]:
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
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-5
    eps = torch.finfo(dtype).eps
    scale = max(1.0, ref.abs().max().item())
    return max(eps, 2 * (eager.double() - ref.double()).abs().max().item() / scale)


def _call(x, f, up, down, padding, flip, gain):
    return _ops().triton_upfirdn2d(x, f, list(up), list(down), list(padding), flip, gain)


# name -> (x shape, filter shape, up [x, y], down [x, y], padding [x0, x1, y0, y1], flip)
CONFIGS = {
    "filter": ((2, 3, 5, 7), (3, 2), (1, 1), (1, 1), (1, 1, 0, 2), False),
    "up2": ((1, 3, 4, 5), (4, 4), (2, 2), (1, 1), (2, 1, 2, 1), False),  # StyleGAN2 upsample
    "down2-flip": ((2, 2, 8, 6), (4, 4), (1, 1), (2, 2), (1, 1, 1, 1), True),  # downsample
    "up4x-down2y": ((1, 2, 5, 3), (3, 5), (4, 1), (1, 2), (-1, 3, 2, -2), False),
    "up2y-down3x-flip": ((1, 3, 7, 5), (2, 3), (1, 2), (3, 1), (1, -1, 0, 2), True),
    "crop": ((1, 2, 6, 6), (1, 1), (1, 1), (1, 1), (-1, -2, -2, 0), False),
}


# ---------------------------------------------------------------------------
# Checks, shared by the interpreter worker and the GPU tests. Each returns a list of
# failure messages (empty when it passes).

def check_values(config: str, dtype: str, layout: str, device: str, gain: float = 1.7,
                 grad: bool = True) -> list[str]:
    """y and the gradient of <y, w> against the reference (fp64 on the same inputs)."""
    shape, fshape, up, down, padding, flip = CONFIGS[config]
    dt = getattr(torch, dtype)
    x0 = _rand(shape, dt, device, 1)
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # read in place through its strides
        x0 = _rand((*shape[:3], 2 * shape[3]), dt, device, 1)[..., ::2]
    f = _rand(fshape, torch.float32, device, 2)
    tag = f"{config} {dtype} {layout} gain={gain}"
    x = x0.clone().requires_grad_() if layout != "strided" else x0.requires_grad_()
    y = _call(x, f, up, down, padding, flip, gain)
    xr = x0.detach().double().requires_grad_()
    yr = reference(xr, f, up, down, padding, flip, gain)
    half = dt.itemsize == 2
    if half:
        xe = x0.detach().clone().requires_grad_()
        ye = reference(xe, f, up, down, padding, flip, gain)
    fails = _err("y", y, yr, _tol(dt, ye if half else None, yr), dt)
    want = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    if not y.is_contiguous(memory_format=want):
        fails.append(f"y has strides {y.stride()}, expected {want}")
    if grad and not fails:
        w = _rand(y.shape, dt, device, 3)
        (gx,) = torch.autograd.grad((y * w).sum(), x)
        (gr,) = torch.autograd.grad((yr * w.double()).sum(), xr)
        ge = torch.autograd.grad((ye * w).sum(), xe)[0] if half else None
        fails += _err("grad", gx, gr, _tol(dt, ge, gr), dt)
    return [f"{tag}: {m}" for m in fails]


def check_small_tiles(device: str) -> list[str]:
    """Several tiles per plane in both layouts; 32- and 64-bit offsets."""
    fails = []
    for index64 in (False, True):
        with small_tiles(index64):
            fails += check_values("up2", "float64", "contiguous", device)
            fails += check_values("up4x-down2y", "float64", "channels_last", device)
    return fails


def check_gradcheck(device: str) -> list[str]:
    """fp64 gradcheck and gradgradcheck (fast mode in the interpreter), and a third-order
    gradient against the reference's: the op's gradient is the op again, at every order."""
    fails = []
    for config in ("up4x-down2y", "up2y-down3x-flip"):
        shape, fshape, up, down, padding, flip = CONFIGS[config]
        x = _rand(shape, torch.float64, device, 4).requires_grad_()
        f = _rand(fshape, torch.float64, device, 5)

        def fn(x, f=f, up=up, down=down, padding=padding, flip=flip):
            return _call(x, f, up, down, padding, flip, 1.3)

        for check in (torch.autograd.gradcheck, torch.autograd.gradgradcheck):
            try:
                check(fn, (x,), fast_mode=device == "cpu")
            except Exception as e:
                fails.append(f"{check.__name__} {config}: {e}"[:600])

    shape, fshape, up, down, padding, flip = CONFIGS["up4x-down2y"]
    f = _rand(fshape, torch.float64, device, 6)
    v = _rand(shape, torch.float64, device, 7)

    def third(op, x):
        """d/dx <d/dx <d/dx sum(op(x)^4), v>, 1>: each level differentiates the last."""
        y = op(x, f, up, down, padding, flip, 1.3)
        (g1,) = torch.autograd.grad(y.pow(4).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 * v).sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad(g2.sum(), x)
        return g3

    x = _rand(shape, torch.float64, device, 8)
    ours = third(_call, x.clone().requires_grad_())
    ref = third(reference, x.clone().requires_grad_())
    fails += [f"third order: {m}" for m in _err("d3", ours, ref, 1e-10)]
    return fails


def check_backward_reads_in_place(device: str) -> list[str]:
    """The gradient of y.sum() is an expanded (stride 0) tensor: read in place, the same
    result as a materialised one."""
    shape, fshape, up, down, padding, flip = CONFIGS["up2"]
    x = _rand(shape, torch.float32, device, 9).requires_grad_()
    f = _rand(fshape, torch.float32, device, 10)
    y = _call(x, f, up, down, padding, flip, 1.0)
    (g_exp,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    (g_mat,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return _err("expanded gradient", g_exp, g_mat, 0.0)


def check_errors(device: str) -> list[str]:
    """Clear errors naming the argument."""
    x = torch.ones(1, 2, 4, 4, device=device)
    f = torch.ones(3, 3, device=device)
    cases = [
        (lambda: _call(x, f[0], (1, 1), (1, 1), (0, 0, 0, 0), False, 1.0), ValueError,
         "f must be a non-empty 2-D"),
        (lambda: _call(x[0], f, (1, 1), (1, 1), (0, 0, 0, 0), False, 1.0), ValueError,
         "x must be 4-D"),
        (lambda: _call(x, f, (0, 1), (1, 1), (0, 0, 0, 0), False, 1.0), ValueError,
         "up must be"),
        (lambda: _call(x, f, (1, 1), (1, 1, 1), (0, 0, 0, 0), False, 1.0), ValueError,
         "down must be two ints"),
        (lambda: _call(x, f, (1, 1), (1, 1), (0, 0), False, 1.0), ValueError,
         "padding must be four ints"),
        (lambda: _call(x, torch.ones(6, 6, device=device), (1, 1), (1, 1), (0, 0, 0, 0), False,
                       1.0), ValueError, r"f \(6x6\) is larger than"),
        (lambda: _call(x.long(), f, (1, 1), (1, 1), (0, 0, 0, 0), False, 1.0), TypeError,
         "floating-point"),
        (lambda: _call(x, f.clone().requires_grad_(), (1, 1), (1, 1), (0, 0, 0, 0), False, 1.0),
         ValueError, "f must not require grad"),
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
    op = torch.ops.fastgan.triton_upfirdn2d.default
    f = _rand((4, 4), torch.float32, device, 11)
    x = _rand((1, 2, 4, 5), torch.float32, device, 12)
    calls = [(op, (x.clone().requires_grad_(), f, [2, 2], [1, 1], [2, 1, 2, 1], False, 4.0)),
             (op, (x.contiguous(memory_format=torch.channels_last).requires_grad_(), f[:3],
                   [1, 1], [2, 1], [1, -1, 0, 1], True, 1.0))]
    fails = []
    for op, args in calls:
        try:
            torch.library.opcheck(op, args, test_utils=list(utils))
        except Exception as e:
            fails.append(f"opcheck {op}: {type(e).__name__}: {e}"[:800])
    return fails


def _value_cases() -> dict[str, tuple]:
    cases = {}
    for config in CONFIGS:
        cases[f"{config}-fp64-nchw"] = (config, "float64", "contiguous")
        cases[f"{config}-fp32-cl"] = (config, "float32", "channels_last")
    cases["up2-fp32-nchw"] = ("up2", "float32", "contiguous")
    cases["down2-flip-fp64-cl"] = ("down2-flip", "float64", "channels_last")
    cases["filter-fp32-strided"] = ("filter", "float32", "strided")
    cases["up2-fp16-cl"] = ("up2", "float16", "channels_last")
    cases["down2-flip-bf16-nchw"] = ("down2-flip", "bfloat16", "contiguous")
    return cases


VALUE_CASES = _value_cases()
EXTRA_CHECKS = {"small_tiles": check_small_tiles, "gradcheck": check_gradcheck,
                "backward_in_place": check_backward_reads_in_place, "errors": check_errors}


# ---------------------------------------------------------------------------
# Interpreter worker: runs every check under TRITON_INTERPRET=1, prints JSON results.

INTERP_OPCHECK = ("test_schema", "test_autograd_registration")  # fake tensors need a GPU


def _run_worker() -> None:
    results, run = interpreter_worker()
    for name, args in VALUE_CASES.items():
        run(name, check_values, *args, "cpu")
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
            "assert 'fastgan.ops.upfirdn2d_triton' not in sys.modules; "
            "assert 'fastgan.kernels.upfirdn2d' not in sys.modules; "
            "assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="interpreted kernels run eagerly on fake tensors")
def test_fake_tensors():
    """The triton_op is its own fake kernel (allocate, record the launch): NVlabs' output
    size, x's dtype and memory format. Where the compiled op has a fake kernel, the same
    metadata as it."""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastgan.ops import upfirdn2d_triton  # noqa: F401  (registers the op)
    ops = torch.ops.fastgan

    def meta(t):
        return tuple(t.shape), t.dtype, t.stride()

    with FakeTensorMode():
        for dtype in (torch.float32, torch.float16, torch.float64):
            for fmt in (torch.contiguous_format, torch.channels_last):
                for _, fshape, up, down, padding, flip in CONFIGS.values():
                    x = torch.empty((2, 3, 16, 12), dtype=dtype).contiguous(memory_format=fmt)
                    f = torch.empty(fshape)
                    args = (x, f, list(up), list(down), list(padding), flip, 1.0)
                    y = ops.triton_upfirdn2d(*args)
                    oh = (16 * up[1] + padding[2] + padding[3] - fshape[0]) // down[1] + 1
                    ow = (12 * up[0] + padding[0] + padding[1] - fshape[1]) // down[0] + 1
                    assert y.shape == (2, 3, oh, ow) and y.dtype == dtype
                    assert y.is_contiguous(memory_format=fmt)
                    try:
                        want = meta(ops.upfirdn2d(*args))
                    except Exception:  # no compiled op or no fake kernel for it (yet)
                        want = None
                    assert want is None or want == meta(y)


# ---------------------------------------------------------------------------
# GPU: the same checks on CUDA tensors with the compiled kernel.

@pytest.mark.parametrize("name", list(VALUE_CASES))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_values(name):
    pytest.importorskip("triton")
    fails = check_values(*VALUE_CASES[name], "cuda")
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
@pytest.mark.parametrize("mode", ["up", "down"])
def test_gpu_stylegan_sizes(fmt, mode):
    """StyleGAN2's resampling at a real size, many tiles: fp32 against the reference."""
    pytest.importorskip("triton")
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = _rand((4, 128, 64, 64), torch.float32, "cuda", 13).contiguous(memory_format=mf)
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device="cuda")
    f = torch.outer(k, k) / 64
    if mode == "up":
        args = ([2, 2], [1, 1], [2, 1, 2, 1], False, 4.0)
    else:
        args = ([1, 1], [2, 2], [1, 1, 1, 1], False, 1.0)
    x.requires_grad_()
    y = _call(x, f, *args)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    xr = x.detach().double().requires_grad_()
    yr = reference(xr, f, *args)
    (gr,) = torch.autograd.grad(yr.square().sum(), xr)
    fails = _err("y", y, yr, 1e-5) + _err("grad", gx, gr, 1e-5)
    assert not fails, "\n".join(fails)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_compile_fullgraph():
    pytest.importorskip("triton")
    torch._dynamo.reset()
    f = torch.ones(4, 4, device="cuda") / 16

    def step(x):
        return _call(x, f, [2, 2], [1, 1], [2, 1, 2, 1], False, 4.0).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    for size in (8, 16):
        x0 = _rand((2, 8, size, size), torch.float32, "cuda", 14)
        xa, xb = x0.clone().requires_grad_(), x0.clone().requires_grad_()
        loss, ref_loss = compiled(xa), step(xb)
        torch.testing.assert_close(loss, ref_loss)
        loss.backward()
        ref_loss.backward()
        torch.testing.assert_close(xa.grad, xb.grad)


if __name__ == "__main__" and "--worker" in sys.argv:
    _run_worker()
