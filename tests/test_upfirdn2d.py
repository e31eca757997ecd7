"""upfirdn2d and its helpers (fastgan.functional): against independent oracles
(scipy.signal.upfirdn per axis, scipy.signal.convolve2d for 2-D filters, torch pooling and
interpolation), gradients to third order, dtypes, layouts and every error message, on the reference and
the compiled CPU backend; then the compiled op's registration (opcheck, torch.compile) and
what it saves. Triton: tests/test_upfirdn2d_triton.py; CUDA: tests/test_upfirdn2d_cuda.py."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

scipy_signal = pytest.importorskip("scipy.signal")

import fastgan  # noqa: E402
from fastgan import functional as FG  # noqa: E402
from fastgan.ops import upfirdn2d as up_ops  # noqa: E402

needs_ext = pytest.mark.skipif("cpu" not in up_ops.KERNELS,
                               reason="fastgan._C was built without the upfirdn2d op")
BACKENDS = [pytest.param("cpu", marks=needs_ext), "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with fastgan.use_backend(request.param):
        yield request.param


def _axis_oracle(x: np.ndarray, h: np.ndarray, up: int, down: int, p0: int, p1: int,
                 axis: int) -> np.ndarray:
    """NVlabs' upfirdn along one axis from scipy: zero-insert by `up` and convolve
    (scipy.signal.upfirdn, full output), shift by the padding, keep every `down`-th."""
    x = np.moveaxis(x, axis, -1)
    n, taps = x.shape[-1], len(h)
    full = scipy_signal.upfirdn(h, x, up, 1, axis=-1)  # length (n - 1) * up + taps
    out_len = n * up + p0 + p1 - taps + 1
    idx = np.arange(out_len) + taps - 1 - p0  # output k is full[k + taps - 1 - p0]
    ok = (idx >= 0) & (idx < full.shape[-1])
    y = np.zeros(x.shape[:-1] + (out_len,))
    y[..., ok] = full[..., idx[ok]]
    y = scipy_signal.upfirdn([1.0], y, 1, down, axis=-1)
    return np.moveaxis(y, -1, axis)


def _conv2d_oracle(x: np.ndarray, f: np.ndarray, up, down, pad) -> np.ndarray:
    """The same for a 2-D filter: numpy zero insertion, scipy.signal.convolve2d (full)."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    fh, fw = f.shape
    u = np.zeros((n, c, h * upy, w * upx))
    u[:, :, ::upy, ::upx] = x
    oh, ow = h * upy + py0 + py1 - fh + 1, w * upx + px0 + px1 - fw + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(n):
        for j in range(c):
            full = scipy_signal.convolve2d(u[i, j], f, mode="full")
            big = np.zeros((full.shape[0] + 2 * (oh + fh + abs(py0)),
                            full.shape[1] + 2 * (ow + fw + abs(px0))))
            oy, ox = oh + fh + abs(py0), ow + fw + abs(px0)
            big[oy:oy + full.shape[0], ox:ox + full.shape[1]] = full
            sy, sx = oy + fh - 1 - py0, ox + fw - 1 - px0
            out[i, j] = big[sy:sy + oh, sx:sx + ow]
    return out[:, :, ::downy, ::downx]


def _cases(n: int, seed: int = 0):
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        up = [rng.choice([1, 2, 3]), rng.choice([1, 2, 3])]
        down = [rng.choice([1, 2, 3]), rng.choice([1, 2, 3])]
        pad = [rng.randint(-2, 3) for _ in range(4)]
        kind = rng.choice(["sep", "2d", "rank1"])
        taps = (rng.randint(1, 5), rng.randint(1, 5))
        h, w = rng.choice([3, 5, 6]), rng.choice([4, 7])
        if w * up[0] + pad[0] + pad[1] < max(taps) + 1 or \
                h * up[1] + pad[2] + pad[3] < max(taps) + 1:
            continue
        cases.append((up, down, pad, kind, taps, (h, w), rng.random() < 0.5,
                      rng.choice([1, 0.5, 3])))
    return cases


