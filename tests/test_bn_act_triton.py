"""The `triton` backend of bn_act (kernels/bn_act.py, fastgan/ops/bn_act_triton.py).

Interpreter tests: with TRITON_INTERPRET=1 and the backend forced, the Triton kernels run
on CPU tensors. The variable has to be set before triton is imported and must not leak
into the rest of the suite, so all interpreter cases run in one subprocess (this file,
`--worker`), and the tests here check its per-case results. The worker makes the
interpreter round fp32 -> bf16 to nearest even as GPUs do (Triton 3.8's interpreter
truncates). The same checks run in-process on CUDA tensors in the `gpu` tests, which
skip without a device.

Tolerances (docs/ARCHITECTURE.md, "Numerics"): fp32 ~1e-5 relative to the eager result, fp64 1e-10;
bf16/fp16 no worse than twice eager's own error against an fp64 run of eager (plus a
quarter of an ulp at the tensor's scale, so that an eager result that happens to be
exact does not demand exactness).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import zlib

import pytest
import torch
from _testutil import interpreter_tests, interpreter_worker, report_worker_results

import fastgan
from fastgan.ops import bn_act as B
from fastgan.ops.bn_act_reference import acc_dtype, reference_backward

# ---------------------------------------------------------------------------
# Cases: a covering subset of shapes x dtypes x layouts x modes x module options,
# small enough for the interpreter.

ODD = (3, 33, 9, 11)
ONE = (4, 5, 1, 1)  # H = W = 1
SMALL = (2, 6, 5, 3)


@dataclasses.dataclass(frozen=True)
class Case:
    shape: tuple
    dtype: str
    channels_last: bool
    training: bool
    slope: float
    variant: str = "default"  # default | momentum_none | no_affine | no_track

    @property
    def id(self) -> str:
        return (f"{'x'.join(map(str, self.shape))}-{self.dtype}-"
                f"{'cl' if self.channels_last else 'nchw'}-{'train' if self.training else 'eval'}-"
                f"s{self.slope}-{self.variant}")


CASES = [
    Case(ODD, "float32", False, True, 0.2),
    Case(ODD, "float32", True, True, 0.0),
    Case(ODD, "float32", False, False, 0.0),
    Case(ODD, "float32", True, False, 0.2),
    Case(ODD, "bfloat16", False, True, 0.0),
    Case(ODD, "bfloat16", True, True, 0.2),
    Case(ODD, "float16", True, True, 0.0),
    Case(ODD, "float16", False, False, 0.2),
    Case(ONE, "float32", False, True, 0.2),
    Case(ONE, "float32", True, True, 0.0),
    Case(ONE, "bfloat16", False, False, 0.2),
    Case(ONE, "float16", True, True, 0.2),
    Case(SMALL, "float32", False, True, 0.2, "momentum_none"),
    Case(SMALL, "bfloat16", True, True, 0.0, "momentum_none"),
    Case(SMALL, "float32", True, True, 0.2, "no_affine"),
    Case(SMALL, "float16", False, False, 0.0, "no_affine"),
    Case(SMALL, "float32", False, True, 0.0, "no_track"),
    Case(SMALL, "bfloat16", True, False, 0.2, "no_track"),  # eval without running stats
    Case(SMALL, "float64", False, True, 0.2),
    Case(SMALL, "float64", True, False, 0.2),
]


# ---------------------------------------------------------------------------
# Checks, shared by the interpreter worker and the GPU tests. Each returns a list of
# failure messages (empty when it passes).

def _modules(case: Case, device: str):
    C = case.shape[1]
    momentum = None if case.variant == "momentum_none" else 0.1
    affine = case.variant != "no_affine"
    track = case.variant != "no_track"
    bn = torch.nn.BatchNorm2d(C, momentum=momentum, affine=affine, track_running_stats=track)
    with torch.no_grad():
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        if track:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    eager = torch.nn.Sequential(bn, torch.nn.LeakyReLU(case.slope)).to(device)
    fused = fastgan.nn.BatchNormAct2d(C, momentum=momentum, affine=affine,
                                      track_running_stats=track, negative_slope=case.slope,
                                      device=device)
    fused.load_state_dict(bn.state_dict())
    if case.dtype == "float64":
        eager, fused = eager.double(), fused.double()
    ref = _copy_double(eager)
    for m in (eager, fused, ref):
        m.train(case.training)
    return eager, fused, ref


def _copy_double(module):
    import copy
    return copy.deepcopy(module).double()


def _bn(module):
    return module[0] if isinstance(module, torch.nn.Sequential) else module


def _step(module, x, g):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(g.to(y.dtype))
    bn = _bn(module)
    out = {"y": y.detach(), "x.grad": x.grad}
    if bn.weight is not None:
        out["weight.grad"] = bn.weight.grad.clone()
        out["bias.grad"] = bn.bias.grad.clone()
        bn.weight.grad = bn.bias.grad = None
    if bn.running_mean is not None:
        out["running_mean"] = bn.running_mean.clone()
        out["running_var"] = bn.running_var.clone()
        out["num_batches_tracked"] = bn.num_batches_tracked.clone()
    return out


def _compare(name: str, ours, eager, ref, dtype: torch.dtype) -> list[str]:
    if ours.shape != eager.shape or ours.dtype != eager.dtype:
        return [f"{name}: got {tuple(ours.shape)} {ours.dtype}, eager {tuple(eager.shape)} "
                f"{eager.dtype}"]
    if not ours.is_floating_point():
        return [] if torch.equal(ours, eager) else [f"{name}: {ours} != {eager}"]
    o, e, r = ours.double(), eager.double(), ref.double()
    scale = max(r.abs().max().item(), 1e-3)
    if dtype == torch.float64:
        err, limit = (o - r).abs().max().item(), 1e-10 * scale
    else:
        # fp32: close to eager. bf16/fp16 inputs: as close to fp64 as eager is (fp32
        # results of low-precision inputs, e.g. weight.grad, pass either way).
        err, limit = (o - e).abs().max().item(), 1e-5 * scale
        if dtype != torch.float32 and err > limit:
            err = (o - r).abs().max().item()
            limit = 2 * (e - r).abs().max().item() + 0.25 * torch.finfo(ours.dtype).eps * scale
    return [] if err <= limit else [f"{name}: max error {err:.3g} > {limit:.3g} "
                                    f"(scale {scale:.3g})"]


def check_module(case: Case, device: str) -> list[str]:
    """fastgan.nn.BatchNormAct2d vs eager BatchNorm2d + LeakyReLU: output, gradients and
    buffers over two steps."""
    torch.manual_seed(zlib.crc32(case.id.encode()))
    dtype = getattr(torch, case.dtype)
    eager, fused, ref = _modules(case, device)
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    fails = []
    for step in range(2 if case.training else 1):
        x = (torch.randn(case.shape, device=device) * 2 + 3).to(dtype)
        x = x.contiguous(memory_format=fmt)
        g = torch.randn(case.shape, device=device).to(dtype).contiguous(memory_format=fmt)
        outs = [_step(m, inp, g) for m, inp in ((fused, x), (eager, x), (ref, x.double()))]
        for key in outs[0]:
            fails += _compare(f"step {step} {key}", outs[0][key], outs[1][key], outs[2][key],
                              dtype)
        y = outs[0]["y"]
        if case.channels_last and not y.is_contiguous(memory_format=torch.channels_last):
            fails.append("channels_last input gave an output that is not channels_last")
    return fails


def check_op_masks(device: str) -> list[str]:
    """The backward op's output masks and weight/bias None, against the composite."""
    from fastgan.ops import bn_act_triton as T
    fails = []
    torch.manual_seed(0)
    for cl in (False, True):
        x = torch.randn(SMALL, device=device) * 3 + 1
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.rand(SMALL[1], device=device) + 0.5
        b = torch.randn(SMALL[1], device=device)
        g = torch.randn(SMALL, device=device)
        for weight, bias in ((w, b), (None, b), (w, None), (None, None)):
            y, mean, var = T.triton_bn_act_forward(x, weight, bias, None, None, True, 1e-5, 0.1)
            ry, rmean, rvar = B.reference_forward(x, weight, bias, None, None, True, 0.1, 1e-5, 0.1)
            for n, a, r in (("y", y, ry), ("mean", mean, rmean), ("var", var, rvar)):
                if not torch.allclose(a, r, rtol=1e-5, atol=1e-5):
                    fails.append(f"forward {n} (cl={cl}, w={weight is not None}, "
                                 f"b={bias is not None})")
            for mask in ([True, True, True], [True, False, False], [False, True, True],
                         [False, False, True]):
                for training in (True, False):
                    got = T.triton_bn_act_backward(g, x, weight, bias, mean, var, training,
                                                   1e-5, 0.1, mask)
                    want = reference_backward(g, x, weight, bias, mean, var, training, 1e-5,
                                              0.1)
                    for i, (a, r) in enumerate(zip(got, want)):
                        tag = f"backward[{i}] mask={mask} training={training} cl={cl}"
                        if not mask[i] or r is None:
                            if a.numel() != 0:
                                fails.append(f"{tag}: expected an empty tensor")
                        elif not torch.allclose(a, r, rtol=1e-4, atol=1e-5):
                            fails.append(f"{tag}: max error {(a - r).abs().max().item():.3g}")
    return fails


