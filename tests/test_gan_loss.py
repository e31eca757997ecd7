"""Tests of the combined GAN loss op (fastgan.functional.gan_loss, fastgan.nn.GANLoss).

The oracle is the eager formula of each kind written with plain torch.nn.functional
calls (binary_cross_entropy_with_logits, mse_loss, relu), as a user would write it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.functional import GANLosses, gan_loss
from fastgan.ops import gan_loss as gl_ops

KINDS = ("minimax", "ns", "lsgan", "hinge", "wgan", "rpgan")
UNPAIRED = KINDS[:-1]  # the kinds whose real and fake batches may differ in size
REDUCTIONS = ("mean", "sum")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

needs_ext = pytest.mark.skipif("cpu" not in gl_ops.KERNELS,
                               reason="fastgan._C (cpu backend) is not built")
BACKENDS = [pytest.param("cpu", marks=needs_ext), "reference"]


@pytest.fixture
def compiled_op():
    """Runs the test on the compiled op (whatever FASTGAN_BACKEND says)."""
    if "cpu" not in gl_ops.KERNELS:
        pytest.skip("fastgan._C (cpu backend) is not built")
    with fastgan.use_backend("cpu"):
        yield


def eager(real: torch.Tensor, fake: torch.Tensor, kind: str, reduction: str = "mean",
          real_label: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_loss, g_loss) as a user writes them in eager PyTorch."""
    r, f = real.reshape(-1), fake.reshape(-1)
    red = torch.mean if reduction == "mean" else torch.sum
    if kind in ("minimax", "ns"):
        bce = F.binary_cross_entropy_with_logits
        d = (bce(r, torch.full_like(r, real_label), reduction=reduction)
             + bce(f, torch.zeros_like(f), reduction=reduction))
        if kind == "ns":
            g = bce(f, torch.ones_like(f), reduction=reduction)
        else:
            g = -bce(f, torch.zeros_like(f), reduction=reduction)
    elif kind == "lsgan":
        d = (0.5 * F.mse_loss(r, torch.ones_like(r), reduction=reduction)
             + 0.5 * F.mse_loss(f, torch.zeros_like(f), reduction=reduction))
        g = 0.5 * F.mse_loss(f, torch.ones_like(f), reduction=reduction)
    elif kind == "hinge":
        d = red(F.relu(1.0 - r)) + red(F.relu(1.0 + f))
        g = -red(f)
    elif kind == "rpgan":  # R3GAN's relativistic pairing loss, one reduction over the pairs
        # softplus(x) as -logsigmoid(-x): F.softplus turns linear above x = 20, so its
        # gradient there is 1 instead of sigmoid(x) (off by up to 2e-9: too far for fp64)
        d = red(-F.logsigmoid(r - f))
        g = red(-F.logsigmoid(f - r))
    else:
        d = red(f) - red(r)
        g = -red(f)
    return d, g


def grads(loss: torch.Tensor, real: torch.Tensor, fake: torch.Tensor):
    gr, gf = torch.autograd.grad(loss, (real, fake), allow_unused=True)
    return (torch.zeros_like(real) if gr is None else gr,
            torch.zeros_like(fake) if gf is None else gf)


