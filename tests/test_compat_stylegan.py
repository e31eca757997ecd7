"""fastgan.compat.stylegan: NVlabs' torch_utils.ops.bias_act / upfirdn2d API, install()
with and without a StyleGAN checkout on sys.path (in subprocesses), and a StyleGAN2-style
client written from the paper, against the same math in plain PyTorch: forward, backward
and R1 (double backward)."""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F

from fastgan.compat.stylegan import bias_act, upfirdn2d

REPO = Path(__file__).resolve().parents[1]


def _params(fn):
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]


def test_signatures_and_attributes():
    e = inspect.Parameter.empty
    assert _params(bias_act.bias_act) == [("x", e), ("b", None), ("dim", 1), ("act", "linear"),
                                          ("alpha", None), ("gain", None), ("clamp", None),
                                          ("impl", "cuda")]
    assert _params(upfirdn2d.upfirdn2d) == [("x", e), ("f", e), ("up", 1), ("down", 1),
                                            ("padding", 0), ("flip_filter", False),
                                            ("gain", 1), ("impl", "cuda")]
    assert [n for n, _ in _params(upfirdn2d.setup_filter)] == [
        "f", "device", "normalize", "flip_filter", "gain", "separable"]
    assert _params(upfirdn2d.upsample2d)[2] == ("up", 2)
    assert _params(upfirdn2d.downsample2d)[2] == ("down", 2)
    assert _params(upfirdn2d.filter2d)[2] == ("padding", 0)
    spec = bias_act.activation_funcs["lrelu"]
    assert spec.def_alpha == 0.2 and math.isclose(spec.def_gain, math.sqrt(2))
    assert spec["def_gain"] == spec.def_gain and spec.cuda_idx == 3 and spec.ref == "y"
    assert not spec.has_2nd_grad and bias_act.activation_funcs["swish"].has_2nd_grad
    assert bias_act.activation_funcs["linear"].def_gain == 1
    x = torch.tensor([-1.0, 2.0])
    torch.testing.assert_close(spec.func(x, alpha=0.1), torch.tensor([-0.1, 2.0]))
    assert upfirdn2d._get_filter_size(torch.ones(3, 5)) == (5, 3)
    assert upfirdn2d._get_filter_size(torch.ones(4)) == (4, 4)
    assert upfirdn2d._get_filter_size(None) == (1, 1)
    assert upfirdn2d._parse_padding(2) == (2, 2, 2, 2)
    assert upfirdn2d._parse_padding([1, 2]) == (1, 1, 2, 2)
    assert upfirdn2d._parse_padding([1, 2, 3, 4]) == (1, 2, 3, 4)
    y = bias_act.bias_act(x, act="lrelu", impl="ref")  # impl accepted, ignored
    torch.testing.assert_close(y, torch.tensor([-0.2, 2.0]) * math.sqrt(2))


_CLIENT = """
import sys
import fastgan.compat.stylegan as fs
fs.install()
fs.install()  # idempotent
from torch_utils.ops import bias_act, upfirdn2d
import torch_utils.ops.upfirdn2d as u2
assert bias_act is fs.bias_act and upfirdn2d is fs.upfirdn2d and u2 is fs.upfirdn2d
import torch_utils.ops
assert torch_utils.ops.bias_act is fs.bias_act
assert fs.bias_act.__name__ == "fastgan.compat.stylegan.bias_act"
assert fs.bias_act.__spec__.name == "fastgan.compat.stylegan.bias_act"
"""

_CHECKOUT = {
    "torch_utils/__init__.py": "",
    "torch_utils/misc.py": "FROM_CHECKOUT = True\n",
    "torch_utils/ops/__init__.py": "",
    "torch_utils/ops/bias_act.py": "raise RuntimeError('Setting up PyTorch plugin ... Failed!')\n",
    "torch_utils/ops/upfirdn2d.py": "raise RuntimeError('Setting up PyTorch plugin ... Failed!')\n",
    # what StyleGAN's conv2d_resample imports
    "torch_utils/ops/conv2d_resample.py": (
        "from . import upfirdn2d\nfrom .upfirdn2d import _parse_padding\n"
        "from .upfirdn2d import _get_filter_size\n"),
    "training/__init__.py": "",
    "training/networks.py": (
        "from torch_utils import misc\nfrom torch_utils.ops import conv2d_resample\n"
        "from torch_utils.ops import upfirdn2d\nfrom torch_utils.ops import bias_act\n"
        "GAIN = bias_act.activation_funcs['lrelu'].def_gain\n"),
}