def check_large_mean(device: str) -> list[str]:
    """|mean| >> std: sum / sum-of-squares would lose everything in fp32."""
    from fastgan.ops import bn_act_triton as T
    torch.manual_seed(0)
    fails = []
    for cl in (False, True):
        x = torch.randn(8, 3, 16, 16, device=device, dtype=torch.float64) + 1e4
        ref_var = x.var(dim=(0, 2, 3), unbiased=False)
        x32 = x.float()
        if cl:
            x32 = x32.contiguous(memory_format=torch.channels_last)
        _, _, var = T.triton_bn_act_forward(x32, None, None, None, None, True, 1e-5, 0.2)
        # fp32 inputs are 1e4 +- 1 with ulp 1e-3; the variance is good to ~1e-3 relative.
        rel = ((var.double() - ref_var) / ref_var).abs().max().item()
        if rel > 2e-3:
            fails.append(f"variance at mean 1e4 (cl={cl}): relative error {rel:.3g}")
    return fails


def check_index64(device: str) -> list[str]:
    """The 64-bit offset path (taken from 2**31 elements on), forced on small tensors."""
    from fastgan.kernels import bn_act as K
    saved = K.INDEX64_MIN_NUMEL
    K.INDEX64_MIN_NUMEL = 0
    try:
        return (check_module(Case(ODD, "float32", False, True, 0.2), device)
                + check_module(Case(ODD, "bfloat16", True, True, 0.0), device))
    finally:
        K.INDEX64_MIN_NUMEL = saved


