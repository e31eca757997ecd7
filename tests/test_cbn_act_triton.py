"""The `triton` backend of cbn_act (kernels/cbn_act.py, fastgan/ops/cbn_act_triton.py).

Interpreter tests as tests/test_bn_act_triton.py's: every case runs in one subprocess
(this file, `--worker`) under TRITON_INTERPRET=1 with the triton backend forced, on small
odd shapes; the tests here check its per-case results. The same checks run in-process on
CUDA tensors in the `gpu` tests, which skip without a device.

Tolerances (docs/ARCHITECTURE.md, "Numerics"): fp32 ~1e-5 relative to the eager composite,
fp64 1e-10; bf16/fp16 no worse than twice eager's own error against an fp64 run of the
composite (plus a quarter of an ulp at the tensor's scale).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from _testutil import interpreter_tests, interpreter_worker, report_worker_results

import fastgan
from fastgan.ops import cbn_act as CB

K = 3  # classes
ODD = (3, 5, 7, 7)
ONE = (4, 6, 1, 1)


@dataclasses.dataclass(frozen=True)
class Case:
    shape: tuple
    dtype: str
    channels_last: bool
    training: bool
    slope: float
    momentum: float | None = 0.1

    @property
    def id(self) -> str:
        return (f"{'x'.join(map(str, self.shape))}-{self.dtype}-"
                f"{'cl' if self.channels_last else 'nchw'}-{'train' if self.training else 'eval'}-"
                f"s{self.slope}-m{self.momentum}")


CASES = [
    Case(ODD, "float32", False, True, 0.2),
    Case(ODD, "float32", True, True, 0.0, None),
    Case(ODD, "float32", True, False, 0.2),
    Case(ODD, "bfloat16", False, True, 0.0),
    Case(ODD, "float16", True, True, 0.2),
    Case(ONE, "float32", False, True, 0.0),
    Case((1, 5, 3, 4), "float32", True, False, 0.2),  # N = 1 in eval
    Case(ODD, "float64", False, True, 0.2),
]


def _composite(x, y, weight, bias, rm, rv, training, momentum, slope):
    return F.leaky_relu(F.batch_norm(x, rm, rv, None, None, training, momentum, 1e-5)
                        * weight[y][:, :, None, None] + bias[y][:, :, None, None], slope)


def _step(fn, x, weight, bias, g):
    xi = x.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    b = bias.detach().clone().requires_grad_()
    out = fn(xi, w, b)
    out.backward(g)
    return [out.detach(), xi.grad, w.grad, b.grad]


def check_case(case: Case, device: str) -> list[str]:
    torch.manual_seed(0)
    dtype = getattr(torch, case.dtype)
    N, C = case.shape[:2]
    x = (torch.randn(case.shape, dtype=torch.float64, device=device) * 2 + 1)
    g = torch.randn(case.shape, dtype=torch.float64, device=device)
    if case.channels_last:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    y = torch.randint(0, K, (N,), device=device)
    weight = torch.rand(K, C, dtype=torch.float64, device=device) + 0.5
    bias = torch.randn(K, C, dtype=torch.float64, device=device) * 0.3
    rm0 = torch.randn(C, dtype=torch.float64, device=device) * 0.2
    rv0 = torch.rand(C, dtype=torch.float64, device=device) + 0.5
    momentum = 0.25 if case.momentum is None else case.momentum  # a factor as module_args gives

    def run(d, fused):
        rm, rv = rm0.to(d).clone(), rv0.to(d).clone()

        def fn(xi, w, b):
            if fused:
                with fastgan.use_backend("triton"):
                    return fastgan.functional.conditional_batch_norm_act(
                        xi, w[y], b[y], rm, rv, case.training, momentum, 1e-5, case.slope)
            return _composite(xi, y, w, b, rm, rv, case.training, momentum, case.slope)

        outs = _step(fn, x.to(d), weight.to(d), bias.to(d), g.to(d))
        return outs + [rm, rv]

    ours, eager = run(dtype, True), run(dtype, False)
    ref = run(torch.float64, False)
    fails = []
    names = ["out", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var"]
    for name, a, e, r in zip(names, ours, eager, ref):
        a, e = a.double(), e.double()
        scale = max(1.0, r.abs().max().item())
        if dtype == torch.float64:
            tol = 1e-10 * scale
        elif dtype == torch.float32:
            tol = 2e-5 * scale
        else:
            ulp = 2.0 ** (-8 if dtype == torch.bfloat16 else -11)
            tol = 2 * (e - r).abs().max().item() + 0.25 * ulp * scale
        err = (a - r).abs().max().item() if dtype not in (torch.float32, torch.float64) \
            else (a - e).abs().max().item()
        if not err <= tol:
            fails.append(f"{name}: error {err:.3e} > {tol:.3e}")
    if case.channels_last and min(case.shape[2:]) > 1 and \
            not ours[0].is_contiguous(memory_format=torch.channels_last):
        fails.append("output is not channels_last")
    return fails


def check_masks(device: str) -> list[str]:
    """Each output of the backward op alone equals the same output of the full call."""
    from fastgan.ops import cbn_act_triton as T
    torch.manual_seed(1)
    x = torch.randn(2, 5, 3, 5, device=device)
    s, b = torch.randn(2, 5, device=device), torch.randn(2, 5, device=device)
    _, mean, var = T.triton_cbn_act_forward(x, s, b, None, None, True, 1e-5, 0.2)
    g = torch.randn_like(x)
    full = T.triton_cbn_act_backward(g, x, s, b, mean, var, True, 1e-5, 0.2, [True] * 3)
    fails = []
    for i in range(3):
        mask = [j == i for j in range(3)]
        part = T.triton_cbn_act_backward(g, x, s, b, mean, var, True, 1e-5, 0.2, mask)
        if not torch.allclose(part[i], full[i], rtol=1e-6, atol=1e-6):
            fails.append(f"output {i} alone differs")
        if any(part[j].numel() for j in range(3) if j != i):
            fails.append(f"mask {mask}: outputs masked off are not empty")
    return fails


def check_gradcheck(device: str) -> list[str]:
    torch.manual_seed(2)
    # small: every element of the inputs costs two interpreted forward calls
    x = torch.randn(2, 2, 2, 1, dtype=torch.float64, device=device, requires_grad=True)
    s = torch.randn(2, 2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, 2, dtype=torch.float64, device=device, requires_grad=True)

    def f(x, s, b):
        with fastgan.use_backend("triton"):
            return fastgan.functional.conditional_batch_norm_act(x, s, b, negative_slope=0.2)

    fails = []
    if not torch.autograd.gradcheck(f, (x, s, b)):
        fails.append("gradcheck")
    if not torch.autograd.gradgradcheck(f, (x, s, b)):
        fails.append("gradgradcheck")
    return fails


def check_opcheck(device: str) -> list[str]:
    from fastgan.ops import cbn_act_triton as T
    torch.manual_seed(3)
    fails = []
    for cl in (False, True):
        x = torch.randn(3, 4, 3, 5, device=device)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        s, b = torch.randn(3, 4, device=device), torch.randn(3, 4, device=device)
        rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
        try:
            torch.library.opcheck(T.triton_cbn_act_forward,
                                  (x.requires_grad_(), s, b, rm, rv, False, 1e-5, 0.2),
                                  test_utils=("test_schema", "test_autograd_registration"))
            _, mean, var = T.triton_cbn_act_forward(x, s, b, None, None, True, 1e-5, 0.2)
            torch.library.opcheck(T.triton_cbn_act_backward,
                                  (torch.randn_like(x), x.detach(), s, b, mean, var, True, 1e-5,
                                   0.2, [True, True, True]),
                                  test_utils=("test_schema",))
        except Exception as e:  # noqa: BLE001  (reported as a failure of this check)
            fails.append(f"channels_last={cl}: {type(e).__name__}: {str(e)[:500]}")
    return fails


EXTRA_CHECKS = {"masks": check_masks, "gradcheck": check_gradcheck, "opcheck": check_opcheck}


def _run_worker() -> None:
    results, run = interpreter_worker()
    run("backend", lambda: [] if CB._backend.select(
        "cbn_act", torch.device("cpu"), CB.KERNELS) == "triton" else ["triton not selected"])
    for case in CASES:
        run(case.id, check_case, case, "cpu")
    for name, fn in EXTRA_CHECKS.items():
        run(name, fn, "cpu")
    report_worker_results(results)


INTERP_IDS = ["backend"] + [c.id for c in CASES] + list(EXTRA_CHECKS)


interp_results, test_interpreter = interpreter_tests(__file__, INTERP_IDS)


def test_triton_listed_and_lazy():
    pytest.importorskip("triton")
    assert "triton" in CB.KERNELS
    code = ("import sys, fastgan; "
            "assert 'fastgan.ops.cbn_act_triton' not in sys.modules; "
            "assert 'fastgan.kernels.cbn_act' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="interpreted kernels run eagerly on fake tensors")
def test_fake_tensors_match_the_compiled_op():
    """The triton_ops' outputs (shapes, dtypes, strides) match fastgan::cbn_act_*'s fake
    kernels, for both layouts and every dtype; no kernel runs."""
    pytest.importorskip("triton")
    if not hasattr(torch.ops.fastgan, "cbn_act_forward"):
        pytest.skip("fastgan._C is not built")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastgan.ops import cbn_act_triton  # noqa: F401  (registers the ops)
    ops = torch.ops.fastgan

    def meta(ts):
        return [(tuple(t.shape), t.dtype, t.stride()) for t in ts]

    with FakeTensorMode():
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            for cl in (False, True):
                x = torch.empty(ODD, dtype=dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                s = torch.empty(ODD[:2])
                rm = torch.empty(ODD[1], dtype=torch.float64 if dtype == torch.float64
                                 else torch.float32)
                for training in (True, False):
                    args = (x, s, s, rm, rm, training, 1e-5, 0.2)
                    fwd = ops.triton_cbn_act_forward(*args)
                    assert meta(fwd) == meta(ops.cbn_act_forward(*args[:6], 0.1, *args[6:]))
                    for mask in ([True, True, True], [False, True, False]):
                        bargs = (fwd[0], x, s, s, fwd[1], fwd[2], training, 1e-5, 0.2, mask)
                        assert meta(ops.triton_cbn_act_backward(*bargs)) == \
                            meta(ops.cbn_act_backward(*bargs))


# ---------------------------------------------------------------------------
# GPU: the same checks on CUDA tensors with the compiled kernels.

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def triton_backend():
    pytest.importorskip("triton")
    with fastgan.use_backend("triton"):
        yield


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@needs_gpu
def test_gpu_parity(case):
    fails = check_case(case, "cuda")
    assert not fails, "\n".join(fails)


@pytest.mark.parametrize("name", list(EXTRA_CHECKS))
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@needs_gpu
def test_gpu_checks(name):
    fails = EXTRA_CHECKS[name]("cuda")
    assert not fails, "\n".join(fails)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.gpu
@needs_gpu
def test_gpu_compile_fullgraph(channels_last):
    torch.manual_seed(0)
    fused = fastgan.nn.ConditionalBatchNormAct2d(64, 10, negative_slope=0.0, device="cuda")
    ref = fastgan.nn.ConditionalBatchNormAct2d(64, 10, negative_slope=0.0, device="cuda")
    compiled = torch.compile(fused, fullgraph=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for _ in range(2):
        x = torch.randn(16, 64, 8, 8, device="cuda").contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (16,), device="cuda")
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = compiled(xa, y)
        with fastgan.use_backend("reference"):
            yb = ref(xb, y)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.running_var, ref.running_var)


if __name__ == "__main__" and "--worker" in sys.argv:
    _run_worker()