@pytest.mark.parametrize("up,down,pad,kind,taps,hw,flip,gain", _cases(36))
def test_matches_scipy(up, down, pad, kind, taps, hw, flip, gain, backend):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)
    xn = x.numpy()
    if kind == "sep":
        f = torch.rand(taps[0], generator=g, dtype=torch.float64) + 0.1
        h1 = f.numpy()[::-1] if flip else f.numpy()  # flip_filter correlates
        want = _axis_oracle(xn, h1, up[0], down[0], pad[0], pad[1], axis=3)
        want = _axis_oracle(want, h1, up[1], down[1], pad[2], pad[3], axis=2) * gain
    elif kind == "rank1":  # (fh, fw) = outer(a along y, b along x): per-axis scipy again
        a = torch.rand(taps[0], generator=g, dtype=torch.float64) + 0.1
        b = torch.rand(taps[1], generator=g, dtype=torch.float64) + 0.1
        f = torch.outer(a, b)
        an, bn = (a.numpy()[::-1], b.numpy()[::-1]) if flip else (a.numpy(), b.numpy())
        want = _axis_oracle(xn, bn, up[0], down[0], pad[0], pad[1], axis=3)
        want = _axis_oracle(want, an, up[1], down[1], pad[2], pad[3], axis=2) * gain
    else:
        f = torch.randn(*taps, generator=g, dtype=torch.float64)
        fn = f.numpy()[::-1, ::-1] if flip else f.numpy()
        want = _conv2d_oracle(xn, fn, up, down, pad) * gain
    got = FG.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


def test_scalar_arguments_and_none_filter(backend):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    f = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(FG.upfirdn2d(x, f, up=2, down=3, padding=1),
                               FG.upfirdn2d(x, f, up=[2, 2], down=[3, 3], padding=[1, 1, 1, 1]))
    torch.testing.assert_close(FG.upfirdn2d(x, f, padding=[1, 2]),
                               FG.upfirdn2d(x, f, padding=[1, 1, 2, 2]))
    torch.testing.assert_close(FG.upfirdn2d(x, None, gain=2.0), 2 * x)  # None: identity
    torch.testing.assert_close(FG.upfirdn2d(x, None, padding=-1), x[:, :, 1:-1, 1:-1])


def test_setup_filter():
    f = FG.setup_filter([1, 3, 3, 1])
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    torch.testing.assert_close(f, torch.outer(torch.tensor([1., 3, 3, 1]),
                                              torch.tensor([1., 3, 3, 1])) / 64)
    assert FG.setup_filter([1] * 8).shape == (8,)  # separable from 8 taps by default
    assert FG.setup_filter([1, 3, 3, 1], separable=True).shape == (4,)
    assert FG.setup_filter([1] * 8, separable=False).shape == (8, 8)
    torch.testing.assert_close(FG.setup_filter(None), torch.ones(1, 1))
    torch.testing.assert_close(FG.setup_filter([1, 2], normalize=False, gain=4.0),
                               torch.tensor([[4., 8], [8, 16]]))
    torch.testing.assert_close(FG.setup_filter([1, 2], normalize=False, separable=True,
                                               gain=4.0, flip_filter=True),
                               torch.tensor([4., 2]))
    t = torch.tensor([1.0, 3.0, 3.0, 1.0])
    FG.setup_filter(t)
    assert t.tolist() == [1, 3, 3, 1]  # the caller's tensor is not normalised in place