def check_gradcheck(device: str, shape=(2, 3, 3, 2)) -> list[str]:
    """fp64 gradcheck of the fused op (train and eval, NCHW and channels_last), and
    create_graph=True (the composite) giving the same gradients as the kernels. The
    interpreter uses gradcheck's fast mode (random projections), the GPU the full one."""
    torch.manual_seed(0)
    fails = []
    C = shape[1]
    for cl in (False, True):
        for training in (True, False):
            x = torch.randn(shape, device=device, dtype=torch.float64)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            w = (torch.rand(C, device=device, dtype=torch.float64) + 0.5).requires_grad_()
            b = torch.randn(C, device=device, dtype=torch.float64).requires_grad_()
            rm = torch.randn(C, device=device, dtype=torch.float64)
            rv = torch.rand(C, device=device, dtype=torch.float64) + 0.5

            def f(x, w, b):
                return fastgan.functional.batch_norm_act(x, rm.clone(), rv.clone(), w, b,
                                                         training, 0.1, 1e-5, 0.2)

            try:
                torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-8,
                                         fast_mode=device == "cpu")
            except Exception as e:  # GradcheckError: report which combination
                fails.append(f"gradcheck cl={cl} training={training}: {e}"[:500])
            gy = torch.randn(shape, device=device, dtype=torch.float64)
            plain = torch.autograd.grad(f(x, w, b), (x, w, b), gy)
            graph = torch.autograd.grad(f(x, w, b), (x, w, b), gy, create_graph=True)
            for name, a, r in zip(("x", "w", "b"), graph, plain):
                if not torch.allclose(a, r, rtol=1e-7, atol=1e-9):
                    fails.append(f"create_graph grad {name} cl={cl} training={training}")
    return fails


