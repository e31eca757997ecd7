"""The fused convolutions of the fully fused block (kernels/conv_bn_act.py,
fastgan/ops/conv_bn_act*.py, fastgan/nn/fused_chain.py).

Interpreter tests, as in test_bn_act_triton.py: every check runs in one subprocess under
TRITON_INTERPRET=1 with the triton backend forced (this file, `--worker`), on CPU tensors;
the tests here assert on its per-check results. The same checks run on CUDA tensors in
the `gpu` tests (TF32 off there, so that fp32 is compared with fp32).

Tolerances (docs/ARCHITECTURE.md, "Numerics"), against the reference composite (ATen convolution +
torch ops) in the same dtype: fp64 1e-10 and fp32 2e-5 of the result's scale; bf16/fp16 no
worse than twice that composite's own error against an fp64 run (plus a quarter of an ulp
at the result's scale).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import subprocess
import sys
import zlib

import pytest
import torch
from _testutil import interpreter_tests, interpreter_worker, report_worker_results

import fastgan
from fastgan.ops.conv_bn_act_reference import check_conv_args, reference_conv_bn_act


@dataclasses.dataclass(frozen=True)
class Case:
    transposed: bool
    shape: tuple  # input (N, C_in, H, W)
    c_out: int
    kernel: tuple
    stride: tuple
    padding: tuple
    output_padding: tuple
    dilation: tuple
    dtype: str
    prologue: bool
    slope: float = 0.2
    channels_last: bool = False
    bias: bool = False

    @property
    def id(self) -> str:
        g = lambda t: "x".join(map(str, t))  # noqa: E731
        return (f"{'convT' if self.transposed else 'conv'}-{g(self.shape)}-{self.c_out}-"
                f"k{g(self.kernel)}-s{g(self.stride)}-p{g(self.padding)}-"
                f"op{g(self.output_padding)}-d{g(self.dilation)}-{self.dtype}-"
                f"{'pro' if self.prologue else 'plain'}-s{self.slope}-"
                f"{'cl' if self.channels_last else 'nchw'}{'-bias' if self.bias else ''}")


Z, ONE, TWO = (0, 0), (1, 1), (2, 2)
CASES = [
    # Conv2d: the discriminator's stride-2 k4, 3x3 "same", a rectangular dilated kernel with
    # unequal strides, 70 input channels (two K blocks) and a 1x1 output
    Case(False, (3, 5, 9, 11), 7, (4, 4), TWO, ONE, Z, ONE, "float32", True, 0.2),
    Case(False, (3, 5, 9, 11), 7, (3, 3), ONE, ONE, Z, ONE, "float32", False, bias=True),
    Case(False, (2, 6, 10, 7), 17, (3, 2), (2, 1), (0, 1), Z, (2, 1), "float32", True, 0.0,
         channels_last=True),
    Case(False, (2, 70, 4, 4), 5, (4, 4), ONE, Z, Z, ONE, "float32", True, 0.2),
    Case(False, (3, 5, 9, 11), 7, (4, 4), TWO, ONE, Z, ONE, "bfloat16", True, 0.2),
    Case(False, (2, 6, 10, 7), 9, (3, 3), TWO, Z, Z, ONE, "float16", True, 0.0, bias=True),
    Case(False, (2, 3, 6, 5), 4, (3, 3), TWO, ONE, Z, ONE, "float64", True, 0.2),
    # ConvTranspose2d: the generator's k4 s2 p1 and its first layer from 1x1 (70 output
    # channels: two N blocks), k3 s2 p1 with output_padding, and a dilated rectangular one
    # with stride 3 x 2 (six phases, some taps dead in every phase)
    Case(True, (2, 5, 4, 5), 7, (4, 4), TWO, ONE, Z, ONE, "float32", True, 0.0),
    Case(True, (3, 9, 1, 1), 70, (4, 4), ONE, Z, Z, ONE, "float32", False),
    Case(True, (2, 5, 4, 5), 7, (3, 3), TWO, ONE, ONE, ONE, "float32", True, 0.2,
         channels_last=True, bias=True),
    Case(True, (2, 3, 5, 4), 9, (3, 4), (3, 2), (0, 2), (2, 1), (2, 1), "float32", True, 0.2),
    Case(True, (2, 5, 4, 5), 7, (4, 4), TWO, ONE, Z, ONE, "bfloat16", True, 0.0),
    Case(True, (2, 6, 3, 4), 8, (3, 3), TWO, Z, ONE, ONE, "float16", True, 0.2),
    Case(True, (2, 3, 3, 2), 4, (4, 4), TWO, ONE, Z, ONE, "float64", True, 0.0, bias=True),
]


def _tensors(case: Case, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    N, C, H, W = case.shape
    wshape = (C, case.c_out, *case.kernel) if case.transposed else (case.c_out, C, *case.kernel)
    fan = C * case.kernel[0] * case.kernel[1]
    x = torch.randn(case.shape, generator=g) + 0.3
    w = torch.randn(wshape, generator=g) / fan ** 0.5
    b = torch.randn(case.c_out, generator=g) if case.bias else None
    s = torch.rand(C, generator=g) + 0.5 if case.prologue else None
    t = torch.randn(C, generator=g) * 0.5 if case.prologue else None
    gz = torch.randn((N, case.c_out, 1, 1), generator=g)  # broadcast below
    gm = torch.randn(case.c_out, generator=g)
    gv = torch.randn(case.c_out, generator=g)
    stat = torch.float64 if dtype == torch.float64 else torch.float32

    def put(v, dt):
        return None if v is None else v.to(device=device, dtype=dt)

    x = put(x, dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, put(w, dtype), put(b, dtype), put(s, stat), put(t, stat)), \
        (put(gz, dtype), put(gm, stat), put(gv, stat))


def _run(fn, case: Case, inputs, grads):
    """(z, mean, var) and the gradients of the present inputs, for upstream gradients
    g_z (a random field), g_mean, g_var."""
    leaves = [None if v is None else v.detach().clone().requires_grad_() for v in inputs]
    z, mean, var = fn(*leaves, case.slope, case.transposed, case.stride, case.padding,
                      case.output_padding, case.dilation, True)
    gz = grads[0].expand_as(z) * torch.linspace(-1, 1, z.numel() // z.shape[0] // z.shape[1],
                                                device=z.device, dtype=z.dtype).view(
        1, 1, z.shape[2], z.shape[3])
    present = [v for v in leaves if v is not None]
    gs = torch.autograd.grad((z, mean, var), present, (gz, grads[1], grads[2]))
    return [z, mean, var, *gs]


def _ops_conv_bn_act(*args):
    from fastgan.ops.conv_bn_act import conv_bn_act
    return conv_bn_act(*args)


NAMES = ("z", "mean", "var", "grad x", "grad weight", "grad bias", "grad scale",
         "grad shift")


def _names(case: Case) -> list[str]:
    present = [True, True, case.bias, case.prologue, case.prologue]
    return list(NAMES[:3]) + [n for n, p in zip(NAMES[3:], present) if p]


def _ulp(dtype: torch.dtype) -> float:
    return {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}.get(dtype, 0.0)


def check_case(case: Case, device: str) -> list[str]:
    dtype = getattr(torch, case.dtype)
    inputs, grads = _tensors(case, device, dtype)
    ours = _run(_ops_conv_bn_act, case, inputs, grads)
    eager = _run(reference_conv_bn_act, case, inputs, grads)
    fails = []
    if ours[0].shape != eager[0].shape:
        return [f"z: shape {tuple(ours[0].shape)}, eager {tuple(eager[0].shape)}"]
    if dtype in (torch.bfloat16, torch.float16):
        d64 = [None if v is None else v.double() for v in inputs]
        g64 = [v.double() for v in grads]
        ref = _run(reference_conv_bn_act, case, d64, g64)
    for name, a, e in zip(_names(case), ours, eager):
        if a.dtype != e.dtype or a.shape != e.shape:
            fails.append(f"{name}: {a.dtype} {tuple(a.shape)}, eager {e.dtype} {tuple(e.shape)}")
            continue
        a64, e64 = a.double().cpu(), e.double().cpu()
        scale = max(e64.abs().max().item(), 1e-30)
        err = (a64 - e64).abs().max().item()
        if dtype in (torch.bfloat16, torch.float16):
            r64 = ref[_names(case).index(name)].double().cpu()
            err = (a64 - r64).abs().max().item()
            bound = 2 * (e64 - r64).abs().max().item() + 0.25 * _ulp(a.dtype) * scale
        else:
            bound = (1e-10 if dtype == torch.float64 else 2e-5) * scale
        if not err <= bound:
            fails.append(f"{name}: error {err:.3e} > {bound:.3e} (scale {scale:.3g})")
    return fails


def check_epilogue(device: str) -> list[str]:
    """Inference epilogue (out_scale / out_shift / out_slope): the block's own BatchNorm
    and activation applied to z as it is written; no backward (a clear error)."""
    from fastgan.ops.conv_bn_act import conv_bn_act
    fails = []
    for case in (CASES[1], CASES[11], CASES[6]):  # conv fp32 + bias, convT bf16, conv fp64
        dtype = getattr(torch, case.dtype)
        (x, w, b, s, t), _ = _tensors(case, device, dtype)
        stat = torch.float64 if dtype == torch.float64 else torch.float32
        os_ = torch.rand(case.c_out, device=device, dtype=stat) + 0.5
        ot = torch.randn(case.c_out, device=device, dtype=stat)
        args = (s, t, case.slope, case.transposed, case.stride, case.padding,
                case.output_padding, case.dilation, False, os_, ot, 0.1)
        with torch.no_grad():
            ours = conv_bn_act(x, w, b, *args)[0]
            eager = reference_conv_bn_act(x, w, b, *args)[0]
            ref = reference_conv_bn_act(*(None if v is None else v.double() for v in (x, w, b)),
                                        *args)[0]
        e64, r64, a64 = eager.double(), ref.double(), ours.double()
        scale = max(e64.abs().max().item(), 1e-30)
        err = (a64 - (r64 if dtype in (torch.bfloat16,) else e64)).abs().max().item()
        bound = (2 * (e64 - r64).abs().max().item() + 0.25 * _ulp(dtype) * scale
                 if dtype == torch.bfloat16 else (1e-10 if dtype == torch.float64 else 2e-5) * scale)
        if not err <= bound:
            fails.append(f"{case.id}: error {err:.3e} > {bound:.3e}")
    try:
        conv_bn_act(x.requires_grad_(), w, b, *args)
        fails.append("no error for autograd through the epilogue")
    except RuntimeError as e:
        if "no backward" not in str(e):
            fails.append(f"unclear error: {e}")
    return fails


def check_gradcheck(device: str) -> list[str]:
    """fp64 gradcheck and gradgradcheck (fast mode: random projections) of both fused ops,
    both convolutions, with the prologue, bias and statistics."""
    from fastgan.ops.conv_bn_act import affine_act, conv_bn_act
    fails = []
    torch.manual_seed(0)
    dd = {"device": device, "dtype": torch.float64}
    for transposed in (False, True):
        x = torch.randn(2, 3, 4, 3, **dd).requires_grad_()
        w = (torch.randn(3, 2, 3, 3, **dd) if transposed else torch.randn(2, 3, 3, 3, **dd))
        w.requires_grad_()
        b = torch.randn(2, **dd).requires_grad_()
        s = (torch.rand(3, **dd) + 0.5).requires_grad_()
        t = torch.randn(3, **dd).requires_grad_()

        def f(x, w, b, s, t):
            return conv_bn_act(x, w, b, s, t, 0.2, transposed, (2, 2), (1, 1),
                               (1, 0) if transposed else (0, 0), (1, 1), True)
        for check in (torch.autograd.gradcheck, torch.autograd.gradgradcheck):
            try:
                check(f, (x, w, b, s, t), fast_mode=True, atol=1e-7)
            except Exception as e:
                fails.append(f"{check.__name__} transposed={transposed}: {e}"[:600])
    z = torch.randn(2, 3, 4, 3, **dd).requires_grad_()
    s = (torch.rand(3, **dd) + 0.5).requires_grad_()
    t = torch.randn(3, **dd).requires_grad_()
    for check in (torch.autograd.gradcheck, torch.autograd.gradgradcheck):
        try:
            check(lambda z, s, t: affine_act(z, s, t, 0.2), (z, s, t), fast_mode=True,
                  atol=1e-7)
        except Exception as e:
            fails.append(f"{check.__name__} affine_act: {e}"[:600])
    return fails


def _dcgan_pair(device: str):
    from fastgan.models.dcgan import Discriminator, Generator, weights_init
    torch.manual_seed(0)
    G = Generator(nz=8, ngf=4, nc=1, image_size=16).to(device)
    D = Discriminator(ndf=4, nc=1, sigmoid=False, image_size=16).to(device)
    G.apply(weights_init)
    D.apply(weights_init)
    return G, D


class _Ops(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the names of the ops dispatched."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _close(name: str, a: torch.Tensor, e: torch.Tensor, tol: float) -> list[str]:
    a, e = a.double().cpu(), e.double().cpu()
    scale = max(e.abs().max().item(), 1e-30)
    err = (a - e).abs().max().item()
    return [] if err <= tol * scale else [f"{name}: error {err:.3e} > {tol:.0e} * {scale:.3g}"]


def _state(G, D) -> dict:
    out = {}
    for tag, m in (("G", G), ("D", D)):
        for n, p in m.named_parameters():
            out[f"{tag}.{n}.grad"] = p.grad
        for n, b in m.named_buffers():
            out[f"{tag}.{n}"] = b
    return out


def check_chain(device: str) -> list[str]:
    """A converted DCGAN pair (chains of stride-2 ConvTranspose2d / Conv2d blocks, the
    plain first and last convolutions as chain tails and heads) trains a step with an R1
    penalty on real images (double backward), then samples in eval, as eager does it,
    with no ATen convolution dispatched."""
    G, D = _dcgan_pair(device)
    Gf, Df = fastgan.convert(copy.deepcopy(G)), fastgan.convert(copy.deepcopy(D))
    noise = torch.randn(5, 8, 1, 1, device=device)
    real = torch.rand(5, 1, 16, 16, device=device) * 2 - 1

    def step(g, d, ops):
        with ops:  # a plain training step: forward and backward, all in fused convolutions
            fake = g(noise)
            d(fake).square().mean().backward()
        x = real.clone().requires_grad_()
        out_real = d(x)  # R1: its double backward may run the reference (ATen) composite
        (gx,) = torch.autograd.grad(out_real.sum(), x, create_graph=True)
        (out_real.mean() + gx.square().sum() * 0.5).backward()
        return fake.detach(), out_real.detach()

    eager = step(G, D, contextlib.nullcontext())
    ops = _Ops()
    ours = step(Gf, Df, ops)
    convs = sorted(n for n in ops.names if "convolution" in n)
    fails = [f"ATen convolution dispatched: {convs}"] if convs else []
    fails += _close("fake", ours[0], eager[0], 2e-5) + _close("D(real)", ours[1], eager[1], 2e-5)
    se, so = _state(G, D), _state(Gf, Df)
    for k, v in se.items():
        if (v is None) != (so[k] is None):
            fails.append(f"{k}: eager {'None' if v is None else 'a tensor'}, fastgan "
                         f"{'None' if so[k] is None else 'a tensor'}")
        elif v is not None:
            fails += _close(k, so[k], v, 2e-5 if v.is_floating_point() else 0)
    for m in (G, D, Gf, Df):
        m.eval()
    with torch.no_grad():
        with _Ops() as ops:
            sample = Gf(noise)
        fails += _close("eval G", sample, G(noise), 2e-5)
    if any("convolution" in n for n in ops.names):
        fails.append("eval: an ATen convolution was dispatched")
    return fails


def check_memory(device: str) -> list[str]:
    """One saved activation-sized tensor per block: a chain of three blocks saves its
    input and each block's pre-normalisation output, nothing else of that size."""
    torch.manual_seed(0)
    layers = []
    for c_in, c_out in ((4, 8), (8, 8), (8, 4)):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(c_out),
                   torch.nn.LeakyReLU(0.2)]
    model = fastgan.convert(torch.nn.Sequential(*layers).to(device))
    x = torch.randn(4, 4, 8, 8, device=device, requires_grad=True)  # larger than a weight
    saved = {}

    def pack(t):
        if t.numel() >= x.numel():
            saved[t.untyped_storage().data_ptr()] = tuple(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    y.sum().backward()
    return [] if len(saved) == 4 else [f"saved {len(saved)} activation-sized tensors "
                                       f"(want 4: the input and 3 block outputs): {saved}"]


class _Custom(torch.nn.Module):
    """A module that calls its layers itself: converted by tracing (fastgan/nn/traced.py)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.ConvTranspose2d(6, 5, 4, 2, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(5)
        self.conv2 = torch.nn.Conv2d(5, 4, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(4)
        self.out = torch.nn.Conv2d(4, 3, 3, 1, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.nn.functional.leaky_relu(self.bn2(self.conv2(x)), 0.2)
        return torch.tanh(self.out(x))


def check_traced(device: str) -> list[str]:
    """A traced module's two consecutive blocks run as one linked chain and its plain
    convolution in the fused convolution too; same numbers as eager. Saved by the
    forward: the input, both blocks' z, the chain's output (the plain convolution's
    input) and the Tanh's output; unlinked blocks would add the first block's output."""
    torch.manual_seed(0)
    eager = _Custom().to(device)
    fused = fastgan.convert(copy.deepcopy(eager))
    x = torch.randn(3, 6, 6, 7, device=device)  # larger than any weight
    outs, saved = [], {}

    def pack(t):
        if t.numel() >= x.numel():
            saved[t.untyped_storage().data_ptr()] = tuple(t.shape)
        return t

    for m, ctx in ((eager, contextlib.nullcontext()), (fused, _Ops())):
        xx = x.clone().requires_grad_()
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if m is fused \
            else contextlib.nullcontext()
        with ctx:
            with hooks:
                y = m(xx)
            (y * torch.arange(y.numel(), device=device).view_as(y).sin()).sum().backward()
        outs.append([y.detach(), xx.grad] + [p.grad for p in m.parameters()] + list(m.buffers()))
    fails = [] if not any("convolution" in n for n in ctx.names) else ["ATen convolution ran"]
    if len(saved) != 5:
        fails.append(f"saved {len(saved)} activation-sized tensors, want 5 (linked chain): "
                     f"{sorted(saved.values())}")
    for i, (a, e) in enumerate(zip(outs[1], outs[0])):
        fails += _close(f"output/grad/buffer {i}", a, e, 2e-5)
    return fails


def check_opcheck(device: str, utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor", "test_aot_dispatch_dynamic")):
    from fastgan.ops import conv_bn_act_triton as T
    torch.manual_seed(0)
    fails = []
    x = torch.randn(2, 3, 5, 4, device=device, requires_grad=True)
    w = torch.randn(3, 4, 4, 4, device=device, requires_grad=True)
    s = (torch.rand(3, device=device) + 0.5).requires_grad_()
    t = torch.randn(3, device=device).requires_grad_()
    geo = (True, [2, 2], [1, 1], [0, 0], [1, 1])
    z, mean, _ = T.triton_conv_bn_act(x.detach(), w.detach(), None, s.detach(), t.detach(), 0.2,
                                      *geo, True)
    calls = [
        (torch.ops.fastgan.triton_conv_bn_act.default, (x, w, None, s, t, 0.2, *geo, True)),
        (torch.ops.fastgan.triton_conv_bn_act.default,
         (x, w, None, None, None, 0.0, *geo, False)),
        (torch.ops.fastgan.triton_conv_bn_act_backward.default,
         (torch.randn_like(z), torch.randn_like(mean), torch.randn_like(mean), x.detach(),
          w.detach(), s.detach(), t.detach(), 0.2, z, mean, True, [2, 2], [1, 1], [1, 1], False,
          [True, True, False, True, True])),
        (torch.ops.fastgan.triton_affine_act.default, (z.detach().requires_grad_(),
                                                       mean.clone().requires_grad_(),
                                                       mean.clone().requires_grad_(), 0.2)),
        (torch.ops.fastgan.triton_affine_act_backward.default,
         (torch.randn_like(z), z, mean, mean, 0.2)),
    ]
    for op, args in calls:
        try:
            torch.library.opcheck(op, args, test_utils=list(utils))
        except Exception as e:
            fails.append(f"opcheck {op}: {type(e).__name__}: {e}"[:800])
    return fails


EXTRA_CHECKS = {"epilogue": check_epilogue, "gradcheck": check_gradcheck, "chain": check_chain,
                "memory": check_memory, "traced": check_traced}
INTERP_OPCHECK = ("test_schema", "test_autograd_registration")  # fake tensors need a GPU


def _run_worker() -> None:
    results, run = interpreter_worker()
    for case in CASES:
        run(case.id, check_case, case, "cpu")
    for name, fn in EXTRA_CHECKS.items():
        run(name, fn, "cpu")
    run("opcheck", check_opcheck, "cpu", INTERP_OPCHECK)
    report_worker_results(results)


INTERP_IDS = [c.id for c in CASES] + list(EXTRA_CHECKS) + ["opcheck"]


interp_results, test_interpreter = interpreter_tests(__file__, INTERP_IDS)


# ---------------------------------------------------------------------------
# Main process: argument checks, laziness, and when the chain is taken.

@pytest.mark.parametrize("bad, match", [
    ({"x": torch.randn(2, 3, 4)}, "must be 4-D"),
    ({"x": torch.randn(2, 5, 4, 4)}, "input has 5 channels"),
    ({"w": torch.randn(4, 3, 3, 3, dtype=torch.float64)}, "weight and bias must have"),
    ({"s": torch.ones(3)}, "scale and shift go together"),
    ({"s": torch.ones(2), "t": torch.ones(2)}, r"scale and shift must have shape \(3,\)"),
    ({"stride": [0, 1]}, "stride must be two ints >= 1"),
    ({"x": torch.zeros(2, 3, 4, 4, dtype=torch.int32)}, "input dtype must be"),
])
def test_argument_errors(bad, match):
    args = {"x": torch.randn(2, 3, 4, 4), "w": torch.randn(4, 3, 3, 3), "s": None, "t": None,
            "stride": [1, 1]}
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        check_conv_args("op", args["x"], args["w"], None, args["s"], args["t"], False,
                        args["stride"], [0, 0], [0, 0], [1, 1], True)


def test_triton_ops_are_lazy():
    code = ("import sys, fastgan, fastgan.nn; "
            "assert 'fastgan.ops.conv_bn_act_triton' not in sys.modules; "
            "assert 'fastgan.kernels.conv_bn_act' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="checks the default")
def test_chain_not_taken_by_default():
    from fastgan.ops.conv_bn_act import chain_enabled
    assert not chain_enabled(torch.randn(2, 3, 4, 4))


# ---------------------------------------------------------------------------
# GPU: the same checks on CUDA tensors with the compiled kernels.

@pytest.fixture
def triton_fp32():
    pytest.importorskip("triton")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with fastgan.use_backend("triton"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.gpu
@pytest.mark.usefixtures("triton_fp32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_parity(case):
    fails = check_case(case, "cuda")
    assert not fails, "\n".join(fails)


@pytest.mark.parametrize("name", list(EXTRA_CHECKS) + ["opcheck"])
@pytest.mark.gpu
@pytest.mark.usefixtures("triton_fp32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_checks(name):
    fails = {**EXTRA_CHECKS, "opcheck": check_opcheck}[name]("cuda")
    assert not fails, "\n".join(fails)


@pytest.mark.gpu
@pytest.mark.usefixtures("triton_fp32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_compile_fullgraph():
    G, _ = _dcgan_pair("cuda")
    Gf = fastgan.convert(copy.deepcopy(G))
    compiled = torch.compile(Gf, fullgraph=True)
    noise = torch.randn(16, 8, 1, 1, device="cuda")
    a, b = compiled(noise), G(noise)
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    for (n, p), (_, q) in zip(Gf.named_parameters(), G.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)


if __name__ == "__main__" and "--worker" in sys.argv:
    _run_worker()