def logits(n, dtype=torch.float64, seed=0, scale=3.0, shape=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * scale
    if shape is not None:
        x = x.reshape(shape)
    return x.to(dtype).requires_grad_()


# ---------------------------------------------------------------------------
# Values and gradients against eager, fp64

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", UNPAIRED)
@pytest.mark.parametrize("nr,nf,backend", [
    *[pytest.param(nr, nf, b, marks=[needs_ext] if b == "cpu" else [])
      for nr, nf in ((1, 1), (37, 5), (5, 37)) for b in ("cpu", "reference")],
    # 10^6: the compiled kernel's blocked, multi-threaded sums (the reference is torch's own)
    pytest.param(10**6, 10**6 - 3, "cpu", marks=needs_ext),
])
def test_matches_eager_fp64(kind, reduction, nr, nf, backend):
    real, fake = logits(nr, seed=1), logits(nf, seed=2)
    with fastgan.use_backend(backend):
        out = gan_loss(real, fake, kind, reduction)
    d_ref, g_ref = eager(real, fake, kind, reduction)
    tol = dict(rtol=1e-10, atol=1e-12)
    assert isinstance(out, GANLosses)
    for t in out:
        assert t.dtype == torch.float64 and t.shape == ()
    torch.testing.assert_close(out.d_loss, d_ref, **tol)
    torch.testing.assert_close(out.g_loss, g_ref, **tol)
    torch.testing.assert_close(out.d_real, torch.sigmoid(real).mean().detach(), **tol)
    torch.testing.assert_close(out.d_fake, torch.sigmoid(fake).mean().detach(), **tol)
    assert not out.d_real.requires_grad and not out.d_fake.requires_grad
    for ours, ref in ((out.d_loss, d_ref), (out.g_loss, g_ref)):
        for a, b in zip(grads(ours, real, fake), grads(ref, real, fake)):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n,backend", [
    *[pytest.param(n, b, marks=[needs_ext] if b == "cpu" else [])
      for n in (1, 7, 333) for b in ("cpu", "reference")],
    pytest.param(10**6 - 3, "cpu", marks=needs_ext),  # several runs, several threads
])
def test_rpgan_matches_eager_fp64(reduction, n, backend):
    """rpgan against its eager expression: values, and the gradients of both inputs from
    d_loss and g_loss each (g_loss reaches the real logits too)."""
    real, fake = logits(n, seed=1), logits(n, seed=2)
    with fastgan.use_backend(backend):
        out = gan_loss(real, fake, "rpgan", reduction)
    d_ref, g_ref = eager(real, fake, "rpgan", reduction)
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.d_loss, d_ref, **tol)
    torch.testing.assert_close(out.g_loss, g_ref, **tol)
    torch.testing.assert_close(out.d_real, torch.sigmoid(real).mean().detach(), **tol)
    torch.testing.assert_close(out.d_fake, torch.sigmoid(fake).mean().detach(), **tol)
    assert not out.d_real.requires_grad and not out.d_fake.requires_grad
    for ours, ref in ((out.d_loss, d_ref), (out.g_loss, g_ref)):
        gr, gf = torch.autograd.grad(ours, (real, fake))
        rr, rf = torch.autograd.grad(ref, (real, fake))
        torch.testing.assert_close(gr, rr, **tol)
        torch.testing.assert_close(gf, rf, **tol)