def check_opcheck(device: str, utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor", "test_aot_dispatch_dynamic")):
    """torch.library.opcheck of both triton ops."""
    from fastgan.ops import bn_act_triton as T
    torch.manual_seed(0)
    fails = []
    x = torch.randn(SMALL, device=device)
    w = torch.rand(SMALL[1], device=device) + 0.5
    b = torch.randn(SMALL[1], device=device)
    xr = x.clone().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    y, mean, var = T.triton_bn_act_forward(x, w, b, None, None, True, 1e-5, 0.2)
    calls = [
        (torch.ops.fastgan.triton_bn_act_forward.default,
         (xr, wr, br, None, None, True, 1e-5, 0.2)),
        (torch.ops.fastgan.triton_bn_act_forward.default,
         (xr, wr, br, mean, var, False, 1e-5, 0.0)),
        (torch.ops.fastgan.triton_bn_act_backward.default,
         (torch.randn_like(x), x, w, b, mean, var, True, 1e-5, 0.2, [True, True, True])),
    ]
    for op, args in calls:
        try:
            torch.library.opcheck(op, args, test_utils=list(utils))
        except Exception as e:
            fails.append(f"opcheck {op}: {type(e).__name__}: {e}"[:800])
    return fails


EXTRA_CHECKS = {"op_masks": check_op_masks, "large_mean": check_large_mean,
                "index64": check_index64, "gradcheck": check_gradcheck}


# ---------------------------------------------------------------------------
# Interpreter worker: runs every check under TRITON_INTERPRET=1, prints JSON results.

INTERP_OPCHECK = ("test_schema", "test_autograd_registration")  # fake tensors need a GPU


def _run_worker() -> None:
    results, run = interpreter_worker()
    run("backend", lambda: [] if fastgan.ops.bn_act._backend.select(
        "bn_act", torch.device("cpu"), B.KERNELS) == "triton" else ["triton not selected"])
    for case in CASES:
        run(case.id, check_module, case, "cpu")
    for name, fn in EXTRA_CHECKS.items():
        run(name, fn, "cpu")
    run("opcheck", check_opcheck, "cpu", INTERP_OPCHECK)
    report_worker_results(results)


INTERP_IDS = ["backend"] + [c.id for c in CASES] + list(EXTRA_CHECKS) + ["opcheck"]


interp_results, test_interpreter = interpreter_tests(__file__, INTERP_IDS)


# ---------------------------------------------------------------------------
# Main process (no interpreter): registration and backend choice.

def test_triton_listed_and_lazy():
    pytest.importorskip("triton")
    assert "triton" in B.KERNELS
    code = ("import sys, fastgan; "
            "assert 'fastgan.ops.bn_act_triton' not in sys.modules; "
            "assert 'fastgan.kernels.bn_act' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="interpreted kernels run eagerly on fake tensors")
def test_fake_tensors_match_the_compiled_op():
    """Each triton_op is its own fake kernel (allocate, record launches): same output
    shapes, dtypes and strides as fastgan::bn_act_* (their fake kernels), for both layouts,
    every dtype, eval, masks and weight/bias None. No kernel runs, so no GPU is needed."""
    pytest.importorskip("triton")
    if not hasattr(torch.ops.fastgan, "bn_act_forward"):
        pytest.skip("fastgan._C is not built")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastgan.ops import bn_act_triton  # noqa: F401  (registers the ops)
    ops = torch.ops.fastgan

    def meta(ts):
        return [(tuple(t.shape), t.dtype, t.stride()) for t in ts]

    with FakeTensorMode():
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for cl in (False, True):
                x = torch.empty(ODD, dtype=dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                w = torch.empty(ODD[1])
                rm, rv = (torch.empty(ODD[1], dtype=acc_dtype(x)) for _ in range(2))
                for weight in (w, None):
                    for training in (True, False):
                        args = (x, weight, weight, rm, rv, training, 1e-5, 0.2)
                        fwd = ops.triton_bn_act_forward(*args)
                        assert meta(fwd) == meta(ops.bn_act_forward(*args[:6], 0.1, *args[6:]))
                        for mask in ([True, True, True], [False, True, False]):
                            args = (fwd[0], x, weight, weight, fwd[1], fwd[2], training, 1e-5,
                                    0.2, mask)
                            assert meta(ops.triton_bn_act_backward(*args)) == \
                                meta(ops.bn_act_backward(*args))


@pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="checks the error without a device or the interpreter")
def test_forcing_triton_without_device_is_an_error():
    with pytest.raises(RuntimeError, match="triton"):
        with fastgan.use_backend("triton"):
            pass


# ---------------------------------------------------------------------------
# GPU: the same checks on CUDA tensors with the compiled kernels.

@pytest.fixture
def triton_backend():
    pytest.importorskip("triton")
    with fastgan.use_backend("triton"):
        yield


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_parity(case):
    fails = check_module(case, "cuda")
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


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_compile_fullgraph(channels_last):
    torch.manual_seed(0)
    fused = fastgan.nn.BatchNormAct2d(64, negative_slope=0.2, device="cuda")
    eager = torch.nn.Sequential(torch.nn.BatchNorm2d(64), torch.nn.LeakyReLU(0.2)).cuda()
    fused.load_state_dict(eager[0].state_dict())
    compiled = torch.compile(fused, fullgraph=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for _ in range(2):
        x = torch.randn(16, 64, 8, 8, device="cuda").contiguous(memory_format=fmt)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = compiled(xa), eager(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.running_var, eager[0].running_var)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_auto_picks_triton_without_cuda_backend():
    pytest.importorskip("triton")
    from fastgan import _backend
    expected = "cuda" if "cuda" in B.KERNELS and _backend.backend_status()["cuda"][0] else "triton"
    assert _backend.select("bn_act", torch.device("cuda"), B.KERNELS) == expected


@pytest.mark.slow
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_index64_real_size():
    """2**31 + elements: the 64-bit offset path on a tensor that needs it."""
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GiB of GPU memory")
    from fastgan.ops import bn_act_triton as T
    torch.manual_seed(0)
    shape = (2**15 + 1, 4, 128, 128)  # 2**31 + 65536 elements, bf16: 4 GiB
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    y, mean, var = T.triton_bn_act_forward(x, None, None, None, None, True, 1e-5, 0.2)
    ref_var, ref_mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-4)
    torch.testing.assert_close(var, ref_var, rtol=1e-4, atol=0)
    tail = x[-1:].float()
    ref_tail = torch.nn.functional.leaky_relu(
        (tail - mean[:, None, None]) * torch.rsqrt(var + 1e-5)[:, None, None], 0.2)
    torch.testing.assert_close(y[-1:].float(), ref_tail, rtol=1e-2, atol=1e-2)


if __name__ == "__main__" and "--worker" in sys.argv:
    _run_worker()
