"""The CUDA kernels of upfirdn2d (csrc/cuda/upfirdn2d.cu), called as the registered op
torch.ops.fastgan.upfirdn2d on CUDA tensors: gpu-marked parity with the reference
(fastgan/ops/upfirdn2d_reference.py) computed in fp64 from the same inputs, over the
kernels' paths (tiled NCHW with the compiled up-2 / down-2 / 1:1 variants and the generic
one, the direct kernel for channels_last, small planes and windows too large for shared
memory), per-axis up / down, negative padding, flip, non-square filters and every dtype;
fp64 gradcheck / gradgradcheck through the C++ autograd."""

from __future__ import annotations

import pytest
import torch

from _testutil import assert_close_scaled
from fastgan import _ext
from fastgan.ops.upfirdn2d_reference import upfirdn2d as reference

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3,
       torch.bfloat16: 8e-3}

# (id, x shape, filter shape, up [x, y], down [x, y], padding [x0, x1, y0, y1])
CASES = [
    ("up2_f4", (2, 3, 20, 37), (4, 4), [2, 2], [1, 1], [2, 1, 2, 1]),      # StyleGAN upsample
    ("down2_f4", (2, 3, 41, 36), (4, 4), [1, 1], [2, 2], [1, 1, 1, 1]),    # StyleGAN downsample
    ("blur_f4", (2, 3, 33, 40), (4, 4), [1, 1], [1, 1], [2, 1, 2, 1]),
    ("up2_f6", (1, 2, 19, 23), (6, 5), [2, 2], [1, 1], [3, 2, 3, 2]),      # 8x8 variant
    ("down2_f8", (1, 2, 50, 47), (8, 7), [1, 1], [2, 2], [3, 3, 3, 3]),
    ("f3_pad1", (2, 2, 24, 31), (3, 3), [1, 1], [1, 1], [1, 1, 1, 1]),
    ("up4", (1, 2, 13, 11), (8, 8), [4, 4], [1, 1], [4, 3, 4, 3]),       # generic
    ("down4", (1, 2, 64, 57), (6, 6), [1, 1], [4, 4], [1, 1, 1, 1]),
    ("up2_down2", (1, 3, 21, 30), (5, 5), [2, 2], [2, 2], [2, 2, 2, 2]),
    ("per_axis", (2, 2, 25, 33), (3, 5), [2, 1], [1, 2], [2, 2, 1, 1]),
    ("sep_x", (1, 3, 30, 31), (1, 12), [2, 1], [1, 1], [6, 5, 0, 0]),      # StyleGAN3-like
    ("sep_y", (1, 3, 31, 30), (12, 1), [1, 2], [1, 1], [0, 0, 6, 5]),
    ("sep_x_down", (1, 3, 30, 64), (1, 12), [1, 1], [2, 1], [5, 5, 0, 0]),
    ("neg_pad", (2, 2, 30, 34), (3, 4), [1, 1], [1, 1], [-2, 1, 3, -4]),
    ("neg_pad_up2", (1, 2, 18, 22), (4, 4), [2, 2], [1, 1], [-3, -1, 0, -2]),
    ("big_filter", (1, 2, 40, 40), (9, 11), [2, 2], [1, 1], [5, 4, 5, 4]),  # generic (> 8)
    ("huge_window", (1, 1, 200, 300), (17, 33), [1, 1], [4, 4], [0, 0, 0, 0]),  # smem shrink
    ("small_plane", (4, 5, 4, 4), (4, 4), [2, 2], [1, 1], [2, 1, 2, 1]),   # direct NCHW
    ("tiny_1x1", (3, 4, 1, 1), (1, 1), [1, 1], [1, 1], [0, 0, 0, 0]),
    ("many_planes", (300, 240, 16, 16), (2, 2), [1, 1], [1, 1], [1, 0, 1, 0]),  # > 65535 planes
]


def _ops():
    assert _ext.ext_loaded(), f"fastgan._C is not loaded: {_ext.ext_error()}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::upfirdn2d", "CUDA"), \
        "fastgan._C was built without CUDA kernels"
    return torch.ops.fastgan


def _inputs(xshape, fshape, dtype, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(xshape, generator=g, dtype=torch.float64).to(dtype).cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    f = (torch.rand(fshape, generator=g, dtype=torch.float64) + 0.1).float().cuda()
    return x, f


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("flip", [False, True])
def test_matches_reference(case, dtype, channels_last, flip):
    ops = _ops()
    _, xshape, fshape, up, down, pad = case
    if case[0] == "many_planes" and (dtype != torch.float32 or flip):
        pytest.skip("one dtype is enough for the plane loop")
    x, f = _inputs(xshape, fshape, dtype, channels_last)
    gain = 1.7
    y = ops.upfirdn2d(x, f, up, down, pad, flip, gain)
    want = reference(x.double(), f.double(), up, down, pad, flip, gain)
    assert y.shape == want.shape and y.dtype == x.dtype
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()
    assert_close_scaled(y, want, TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("fdtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_filter_dtype_and_strided_input(fdtype):
    ops = _ops()
    x, f = _inputs((2, 3, 26, 30), (4, 4), torch.float32, False)
    x = x.transpose(2, 3)  # neither contiguous nor channels_last
    f = f.to(fdtype)
    y = ops.upfirdn2d(x, f, [2, 2], [1, 1], [2, 1, 2, 1], False, 4.0)
    want = reference(x.double(), f.double(), [2, 2], [1, 1], [2, 1, 2, 1], False, 4.0)
    assert_close_scaled(y, want, 2e-6)


@pytest.mark.gpu
def test_empty_and_zero_outputs():
    ops = _ops()
    f = torch.ones(3, 3, device="cuda")
    x = torch.empty(0, 3, 8, 8, device="cuda")
    assert ops.upfirdn2d(x, f, [1, 1], [1, 1], [1, 1, 1, 1], False, 1.0).shape == (0, 3, 8, 8)
    # a padded band beyond the image: zeros
    x = torch.randn(1, 2, 4, 4, device="cuda")
    y = ops.upfirdn2d(x, f, [1, 1], [1, 1], [8, -3, 0, 0], False, 1.0)
    want = reference(x.double(), f.double(), [1, 1], [1, 1], [8, -3, 0, 0], False, 1.0)
    assert_close_scaled(y, want, 2e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[6], CASES[9], CASES[13]],
                         ids=["up2_f4", "down2_f4", "up4", "per_axis", "neg_pad"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_gradcheck_and_gradgradcheck(case, channels_last):
    _ops()
    _, xshape, fshape, up, down, pad = case
    xshape = (1, 2, min(xshape[2], 9), min(xshape[3], 11))
    x, f = _inputs(xshape, fshape, torch.float64, channels_last)
    f = f.double()
    x.requires_grad_()

    def fn(x):
        return torch.ops.fastgan.upfirdn2d(x, f, up, down, pad, False, 1.3)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.gpu
def test_opcheck():
    _ops()
    import fastgan.ops.upfirdn2d  # noqa: F401  (registers the fake kernel)

    for cl in (False, True):
        x, f = _inputs((2, 3, 9, 10), (4, 4), torch.float32, cl)
        torch.library.opcheck(torch.ops.fastgan.upfirdn2d.default,
                              (x, f, [2, 2], [1, 1], [2, 1, 2, 1], False, 4.0))