def test_resampling_helpers_against_torch(backend):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    # a [1, 1] box: downsample2d is 2x2 average pooling, upsample2d nearest neighbour
    box = FG.setup_filter([1, 1]).double()
    torch.testing.assert_close(FG.downsample2d(x[:, :, :4, :6], box),
                               F.avg_pool2d(x[:, :, :4, :6], 2))
    torch.testing.assert_close(FG.upsample2d(x, box), F.interpolate(x, scale_factor=2))
    f = FG.setup_filter([1, 3, 3, 1]).double()
    assert FG.upsample2d(x, f).shape == (2, 3, 10, 14)
    assert FG.upsample2d(x, f, up=[3, 2]).shape == (2, 3, 10, 21)
    assert FG.downsample2d(x, f).shape == (2, 3, 2, 3)
    assert FG.filter2d(x, f).shape == x.shape
    assert FG.filter2d(x, f, padding=[1, 0, 0, -1]).shape == (2, 3, 4, 8)
    # filter2d with an odd 2-D filter is a 'same' convolution
    k = torch.randn(3, 3, dtype=torch.float64)
    want = F.conv2d(x, k.flip([0, 1]).expand(3, 1, 3, 3), padding=1, groups=3)
    torch.testing.assert_close(FG.filter2d(x, k), want)
    # upsample2d keeps a constant image's value away from the border
    ones = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(FG.upsample2d(ones, f)[:, :, 2:-2, 2:-2],
                               torch.ones(1, 1, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("sep", [True, False])
def test_gradcheck_second_order(sep, backend):
    f = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    f = f if sep else torch.outer(f, torch.tensor([0.3, 1.0], dtype=torch.float64))
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda t: FG.upfirdn2d(t, f, up=[2, 1], down=[1, 2], padding=[1, -1, 2, 0],  # noqa: E731
                                flip_filter=sep, gain=1.5)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)
    f2 = FG.setup_filter([1, 3, 3, 1]).double()
    assert torch.autograd.gradgradcheck(lambda t: FG.downsample2d(FG.upsample2d(t, f2), f2),
                                        (x[:, :1],), fast_mode=True)


def test_third_order(backend):
    """The gradient of upfirdn2d is an upfirdn2d: any order works; checked to third."""
    f = torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.25, 3.0]], dtype=torch.float64)
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda t: FG.upfirdn2d(t, f, up=[1, 2], down=[2, 1], padding=[1, 0, -1, 2])  # noqa: E731
    y = fn(x)
    w = torch.randn_like(y)
    (g1,) = torch.autograd.grad((fn(x) * w).sum(), x, create_graph=True)
    # linear op: the first gradient does not depend on x, so push a nonlinearity through
    (g2,) = torch.autograd.grad((fn(x * x) * w).sum(), x, create_graph=True)
    (g3,) = torch.autograd.grad(g2.square().sum(), x, create_graph=True)
    (g4,) = torch.autograd.grad(g3.sum(), x)
    with fastgan.use_backend("reference"):
        xr = x.detach().requires_grad_()
        (r2,) = torch.autograd.grad((fn(xr * xr) * w).sum(), xr, create_graph=True)
        (r3,) = torch.autograd.grad(r2.square().sum(), xr, create_graph=True)
        (r4,) = torch.autograd.grad(r3.sum(), xr)
    torch.testing.assert_close(g3, r3, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g4, r4, rtol=1e-10, atol=1e-10)
    assert g1.shape == x.shape


def test_channels_last_and_dtypes(backend):
    x = torch.randn(2, 4, 9, 7)
    f = FG.setup_filter([1, 3, 3, 1])
    want = FG.upfirdn2d(x, f, up=2, down=1, padding=[2, 1, 2, 1])
    got = FG.upfirdn2d(x.to(memory_format=torch.channels_last), f, up=2, padding=[2, 1, 2, 1])
    torch.testing.assert_close(got, want)
    ref = FG.upfirdn2d(x.double(), f, up=2, padding=[2, 1, 2, 1])
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)):
        out = FG.upfirdn2d(x.to(dtype), f, up=2, padding=[2, 1, 2, 1])
        assert out.dtype == dtype
        err = (out.double() - ref).abs().max().item()
        # rounding x to dtype alone costs about eps * max|x| * sum|f|
        assert err <= tol * ref.abs().max().item(), (dtype, err)