@needs_ext
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", (1, 7, 333))
def test_rpgan_cpu_matches_reference(n, dtype, reduction):
    """Every dtype, odd sizes (vector tails), a non-contiguous input: the C++ kernel against
    the reference on the same inputs; gradients to one rounding of the input dtype."""
    r0 = logits(n, dtype, seed=3).detach()
    f0 = logits(2 * n, dtype, seed=4).detach()[::2]  # non-contiguous
    res = {}
    for backend in ("cpu", "reference"):
        r, f = r0.clone().requires_grad_(), f0.clone().requires_grad_()
        with fastgan.use_backend(backend):
            out = gan_loss(r, f, "rpgan", reduction)
        (out.d_loss + 2.0 * out.g_loss).backward()
        res[backend] = (*out, r.grad, f.grad)
    low = dtype in (torch.bfloat16, torch.float16)
    for i, (a, b) in enumerate(zip(res["cpu"], res["reference"])):
        assert a.dtype == b.dtype and a.shape == b.shape
        if i < 4:
            tol = 1e-10 if dtype == torch.float64 else 1e-5
        else:
            tol = torch.finfo(dtype).eps if low else (1e-10 if dtype == torch.float64 else 1e-5)
        scale = max(1.0, b.abs().max().item())
        assert (a.double() - b.double()).abs().max().item() <= tol * scale, (i, a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rpgan_gradient_flows(backend):
    """g_loss depends on the real logits: it requires grad when either input does, and
    sends gradient to both; d_loss and g_loss backpropagate separately or together."""
    real, fake = logits(9, seed=40), logits(9, seed=41)
    d_ref, g_ref = eager(real, fake, "rpgan")
    with fastgan.use_backend(backend):
        out = gan_loss(real, fake.detach(), "rpgan")  # the discriminator step
        assert out.g_loss.requires_grad and out.d_loss.requires_grad
        out.g_loss.backward()
        torch.testing.assert_close(real.grad, torch.autograd.grad(g_ref, real,
                                                                  retain_graph=True)[0])
        assert fake.grad is None
        real.grad = None
        out = gan_loss(real.detach(), fake, "rpgan")  # the generator step
        out.g_loss.backward()
        assert real.grad is None
        torch.testing.assert_close(fake.grad, torch.autograd.grad(g_ref, fake,
                                                                  retain_graph=True)[0])
        fake.grad = None
        out = gan_loss(real, fake, "rpgan")
        out.d_loss.backward()
        out.g_loss.backward()
        gr, gf = grads(d_ref + g_ref, real, fake)
        torch.testing.assert_close(real.grad, gr, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fake.grad, gf, rtol=1e-10, atol=1e-12)
        out = gan_loss(real.detach(), fake.detach(), "rpgan")
        assert not out.d_loss.requires_grad and not out.g_loss.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_rpgan_shape_and_label_errors(backend):
    with fastgan.use_backend(backend):
        with pytest.raises(ValueError, match=r"kind='rpgan' pairs real and fake logits.*"
                                             r"real_logits of shape \(4, 2\) and fake_logits "
                                             r"of shape \(7,\)"):
            gan_loss(torch.ones(4, 2), torch.ones(7), "rpgan")
        with pytest.raises(ValueError, match=r"real_label .* not to kind='rpgan'"):
            gan_loss(torch.ones(4), torch.ones(4), "rpgan", real_label=0.9)
        # same number of elements in different shapes: paired after flattening
        out = gan_loss(torch.ones(2, 3), torch.zeros(6), "rpgan")
        d_ref, _ = eager(torch.ones(6), torch.zeros(6), "rpgan")
        torch.testing.assert_close(out.d_loss, d_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ("minimax", "ns"))
def test_label_smoothing(kind, backend):
    real, fake = logits(33, seed=3), logits(17, seed=4)
    with fastgan.use_backend(backend):
        out = gan_loss(real, fake, kind, real_label=0.9)
    d_ref, g_ref = eager(real, fake, kind, real_label=0.9)
    torch.testing.assert_close(out.d_loss, d_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.g_loss, g_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads(out.d_loss, real, fake), grads(d_ref, real, fake)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_any_shape_and_layout(backend):
    real = logits(24, seed=5, shape=(2, 3, 4))
    base = torch.randn(6, 4, dtype=torch.float64)
    fake = base.t().requires_grad_()  # non-contiguous (4, 6)
    with fastgan.use_backend(backend):
        out = gan_loss(real, fake, "ns", "sum")
    d_ref, g_ref = eager(real, fake, "ns", "sum")
    torch.testing.assert_close(out.d_loss, d_ref, rtol=1e-10, atol=1e-12)
    gr, gf = grads(out.d_loss + out.g_loss, real, fake)
    rr, rf = grads(d_ref + g_ref, real, fake)
    assert gr.shape == real.shape and gf.shape == fake.shape
    torch.testing.assert_close(gr, rr, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gf, rf, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("compiled_op")
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_matches_reference_fp32(kind):
    nf = 4099 if kind == "rpgan" else 1000  # rpgan pairs them
    real, fake = logits(4099, torch.float32, seed=6), logits(nf, torch.float32, seed=7)
    out = gan_loss(real, fake, kind)
    with fastgan.use_backend("reference"):
        ref = gan_loss(real, fake, kind)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Gradients: gradcheck, which losses flow, detached fake

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind, reduction, backend):
    real = logits(7, seed=8, scale=1.5)
    fake = logits(7 if kind == "rpgan" else 4, seed=9, scale=1.5)
    label = 0.9 if kind in ("minimax", "ns") else 1.0

    def fn(r, f):
        out = gan_loss(r, f, kind, reduction, real_label=label)
        return out.d_loss, out.g_loss

    with fastgan.use_backend(backend):
        assert torch.autograd.gradcheck(fn, (real, fake), eps=1e-6, atol=1e-8)


@pytest.mark.usefixtures("compiled_op")
@pytest.mark.parametrize("which", ("d", "g", "both"))
@pytest.mark.parametrize("kind", KINDS)
def test_backward_from_either_loss(kind, which):
    real, fake = logits(11, seed=10), logits(11 if kind == "rpgan" else 6, seed=11)
    out = gan_loss(real, fake, kind)
    d_ref, g_ref = eager(real, fake, kind)
    pick = {"d": lambda d, g: d, "g": lambda d, g: g, "both": lambda d, g: 2.0 * d + 3.0 * g}
    pick[which](out.d_loss, out.g_loss).backward()
    ours = (real.grad, fake.grad)
    real.grad = fake.grad = None
    pick[which](d_ref, g_ref).backward()
    if which == "g" and kind != "rpgan":  # g_loss does not depend on the real logits
        assert ours[0] is None and real.grad is None
    else:
        torch.testing.assert_close(ours[0], real.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], fake.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("compiled_op")
def test_detached_fake_and_frozen_real():
    real, fake = logits(9, seed=12), logits(9, seed=13)
    out = gan_loss(real, fake.detach())  # the discriminator step
    out.d_loss.backward()
    assert fake.grad is None and real.grad is not None
    assert not out.g_loss.requires_grad  # as eager's bce(fake.detach(), 1)
    real.grad = None
    out = gan_loss(real.detach(), fake)  # the generator step on fresh logits
    out.g_loss.backward()
    assert real.grad is None
    real.grad = None
    gan_loss(real, fake).g_loss.backward()  # g_loss does not reach the real logits
    assert real.grad is None
    fake.grad = None
    out = gan_loss(real.detach(), fake)
    out.g_loss.backward()
    _, g_ref = eager(real, fake, "ns")
    torch.testing.assert_close(fake.grad, torch.autograd.grad(g_ref, fake)[0])
    out = gan_loss(real.detach(), fake.detach())
    assert not out.d_loss.requires_grad and not out.g_loss.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_losses_backpropagate_separately(backend):
    """As with eager's separate expressions: d_loss.backward() then g_loss.backward()."""
    real, fake = logits(6, seed=30), logits(5, seed=31)
    with fastgan.use_backend(backend):
        out = gan_loss(real, fake)
    out.d_loss.backward()
    out.g_loss.backward()
    d_ref, g_ref = eager(real, fake, "ns")
    gr, gf = grads(d_ref + g_ref, real, fake)
    torch.testing.assert_close(real.grad, gr, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fake.grad, gf, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("compiled_op")
@pytest.mark.parametrize("kind", ("ns", "rpgan"))
def test_double_backward_raises(kind):
    real, fake = logits(5, seed=14), logits(5, seed=15)
    out = gan_loss(real, fake, kind)
    # rpgan: through g_loss too, which reaches the real logits only for this kind
    (gr,) = torch.autograd.grad(out.d_loss + out.g_loss if kind == "rpgan" else out.d_loss,
                                real, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        gr.sum().backward()


@pytest.mark.usefixtures("compiled_op")
def test_inplace_change_of_saved_logits_is_detected():
    real, fake = logits(5, seed=16), logits(5, seed=17)
    r = real * 1.0
    out = gan_loss(r, fake)
    with torch.no_grad():
        r.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.d_loss.backward()


# ---------------------------------------------------------------------------
# dtypes, extremes, autocast

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_extreme_logits_finite(kind, dtype, backend):
    x = torch.tensor([1e4, -1e4, 0.0, 30.0, -30.0], dtype=dtype)
    real, fake = x.clone().requires_grad_(), x.flip(0).clone().requires_grad_()
    with fastgan.use_backend(backend):
        out = gan_loss(real, fake, kind)
    for t in out:
        assert torch.isfinite(t).all(), (kind, dtype, out)
        assert t.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (out.d_loss + out.g_loss).backward()
    assert real.grad.dtype == dtype and fake.grad.dtype == dtype
    assert torch.isfinite(real.grad).all() and torch.isfinite(fake.grad).all()
    # against fp64 eager on the same (rounded) values
    d_ref, g_ref = eager(real.detach().double(), fake.detach().double(), kind)
    torch.testing.assert_close(out.d_loss.double(), d_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.g_loss.double(), g_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_error_within_eager(kind, dtype):
    """bf16/fp16: error against fp64 no worse than twice eager's own (docs/ARCHITECTURE.md, "Numerics")."""
    r64, f64 = logits(301, seed=18), logits(301 if kind == "rpgan" else 203, seed=19)
    d64, g64 = eager(r64, f64, kind)
    gr64 = grads(d64 + g64, r64, f64)
    r, f = (r64.detach().to(dtype).requires_grad_(), f64.detach().to(dtype).requires_grad_())
    # the fp64 oracle of the rounded inputs, so only the computation's error counts
    rr, fr = r.detach().double().requires_grad_(), f.detach().double().requires_grad_()
    d64, g64 = eager(rr, fr, kind)
    gr64 = grads(d64 + g64, rr, fr)
    de, ge = eager(r, f, kind)
    gre = grads(de + ge, r, f)
    out = gan_loss(r, f, kind)
    gro = grads(out.d_loss + out.g_loss, r, f)
    for ours, theirs, ref in ((out.d_loss, de, d64), (out.g_loss, ge, g64),
                              (gro[0], gre[0], gr64[0]), (gro[1], gre[1], gr64[1])):
        err = (ours.double() - ref.detach()).abs().max().item()
        eager_err = (theirs.double() - ref.detach()).abs().max().item()
        assert err <= 2 * eager_err + 1e-6, (err, eager_err)


@pytest.mark.usefixtures("compiled_op")
def test_autocast_bf16():
    torch.manual_seed(0)
    disc = torch.nn.Linear(16, 1)
    xr, xf = torch.randn(32, 16), torch.randn(24, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lr, lf = disc(xr), disc(xf)
        assert lr.dtype == torch.bfloat16
        out = gan_loss(lr, lf)
        d_ref, g_ref = eager(disc(xr), disc(xf), "ns")  # its own graph
    assert out.d_loss.dtype == torch.float32 == d_ref.dtype  # as eager's BCE under autocast
    torch.testing.assert_close(out.d_loss, d_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out.g_loss, g_ref, rtol=1e-2, atol=1e-2)
    (out.d_loss + out.g_loss).backward()
    ours = disc.weight.grad.clone()
    disc.zero_grad()
    (d_ref + g_ref).backward()
    torch.testing.assert_close(ours, disc.weight.grad, rtol=2e-2, atol=2e-3)


def test_mixed_dtypes_promote():
    real, fake = logits(8, torch.float32, seed=20), logits(8, torch.float64, seed=21)
    out = gan_loss(real, fake)
    assert out.d_loss.dtype == torch.float64
    out.d_loss.backward()
    assert real.grad.dtype == torch.float32 and fake.grad.dtype == torch.float64


@pytest.mark.usefixtures("compiled_op")
def test_thread_count_does_not_change_result():
    real, fake = logits(300_001, torch.float32, seed=22), logits(200_003, torch.float32, seed=23)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gan_loss(real, fake, "ns")
        if n == 1:
            torch.set_num_threads(2)
        else:
            torch.set_num_threads(n)
        many = gan_loss(real, fake, "ns")
    finally:
        torch.set_num_threads(n)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# Registration: opcheck, torch.compile, module

@needs_ext
@pytest.mark.parametrize("kind", ("ns", "hinge", "rpgan"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16))
def test_opcheck(kind, dtype):
    real = logits(6 if kind == "rpgan" else 13, dtype, seed=24)
    fake = logits(6, dtype, seed=25, shape=(2, 3))
    torch.library.opcheck(torch.ops.fastgan.gan_loss_forward.default,
                          (real, fake, kind, "mean", 1.0))
    torch.library.opcheck(torch.ops.fastgan.gan_loss_forward.default,
                          (real.detach(), fake.detach(), kind, "sum", 1.0))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.tensor(0.5, dtype=acc)
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(torch.ops.fastgan.gan_loss_backward.default,
                              (g, g, real.detach(), fake.detach(), kind, "mean", 1.0, mask))


@pytest.mark.usefixtures("compiled_op")
@pytest.mark.parametrize("kind", ("ns", "rpgan"))
def test_torch_compile_fullgraph(kind):
    torch._dynamo.reset()

    def step(r, f):
        out = gan_loss(r, f, kind)
        return out.d_loss + out.g_loss, out.d_real

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for n in (16, 40):  # a second size exercises the dynamic-shape path
        nf = n if kind == "rpgan" else n - 3
        real, fake = logits(n, torch.float32, seed=26), logits(nf, torch.float32, seed=27)
        loss, d_real = compiled(real, fake)
        ref_loss, ref_d_real = step(real, fake)
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(d_real, ref_d_real)
        loss.backward()
        gr, gf = real.grad.clone(), fake.grad.clone()
        real.grad = fake.grad = None
        ref_loss.backward()
        torch.testing.assert_close(gr, real.grad)
        torch.testing.assert_close(gf, fake.grad)


def test_module():
    m = fastgan.nn.GANLoss("hinge", "sum")
    assert "kind='hinge'" in repr(m) and list(m.parameters()) == []
    real, fake = logits(9, seed=28), logits(4, seed=29)
    out = m(real, fake)
    ref = gan_loss(real, fake, "hinge", "sum")
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    smoothed = fastgan.nn.GANLoss(real_label=0.9)(real, fake)
    torch.testing.assert_close(smoothed.d_loss, eager(real, fake, "ns", real_label=0.9)[0])
    with pytest.raises(ValueError, match="kind"):
        fastgan.nn.GANLoss("bce")


# ---------------------------------------------------------------------------
# Bad input: clear errors naming the argument

@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((torch.ones(3, dtype=torch.int64), torch.ones(3)), {}, TypeError,
     r"real_logits must be a floating-point tensor.*int64"),
    ((torch.ones(3), torch.ones(3, dtype=torch.int32)), {}, TypeError,
     r"fake_logits must be a floating-point tensor.*int32"),
    ((torch.ones(3), [1.0, 2.0]), {}, TypeError, r"fake_logits must be a Tensor, got list"),
    ((torch.ones(3), torch.ones(3)), {"kind": "bce"}, ValueError,
     r"unknown kind 'bce'; expected one of 'minimax', 'ns', 'lsgan', 'hinge', 'wgan', 'rpgan'"),
    ((torch.ones(3), torch.ones(3)), {"reduction": "none"}, ValueError,
     r"unknown reduction 'none'; expected 'mean' or 'sum'"),
    ((torch.ones(0), torch.ones(3)), {}, ValueError, r"real_logits is empty \(shape \(0,\)\)"),
    ((torch.ones(3), torch.ones(2, 0)), {}, ValueError, r"fake_logits is empty \(shape \(2, 0\)\)"),
    ((torch.ones(3), torch.ones(3, device="meta")), {}, ValueError,
     r"real_logits is on cpu but fake_logits is on meta"),
    ((torch.ones(3), torch.ones(3)), {"real_label": 1.5}, ValueError,
     r"real_label must be in \[0, 1\], got 1.5"),
    ((torch.ones(3), torch.ones(3)), {"kind": "hinge", "real_label": 0.9}, ValueError,
     r"real_label .* not to kind='hinge'"),
])
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gan_loss(*args, **kwargs)


@needs_ext
def test_compiled_op_checks_its_arguments():
    op = torch.ops.fastgan.gan_loss_forward.default
    with pytest.raises(RuntimeError, match="unknown kind 'bce'"):
        op(torch.ones(3), torch.ones(3), "bce", "mean", 1.0)
    with pytest.raises(RuntimeError, match="real_logits must be a floating-point"):
        op(torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64), "ns", "mean", 1.0)
    with pytest.raises(RuntimeError, match="fake_logits is empty"):
        op(torch.ones(3), torch.ones(0), "ns", "mean", 1.0)
    with pytest.raises(RuntimeError, match=r"'rpgan' pairs real and fake logits.*"
                                           r"real_logits of shape \[3\] and fake_logits of "
                                           r"shape \[2, 2\]"):
        op(torch.ones(3), torch.ones(2, 2), "rpgan", "mean", 1.0)
    bwd = torch.ops.fastgan.gan_loss_backward.default
    g = torch.tensor(1.0)
    with pytest.raises(RuntimeError, match="'rpgan' pairs real and fake logits"):
        bwd(g, g, torch.ones(3), torch.ones(4), "rpgan", "mean", 1.0, [True, True])


# ---------------------------------------------------------------------------
# The eager fast path (fastgan._C.gan_loss_eager): the same op as the Python path for
# the common case, and None (so the Python path decides) for everything else.

@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_eager_fast_path_is_the_op(kind, dtype, monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    torch.manual_seed(0)
    r0 = torch.randn(10 if kind == "rpgan" else 37, dtype=dtype) * 3
    f0 = torch.randn(5, 2, dtype=dtype) * 3
    labels = (1.0, 0.9, 1) if kind in ("minimax", "ns") else (1.0, 1)
    for reduction in REDUCTIONS:
        for label in labels:
            fast = gl_ops.try_eager_fast_path(r0, f0, kind, reduction, label)
            assert fast is not None
            rs, fs = r0.clone().requires_grad_(), f0.clone().requires_grad_()
            rf, ff = r0.clone().requires_grad_(), f0.clone().requires_grad_()
            with fastgan.use_backend("cpu"):  # the Python path, same kernel
                slow = GANLosses(*gl_ops.gan_loss(rs, fs, kind, reduction, label))
            got = gan_loss(rf, ff, kind, reduction, real_label=label)
            assert isinstance(got, GANLosses)
            for a, b in zip(got, slow):
                assert a.dtype == b.dtype and torch.equal(a, b)
            (slow.d_loss + 2 * slow.g_loss).backward()
            (got.d_loss + 2 * got.g_loss).backward()
            assert torch.equal(rf.grad, rs.grad) and torch.equal(ff.grad, fs.grad)


@needs_ext
def test_eager_fast_path_defers_everything_else(monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    r, f = torch.randn(4), torch.randn(3)
    fast = gl_ops.try_eager_fast_path
    assert fast(r, f, "ns", "mean", 1.0) is not None
    deferred = [
        (r, f.double(), "ns", "mean", 1.0),          # mixed dtypes: promoted by Python
        (r.int(), f.int(), "ns", "mean", 1.0),       # integer logits: an error there
        (r[:0], f, "ns", "mean", 1.0),               # empty
        (r, f, "nope", "mean", 1.0),                 # unknown kind
        (r, f, "ns", "avg", 1.0),                    # unknown reduction
        (r, f, "ns", "mean", 1.5),                   # label out of range
        (r, f, "ns", "mean", float("nan")),
        (r, f, "ns", "mean", True),                  # bool is not a label
        (r, f, "hinge", "mean", 0.9),                # smoothing only for logistic kinds
        (r, f, "rpgan", "mean", 1.0),                # rpgan pairs them: sizes differ
        (r, r, "rpgan", "mean", 0.9),
        (r.numpy(), f, "ns", "mean", 1.0),           # not a tensor
        (r, f, "ns", "mean", "1.0"),
        (r.to("meta"), f.to("meta"), "ns", "mean", 1.0),  # a device without a kernel here
    ]
    for args in deferred:
        assert fast(*args) is None, args
    with fastgan.use_backend("reference"):
        assert fast(r, f, "ns", "mean", 1.0) is None
        # functional.gan_loss inlines the fast path: it must read the same nesting
        assert gan_loss(r.clone().requires_grad_(), f).d_loss.grad_fn.name() != "GanLossBackward"
        with fastgan.use_backend("auto"):
            assert gan_loss(r.clone().requires_grad_(), f).d_loss.grad_fn.name() == \
                "GanLossBackward"
    with fastgan.use_backend("cpu"):  # what auto runs for CPU tensors anyway
        assert fast(r, f, "ns", "mean", 1.0) is not None
    if "cuda" in fastgan.available_backends():  # forced cuda on CPU tensors: an error there
        with fastgan.use_backend("cuda"):
            assert fast(r, f, "ns", "mean", 1.0) is None
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert fast(r, f, "ns", "mean", 1.0) is None
    # and the Python path then gives the usual answers: the reference backend ...
    out = gan_loss(r.clone().requires_grad_(), f)
    assert out.d_loss.grad_fn.name() != "GanLossBackward"
    monkeypatch.delenv("FASTGAN_BACKEND")
    # ... promotion, and clear errors
    assert gan_loss(r, f.double()).d_loss.dtype == torch.float64
    with pytest.raises(ValueError, match="real_label must be in"):
        gan_loss(r, f, "ns", real_label=1.5)
    with pytest.raises(TypeError, match="real_logits must be a Tensor"):
        gan_loss(r.numpy(), f)