def _run(code: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_install_without_checkout(tmp_path):
    _run(_CLIENT + "assert torch_utils.ops.__path__ == []\n", tmp_path)


def test_install_with_checkout(tmp_path):
    for name, text in _CHECKOUT.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    _run(_CLIENT + textwrap.dedent("""
        import training.networks as n
        import torch_utils.ops.conv2d_resample as cr
        assert n.misc.FROM_CHECKOUT and torch_utils.ops.__file__.endswith('__init__.py')
        assert n.bias_act is fs.bias_act and cr.upfirdn2d is fs.upfirdn2d
        assert cr._get_filter_size is fs.upfirdn2d._get_filter_size
        assert abs(n.GAIN - 2 ** 0.5) < 1e-12
        """), tmp_path)
    # install() after the original was imported replaces it in sys.modules and on the parent
    (tmp_path / "torch_utils/ops/bias_act.py").write_text("ORIGINAL = True\n")
    _run("""
        import torch_utils.ops.bias_act, sys
        import fastgan.compat.stylegan as fs
        fs.install()
        from torch_utils.ops import bias_act
        assert bias_act is fs.bias_act and sys.modules['torch_utils.ops.bias_act'] is fs.bias_act
        """, tmp_path)


# --- a StyleGAN2-style client (from the paper: FIR [1,3,3,1] up/downsampling, biased
# lrelu with gain sqrt(2) and clamping, equalized learning rate), through the compat ops
# and through plain PyTorch.

def _plain_bias_lrelu(x, b, clamp):
    z = x + b.view(1, -1, 1, 1)
    return (F.leaky_relu(z, 0.2) * math.sqrt(2)).clamp(-clamp, clamp)


def _fir(dtype):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=dtype)
    return torch.outer(k, k) / 64


def _plain_up(x):  # zero insertion + [1,3,3,1] as a transposed convolution, gain 4
    c = x.shape[1]
    return F.conv_transpose2d(x, 4 * _fir(x.dtype).expand(c, 1, 4, 4), stride=2, padding=1,
                              groups=c)


def _plain_down(x):
    c = x.shape[1]
    return F.conv2d(F.pad(x, [1, 1, 1, 1]), _fir(x.dtype).expand(c, 1, 4, 4), stride=2,
                    groups=c)


def _net(params, z, img, ops):
    w1, b1, w2, b2, wd, bd = params
    up, down, act = ops
    # G: 4x4 -> upsample -> conv -> bias lrelu -> 8x8 image
    h = up(z)
    h = act(F.conv2d(h, w1 / math.sqrt(w1[0].numel()), padding=1), b1, 256.0)
    fake = F.conv2d(h, w2 / math.sqrt(w2[0].numel()), padding=1) + b2.view(1, -1, 1, 1)
    # D: conv -> bias lrelu -> downsample -> score
    def d(x):
        y = act(F.conv2d(x, wd / math.sqrt(wd[0].numel()), padding=1), bd, 256.0)
        return down(y).sum(dim=[1, 2, 3])
    return d(fake), d, fake


def test_stylegan2_client_forward_backward_r1():
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    params = [torch.randn(5, 4, 3, 3, generator=g, dtype=dt), torch.randn(5, generator=g, dtype=dt),
              torch.randn(3, 5, 3, 3, generator=g, dtype=dt), torch.randn(3, generator=g, dtype=dt),
              torch.randn(6, 3, 3, 3, generator=g, dtype=dt), torch.randn(6, generator=g, dtype=dt)]
    z = torch.randn(2, 4, 4, 4, generator=g, dtype=dt)
    real = torch.randn(2, 3, 8, 8, generator=g, dtype=dt)
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).to(dt)
    compat_ops = (lambda x: upfirdn2d.upsample2d(x, f), lambda x: upfirdn2d.downsample2d(x, f),
                  lambda x, b, c: bias_act.bias_act(x, b, act="lrelu", clamp=c))
    plain_ops = (_plain_up, _plain_down, _plain_bias_lrelu)
    results = []
    for ops in (compat_ops, plain_ops):
        ps = [p.clone().requires_grad_() for p in params]
        score, d, fake = _net(ps, z, real, ops)
        loss = F.softplus(score).mean()
        grads = torch.autograd.grad(loss, ps)
        # R1: |grad_x D(x)|^2 on reals, backpropagated to D's parameters (double backward)
        x = real.clone().requires_grad_()
        (gx,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
        r1 = gx.square().sum()
        r1_grads = torch.autograd.grad(r1, [ps[4], ps[5]])
        results.append((fake.detach(), score.detach(), grads, r1.detach(), r1_grads))
    (fa, sa, ga, ra, rga), (fb, sb, gb, rb, rgb) = results
    torch.testing.assert_close(fa, fb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sa, sb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ra, rb, rtol=1e-10, atol=1e-10)
    for u, v in zip(ga + rga, gb + rgb):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)