def test_errors():
    x = torch.randn(1, 1, 4, 4)
    f = torch.ones(3, 3)
    with pytest.raises(ValueError, match=r"upfirdn2d: x must be 4-D \(N, C, H, W\), got 3-D"):
        FG.upfirdn2d(x[0], f)
    with pytest.raises(TypeError, match="upfirdn2d: x must be a Tensor"):
        FG.upfirdn2d(x.numpy(), f)
    with pytest.raises(ValueError, match=r"upfirdn2d: f \(5x5\) is larger than the upsampled, "
                                         r"padded image \(4x4"):
        FG.upfirdn2d(x, torch.ones(5, 5))
    with pytest.raises(ValueError, match=r"upfirdn2d: f \(3x3\) is larger .* \(2x2"):
        FG.upfirdn2d(x, f, padding=-1)
    with pytest.raises(ValueError, match="upfirdn2d: up must be an int >= 1 or a pair"):
        FG.upfirdn2d(x, f, up=0)
    with pytest.raises(ValueError, match="upfirdn2d: down must be an int >= 1 or a pair"):
        FG.upfirdn2d(x, f, down=[2, 2, 2])
    with pytest.raises(ValueError, match="upfirdn2d: padding must be an int, "):
        FG.upfirdn2d(x, f, padding=[1, 2, 3])
    with pytest.raises(ValueError, match="upfirdn2d: padding must be"):
        FG.upfirdn2d(x, f, padding=1.5)
    with pytest.raises(ValueError, match="upfirdn2d: f must be a 1-D .* got 3-D tensor"):
        FG.upfirdn2d(x, torch.ones(1, 1, 1))
    with pytest.raises(ValueError, match="upfirdn2d: f must not require grad"):
        FG.upfirdn2d(x, f.requires_grad_())
    with pytest.raises(ValueError, match="upsample2d: up must be"):
        FG.upsample2d(x, None, up=-2)
    with pytest.raises(ValueError, match="setup_filter: f must be a non-empty"):
        FG.setup_filter([])


def test_modules():
    from fastgan.nn import Downsample2d, Upsample2d

    x = torch.randn(2, 3, 6, 5)
    up, down = Upsample2d(), Downsample2d(factor=[2, 1], filter=[1, 2, 1])
    assert set(up.state_dict()) == {"filter"}
    f = FG.setup_filter([1, 3, 3, 1])
    torch.testing.assert_close(up(x), FG.upsample2d(x, f))
    torch.testing.assert_close(down(x), FG.downsample2d(x, FG.setup_filter([1, 2, 1]),
                                                        down=[2, 1]))
    assert down(x).shape == (2, 3, 6, 2) and math.isclose(up.filter.sum().item(), 1.0)


# ---------------------------------------------------------------------------
# The compiled op: odd geometries against the reference, registration, memory

def _geometries():
    # (up, down, padding, filter shape, separable, input hw): the StyleGAN uses (up/down 2
    # with 4x4, filter2d, 12-tap separable at up 2 / down 2), per-axis mixes, crops, both
    # up and down on an axis, and a 1x1 filter
    return [([2, 2], [1, 1], [2, 1, 2, 1], (4, 4), False, (5, 7)),
            ([1, 1], [2, 2], [1, 1, 1, 1], (4, 4), False, (8, 9)),
            ([1, 1], [1, 1], [1, 1, 1, 1], (3, 3), False, (6, 5)),
            ([2, 2], [1, 1], [6, 5, 6, 5], (12,), True, (6, 4)),
            ([1, 1], [2, 2], [5, 5, 5, 5], (12,), True, (9, 8)),
            ([3, 1], [1, 2], [0, -1, 2, 1], (2, 5), False, (7, 6)),
            ([2, 3], [3, 2], [-1, 2, 1, -2], (3, 4), False, (6, 7)),
            ([4, 4], [1, 1], [0, 0, 0, 0], (1, 1), False, (3, 2))]


@needs_ext
@pytest.mark.parametrize("geom", range(len(_geometries())))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_matches_reference(geom, dtype, channels_last):
    up, down, pad, fshape, _, hw = _geometries()[geom]
    g = torch.Generator().manual_seed(geom)
    # channels_last runs its own kernel from 8 channels (17: full vectors and a tail on
    # AVX2, a tail on AVX-512); fewer take the planar kernel (test_channels_last_and_dtypes)
    x64 = torch.randn(2, 17 if channels_last else 5, *hw, generator=g, dtype=torch.float64)
    f = torch.rand(fshape, generator=g) + 0.1
    w = torch.randn_like(FG.upfirdn2d(x64, f, up, down, pad))
    if channels_last:
        x64, w = (t.contiguous(memory_format=torch.channels_last) for t in (x64, w))

    def run(backend, x):
        x = x.detach().requires_grad_()
        with fastgan.use_backend(backend):
            y = FG.upfirdn2d(x, f, up, down, pad, flip_filter=geom % 2 == 1, gain=1.7)
            (gx,) = torch.autograd.grad(y, x, w.to(y.dtype))
        return y, gx

    want = run("reference", x64)
    got = run("cpu", x64.to(dtype))
    eager = run("reference", x64.to(dtype))
    for o, r, e in zip(got, want, eager):
        assert o.dtype == dtype and o.shape == r.shape
        if channels_last and o.shape[1] > 1:
            assert o.is_contiguous(memory_format=torch.channels_last)
        err, scale = (o.double() - r).abs().max().item(), r.abs().max().item()
        if dtype == torch.float64:
            assert err <= 1e-12 * scale
        elif dtype == torch.float32:
            assert err <= 2e-6 * scale
        else:
            eps = torch.finfo(dtype).eps  # twice eager's error plus one rounding
            assert err <= 2 * (e.double() - r).abs().max().item() + eps * scale


