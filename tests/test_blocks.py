"""Fused ConvTranspose2d/Conv2d + BatchNorm2d + LeakyReLU blocks: parity with eager
nn.Sequential(conv, bn, act), gradients, eval folding and its cache, recomputation of
block outputs, layouts, autocast, torch.compile, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastgan
from fastgan import _ext
from fastgan.bench.common import saved_tensor_bytes
from fastgan.nn import ConvTranspose2dBNAct, Conv2dBNAct, recompute
from fastgan.nn.blocks import fold_bn

from _testutil import assert_close_scaled, randomise_bn

BACKENDS = ["cpu", "reference"] if _ext.ext_loaded() else ["reference"]

# (kernel, stride, padding, output_padding, dilation, groups), input spatial size
CONVT = [((4, 2, 1, 0, 1, 1), 5), ((4, 1, 0, 0, 1, 1), 1), ((3, 2, 1, 1, 1, 1), 4),
         ((5, 3, 2, 2, 1, 1), 3), ((3, 2, 0, 1, 2, 2), 4)]
CONV = [((4, 2, 1, 0, 1, 1), 8), ((3, 1, 1, 0, 1, 1), 5), ((1, 1, 0, 0, 1, 1), 3),
        ((3, 2, 2, 0, 2, 2), 9)]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _pair(transposed, cfg, cin=4, cout=6, slope=0.2, dtype=torch.float64, bias=False, **bn_kw):
    """(eager nn.Sequential, fused block) with the same state."""
    k, s, p, op, d, g = cfg
    if transposed:
        conv = nn.ConvTranspose2d(cin, cout, k, s, p, op, g, bias, d, dtype=dtype)
    else:
        conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias, dtype=dtype)
    bn = nn.BatchNorm2d(cout, dtype=dtype, **bn_kw)
    randomise_bn(bn)
    act = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    eager = nn.Sequential(conv, bn, act)
    cls = ConvTranspose2dBNAct if transposed else Conv2dBNAct
    fused = cls.from_modules(copy.deepcopy(conv), copy.deepcopy(bn), slope)
    return eager, fused


def _step(module, x, g):
    xi = x.detach().clone().requires_grad_()
    y = module(xi)
    y.backward(g.expand_as(y))
    return y.detach(), xi.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("transposed,cfg,hw", [(True, c, hw) for c, hw in CONVT]
                         + [(False, c, hw) for c, hw in CONV])
def test_parity_train_then_eval(backend, dtype, slope, transposed, cfg, hw):
    eager, fused = _pair(transposed, cfg, slope=slope, dtype=dtype)
    x = torch.randn(3, 4, hw, hw, dtype=dtype)
    tol = TOL[dtype]
    with fastgan.use_backend(backend):
        for train in (True, True, False):  # two training steps move the running stats
            eager.train(train), fused.train(train)
            _both(eager, fused, x, tol)
        eager.eval(), fused.eval()
        with torch.no_grad():
            assert_close_scaled(fused(x), eager(x), tol)


def _both(eager, fused, x, tol):
    """One forward+backward of each with the same random output gradient; compare all."""
    eager.zero_grad(), fused.zero_grad()
    xe, xf = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ye, yf = eager(xe), fused(xf)
    g = torch.randn_like(ye)
    ye.backward(g), yf.backward(g)
    assert_close_scaled(yf.detach(), ye.detach(), tol)
    assert_close_scaled(xf.grad, xe.grad, tol)
    for pe, pf in zip(eager.parameters(), fused.parameters()):
        assert_close_scaled(pf.grad, pe.grad, tol)
    for be, bf in zip(eager.buffers(), fused.buffers()):
        assert_close_scaled(bf, be, tol) if be.is_floating_point() else torch.testing.assert_close(bf, be)


@pytest.mark.parametrize("momentum,affine,track,bias", [(None, True, True, False),
                                                        (0.3, False, True, True),
                                                        (0.1, True, False, False)])
@pytest.mark.parametrize("train", [True, False])
def test_parity_options(momentum, affine, track, bias, train):
    eager, fused = _pair(True, CONVT[0][0], slope=0.2, bias=bias, momentum=momentum,
                         affine=affine, track_running_stats=track)
    eager.train(train), fused.train(train)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for _ in range(3):
        _both(eager, fused, x, 1e-10)
    assert [k.split(".", 1)[1] for k in fused.state_dict()] == \
        [k.split(".", 1)[1] for k in eager.state_dict()]


def test_state_dict_keys_and_init():
    m = ConvTranspose2dBNAct(8, 4, 4, 2, 1)
    assert list(m.state_dict()) == ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                    "bn.running_var", "bn.num_batches_tracked"]
    assert isinstance(m.conv, nn.ConvTranspose2d) and isinstance(m.bn, nn.BatchNorm2d)
    c = Conv2dBNAct(4, 8, 3, 1, 1, bias=True, dilation=2, groups=2, padding_mode="reflect")
    assert list(c.state_dict())[:2] == ["conv.weight", "conv.bias"]
    assert c(torch.randn(2, 4, 6, 6)).shape == (2, 8, 4, 4)
    # the classic class-name based init reaches the block and its children
    fastgan.models.weights_init(m)
    m.apply(fastgan.models.weights_init)
    assert abs(m.bn.weight.mean().item() - 1.0) < 0.1 and m.bn.bias.abs().max() == 0


def test_convtranspose_output_size():
    m = ConvTranspose2dBNAct(4, 6, 3, 2, 1)
    x = torch.randn(2, 4, 5, 5)
    assert m(x, output_size=[10, 10]).shape == (2, 6, 10, 10)
    m.eval()
    assert m(x, output_size=[10, 10]).shape == (2, 6, 10, 10)


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_gradcheck(transposed, train):
    cfg = CONVT[0][0] if transposed else CONV[1][0]
    _, fused = _pair(transposed, cfg, cin=2, cout=3, slope=0.2)
    fused.train(train)
    hw = 2 if transposed else 3
    x = torch.randn(2, 2, hw, hw, dtype=torch.float64, requires_grad=True)
    buffers = {f"bn.{k}": v for k, v in fused.bn.named_buffers()}

    def f(x, w, gamma, beta):  # fresh running stats for every evaluation
        state = {"conv.weight": w, "bn.weight": gamma, "bn.bias": beta,
                 **{k: v.clone() for k, v in buffers.items()}}
        return torch.func.functional_call(fused, state, (x,))

    params = (fused.conv.weight, fused.bn.weight, fused.bn.bias)
    inputs = (x, *[p.detach().clone().requires_grad_() for p in params])
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("fmt", ("nchw", "channels_last"))
def test_eval_fold_sees_every_weight_change(fmt):
    """Eval folds on every call: changes made in place, through .data (an EMA generator,
    WGAN clipping), by load_state_dict or by an optimizer are all seen at once."""
    torch.manual_seed(0)
    m = ConvTranspose2dBNAct(4, 6, 4, 2, 1).eval()
    seq = fastgan.convert(nn.Sequential(nn.ConvTranspose2d(4, 6, 4, 2, 1, bias=False),
                                        nn.BatchNorm2d(6), nn.LeakyReLU(0.2),
                                        nn.Conv2d(6, 3, 3), nn.BatchNorm2d(3), nn.ReLU())).eval()
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=mf)
    mods = (m, seq)

    def check():
        with torch.no_grad():
            assert_close_scaled(m(x), nn.Sequential(m.conv, m.bn, nn.LeakyReLU(0.2))(x), 1e-5)
            ref = nn.Sequential(*seq.children())(x)
            assert_close_scaled(seq(x), ref, 1e-5)

    with torch.no_grad():
        for mod in mods:
            for b in mod.modules():
                if isinstance(b, nn.BatchNorm2d):
                    b.running_var.uniform_(0.5, 2.0)
    check()
    with torch.no_grad():
        for mod in mods:
            for p in mod.parameters():
                p.data.mul_(1.5)  # through .data: no version bump
    check()
    with torch.no_grad():
        for mod in mods:
            for p in mod.parameters():
                p.data.clamp_(-0.01, 0.01)
            for b in mod.modules():
                if isinstance(b, nn.BatchNorm2d):
                    b.running_mean.data.add_(0.5)
    check()
    m.load_state_dict(ConvTranspose2dBNAct(4, 6, 4, 2, 1).state_dict())
    check()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(x).sum().backward()  # grad mode with trainable parameters: fold in the graph
    assert m.conv.weight.grad is not None and m.bn.weight.grad is not None
    opt.step()
    check()
    assert copy.deepcopy(m)(x).shape == m(x).shape


def test_fold_bn_layouts_and_groups():
    torch.manual_seed(0)
    for conv in (nn.ConvTranspose2d(4, 6, 3, 2, 1, groups=2, bias=True), nn.Conv2d(4, 6, 3, groups=2)):
        bn = nn.BatchNorm2d(6).eval()
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
        x = torch.randn(2, 4, 5, 5)
        ref = bn(conv(x))
        for fmt in (torch.contiguous_format, torch.channels_last):
            with torch.no_grad():
                w, b = fold_bn(conv, bn, fmt)
            assert w.is_contiguous(memory_format=fmt)
            fused = copy.deepcopy(conv)
            with torch.no_grad():
                fused.weight.copy_(w)
                fused.bias = nn.Parameter(b)
            assert_close_scaled(fused(x), ref, 1e-5)


def test_one_saved_tensor_per_block():
    """A chain of blocks keeps one output-sized tensor per block (its conv output)."""
    torch.manual_seed(0)
    fused = nn.Sequential(ConvTranspose2dBNAct(8, 16, 4, 2, 1, negative_slope=0.0),
                          ConvTranspose2dBNAct(16, 8, 4, 2, 1), ConvTranspose2dBNAct(8, 4, 4, 2, 1))
    x = torch.randn(4, 8, 4, 4)
    params = tuple(fused.parameters())
    got = saved_tensor_bytes(lambda: fused(x), params)
    sizes = [4 * 16 * 8 * 8, 4 * 8 * 16 * 16, 4 * 4 * 32 * 32]
    # input x + one conv output per block + small per-channel tensors
    assert got - x.nbytes - 4 * sum(sizes) < 4096, got
    # and gradients still match eager
    eager = nn.Sequential(*[m for b in fused for m in (b.conv, b.bn, nn.LeakyReLU(b.negative_slope))])
    eager = copy.deepcopy(eager)
    xi, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused(xi).square().sum().backward()
    eager(xe).square().sum().backward()
    assert_close_scaled(xi.grad, xe.grad, 1e-5)


def test_recompute_scope_chains_outer_hooks_and_checks_versions():
    b = ConvTranspose2dBNAct(4, 6, 4, 2, 1)
    conv = nn.Conv2d(6, 2, 3)
    x = torch.randn(2, 4, 5, 5)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with recompute.scope():
            y = conv(b(x))
    assert (2, 6, 10, 10) in packed  # the conv output z went through the outer hooks
    y.sum().backward()
    # autograd's in-place check survives our hooks
    with recompute.scope():
        w = torch.randn(3, requires_grad=True)
        a = w * 2
        c = a.sin()
        a.add_(1)
    with pytest.raises(RuntimeError, match="inplace"):
        c.sum().backward()
    assert not recompute._registry or all(e.ref() is not None for e in recompute._registry.values())


@pytest.mark.parametrize("transposed", [True, False])
def test_channels_last_and_bf16_autocast(transposed):
    cfg = CONVT[0][0] if transposed else CONV[0][0]
    eager, fused = _pair(transposed, cfg, cin=8, cout=16, dtype=torch.float32)
    eager = eager.to(memory_format=torch.channels_last)
    fused = fused.to(memory_format=torch.channels_last)
    x = torch.randn(4, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    for train in (True, False):
        eager.train(train), fused.train(train)
        ye, gxe = _step(eager, x, torch.ones(1))
        yf, gxf = _step(fused, x, torch.ones(1))
        assert yf.is_contiguous(memory_format=torch.channels_last)
        assert gxf.is_contiguous(memory_format=torch.channels_last)
        assert_close_scaled(yf, ye, 1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ye, gxe = _step(eager, x, torch.ones(1))
            yf, gxf = _step(fused, x, torch.ones(1))
        assert yf.dtype == ye.dtype == torch.bfloat16
        ref = _step(copy.deepcopy(eager).double(), x.double(), torch.ones(1))[0]
        err_e = (ye.double() - ref).abs().max().item()
        err_f = (yf.double() - ref).abs().max().item()
        assert err_f <= 2 * err_e + 1e-2, (err_f, err_e)


def test_compile_fullgraph():
    torch._dynamo.reset()
    eager, fused = _pair(True, CONVT[0][0], cin=4, cout=6, dtype=torch.float32)
    compiled = torch.compile(copy.deepcopy(fused), fullgraph=True)
    x = torch.randn(2, 4, 5, 5)
    for train in (True, False):
        compiled.train(train), eager.train(train)
        yc, gc = _step(compiled, x, torch.ones(1))
        ye, ge = _step(eager, x, torch.ones(1))
        assert_close_scaled(yc, ye, 1e-5)
        assert_close_scaled(gc, ge, 1e-5)
    torch.testing.assert_close(compiled.bn.running_var, eager[1].running_var)


def test_errors():
    with pytest.raises(ValueError, match="negative_slope"):
        ConvTranspose2dBNAct(4, 6, 3, negative_slope=-0.1)
    with pytest.raises(TypeError, match="BatchNorm2d"):
        Conv2dBNAct.from_modules(nn.ConvTranspose2d(2, 3, 3), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="output channels"):
        Conv2dBNAct.from_modules(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        Conv2dBNAct(2, 3, 3)(torch.randn(1, 2, 3, 3))


# ---------------------------------------------------------------------------
# conv_forward's matrix-product forms (CPU): a ConvTranspose2d on a 1x1 input and a
# Conv2d whose kernel covers its input, against ATen's convolutions.

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("stride", [1, 2])
def testdense_convtranspose_as_matmul(bias, layout, stride):
    from fastgan.nn.blocks import dense_transposed, conv_forward

    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(7, 5, (4, 3), stride, 0, bias=bias, dtype=torch.float64)
    x = torch.randn(3, 7, 1, 1, dtype=torch.float64, requires_grad=True)
    assert dense_transposed(conv, x, [0, 0])
    fmt = torch.channels_last if layout == "channels_last" else None
    y = conv_forward(conv, x, conv.weight, conv.bias, memory_format=fmt)
    ref = conv(x)
    assert y.shape == ref.shape == (3, 5, 4, 3)
    if fmt is not None:
        assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(y, [x, *conv.parameters()], g)
    want = torch.autograd.grad(ref, [x, *conv.parameters()], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x, w: conv_forward(conv, x, w, conv.bias, memory_format=fmt), (x, conv.weight))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("padding", [0, "valid"])
def testdense_conv_as_matmul(bias, layout, padding):
    from fastgan.nn.blocks import dense_conv, conv_forward

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 2, (4, 3), 2, padding, bias=bias, dtype=torch.float64)
    x = torch.randn(3, 6, 4, 3, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert dense_conv(conv, x)
    y = conv_forward(conv, x, conv.weight, conv.bias)
    ref = conv(x)
    assert y.shape == ref.shape == (3, 2, 1, 1)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    # first and second derivatives (a gradient penalty differentiates through it)
    gx, = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    gx_ref, = torch.autograd.grad(ref.square().sum(), x, create_graph=True)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)
    gw = torch.autograd.grad(gx.square().sum(), conv.weight)[0]
    gw_ref = torch.autograd.grad(gx_ref.square().sum(), conv.weight)[0]
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, w: conv_forward(conv, x, w, conv.bias),
                                    (x, conv.weight))


def test_dense_forms_only_where_exact():
    from fastgan.nn.blocks import dense_conv, dense_transposed

    x1 = torch.randn(2, 4, 1, 1)
    assert not dense_transposed(nn.ConvTranspose2d(4, 4, 4, 1, 1), x1, [0, 0])  # padding
    assert not dense_transposed(nn.ConvTranspose2d(4, 4, 4, 2, 0, groups=2), x1, [0, 0])
    assert not dense_transposed(nn.ConvTranspose2d(4, 4, 4, 2, 0), x1, [1, 1])  # output_padding
    assert not dense_transposed(nn.ConvTranspose2d(4, 4, 4, 1, 0, dilation=2), x1, [0, 0])
    assert not dense_transposed(nn.ConvTranspose2d(4, 4, 4), torch.randn(2, 4, 2, 1), [0, 0])
    x4 = torch.randn(2, 4, 4, 4)
    assert not dense_conv(nn.Conv2d(4, 1, 3), x4)  # kernel smaller than the input
    assert not dense_conv(nn.Conv2d(4, 1, 4, padding=1), x4)
    assert not dense_conv(nn.Conv2d(4, 2, 4, groups=2), x4)
    assert not dense_conv(nn.Conv2d(4, 1, 4, padding="same"), x4)
    # a converted discriminator's last layer and generator's first take the dense form
    # and match eager, in training and eval, NCHW in and out
    torch.manual_seed(0)
    from fastgan.models import Discriminator, Generator
    G, D = Generator(16, 4), Discriminator(4)
    Gc, Dc = fastgan.convert(G), fastgan.convert(D)
    z = torch.randn(3, 16, 1, 1)
    for mode in (True, False):
        G.train(mode), D.train(mode), Gc.train(mode), Dc.train(mode)
        img, imgc = G(z), Gc(z)
        torch.testing.assert_close(imgc, img, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(Dc(imgc), D(img), rtol=1e-4, atol=1e-5)