@needs_ext
def test_large_parallel():
    g = torch.Generator().manual_seed(5)
    f = FG.setup_filter([1, 3, 3, 1])
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(3, 40, 33, 31, generator=g).contiguous(memory_format=fmt)
        with fastgan.use_backend("cpu"):
            got = FG.downsample2d(FG.upsample2d(x, f), f)
        with fastgan.use_backend("reference"):
            want = FG.downsample2d(FG.upsample2d(x, f), f)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_ext
def test_saves_no_activation():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    f = FG.setup_filter([1, 3, 3, 1])
    saved = []
    with fastgan.use_backend("cpu"), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        FG.downsample2d(FG.upsample2d(x, f), f)
    assert saved and all(t.numel() == f.numel() for t in saved)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_opcheck(dtype):
    op = torch.ops.fastgan.upfirdn2d.default
    f = FG.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 5, 6, dtype=dtype)
    for args in ((x.requires_grad_(), f, [2, 2], [1, 1], [2, 1, 2, 1], False, 4.0),
                 (x.detach().contiguous(memory_format=torch.channels_last), f, [1, 1], [2, 2],
                  [1, 1, 1, 1], True, 1.0),
                 (x.detach(), f[:1], [1, 2], [3, 1], [0, -1, 1, 2], False, 0.5)):
        torch.library.opcheck(op, args)


@needs_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    f = FG.setup_filter([1, 3, 3, 1])

    def step(x):
        return FG.downsample2d(FG.upsample2d(x, f), FG.setup_filter([1, 2, 1] * 4))

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with fastgan.use_backend("cpu"):
        for shape in ((2, 3, 8, 8), (1, 3, 6, 10)):
            x = torch.randn(shape, requires_grad=True)
            got, want = compiled(x), step(x)
            torch.testing.assert_close(got, want)
            (gx,) = torch.autograd.grad(got.square().sum(), x)
            (wx,) = torch.autograd.grad(want.square().sum(), x)
            torch.testing.assert_close(gx, wx)


@needs_ext
def test_kernel_errors():
    op = torch.ops.fastgan.upfirdn2d.default
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(RuntimeError, match=r"x must be 4-D \(N, C, H, W\), got 3-D"):
        op(x[0], torch.ones(1, 1), [1, 1], [1, 1], [0, 0, 0, 0], False, 1.0)
    with pytest.raises(RuntimeError, match=r"f must be a non-empty 2-D \(fh, fw\) filter"):
        op(x, torch.ones(3), [1, 1], [1, 1], [0, 0, 0, 0], False, 1.0)
    with pytest.raises(RuntimeError, match=r"f \(5x5\) is larger than the upsampled, padded"):
        op(x, torch.ones(5, 5), [1, 1], [1, 1], [0, 0, 0, 0], False, 1.0)
    with pytest.raises(RuntimeError, match="up must be two ints >= 1"):
        op(x, torch.ones(1, 1), [0, 1], [1, 1], [0, 0, 0, 0], False, 1.0)


def test_crop_larger_than_one_side(backend):
    """A negative pad may crop into what the other side's pad added (a valid geometry that
    F.pad alone rejects)."""
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    f = torch.ones(1, 1, dtype=torch.float64)
    got = FG.upfirdn2d(x, f, padding=[8, -6, 0, 0])
    want = F.pad(x, [8, 0])[:, :, :, :-6]
    torch.testing.assert_close(got, want)
