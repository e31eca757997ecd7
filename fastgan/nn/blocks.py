"""Fused ConvTranspose2d/Conv2d -> BatchNorm2d -> LeakyReLU blocks.

`block_forward(x, conv, bn, negative_slope)` is one block around an ATen convolution;
`run_blocks(x, blocks)` runs blocks that feed one another, choosing once per call between
that and the triton backend's fully fused chain (fastgan/nn/fused_chain.py). The modules
ConvTranspose2dBNAct / Conv2dBNAct and traced models go through run_blocks;
FusedSequential makes the same choice for its stretches of blocks itself.

Training (or BatchNorm without running statistics): the convolution runs in ATen
(oneDNN/cuDNN, backward through autograd) and everything after it in the fused
BatchNorm+activation op, which keeps only the conv output z and per-channel statistics.
The block output y is registered with fastgan.nn.recompute, so whoever saves y for
backward (the next convolution) keeps z + statistics instead and recomputes y: one
output-sized tensor per block is saved, the floor. A SyncBatchNormAct2d as the block's
BatchNorm (fastgan.convert(sync_bn=True)) merges the statistics across its process group
(fastgan/ops/sync_bn_act.py); the output is recomputed with the merged statistics.

Eval: BatchNorm is folded into the convolution (weight * gamma/sigma along the output
channels, bias beta - mu * gamma/sigma [+ conv bias * gamma/sigma]) and the activation
runs in place on the conv output: one conv and one elementwise pass. The fold is
recomputed on every call, written straight in the layout the convolution wants: on
the CPU that one weight-sized multiply replaces the weight reorder oneDNN would make
anyway for a channels_last input (DCGAN sampling measured as fast as with the cache it
replaced, BENCHMARKS.md; on a GPU it adds a few small kernels per block). Folded weights are deliberately not cached across calls: a cache keyed
on version counters (what issue 3 first asked for) misses writes made through `.data`
(an EMA generator updated with `p_ema.data.mul_(...)`, WGAN's `p.data.clamp_(...)`),
which PyTorch gives a fresh version counter, and would then sample with stale weights.
When autograd needs gradients of the parameters (grad mode on and any of them requires
grad), or under torch.compile, the fold is part of the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgan.nn import recompute
from fastgan.nn.fused_chain import chainable, fused_chain
from fastgan.nn.rules import hooked
from fastgan.nn.sync_bn_act import SyncBatchNormAct2d
from fastgan.ops import bn_act, sync_bn_act
from fastgan.ops.conv_bn_act import chain_enabled


def _strictly_channels_last(t: Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def dense_transposed(conv: nn.ConvTranspose2d, x: Tensor, output_padding) -> bool:
    """A ConvTranspose2d on a 1x1 input with no padding (a generator's first layer): every
    output pixel is a dot product of the input vector with one weight column."""
    return (x.dim() == 4 and x.shape[-2:] == (1, 1) and conv.groups == 1
            and tuple(conv.padding) == (0, 0) and tuple(output_padding) == (0, 0)
            and tuple(conv.dilation) == (1, 1))


def dense_conv(conv: nn.Conv2d, x: Tensor) -> bool:
    """A Conv2d whose kernel covers its whole unpadded input (a discriminator's last
    layer): a 1x1 output, one dot product per output channel."""
    return (x.dim() == 4 and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding in ((0, 0), "valid") and tuple(conv.kernel_size) == x.shape[-2:])


def _gemm_conv_transpose(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    n, cin = x.shape[:2]
    cout, kh, kw = weight.shape[1:]
    x2 = x.reshape(n, cin)
    if _strictly_channels_last(weight):  # memory (cin, kh, kw, cout): a channels_last output
        w2 = weight.permute(0, 2, 3, 1).reshape(cin, kh * kw * cout)
        b2 = None if bias is None else bias.repeat(kh * kw)
        y = x2 @ w2 if b2 is None else torch.addmm(b2, x2, w2)
        return y.view(n, kh, kw, cout).permute(0, 3, 1, 2)
    w2 = weight.reshape(cin, cout * kh * kw)
    b2 = None if bias is None else bias.repeat_interleave(kh * kw)
    y = x2 @ w2 if b2 is None else torch.addmm(b2, x2, w2)
    return y.view(n, cout, kh, kw)


def _gemm_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    n, cout = x.shape[0], weight.shape[0]
    if _strictly_channels_last(x):  # flatten both in (h, w, c) order: views, no copies
        x2 = x.permute(0, 2, 3, 1).reshape(n, -1)
        w2 = weight.permute(0, 2, 3, 1).reshape(cout, -1)
    else:
        x2 = x.reshape(n, -1)
        w2 = weight.reshape(cout, -1)
    y = x2 @ w2.t() if bias is None else torch.addmm(bias, x2, w2.t())
    return y.view(n, cout, 1, 1)


def conv_forward(conv: nn.Conv2d | nn.ConvTranspose2d, x: Tensor, weight: Tensor,
                 bias: Tensor | None, output_size: list[int] | None = None,
                 memory_format: torch.memory_format | None = None) -> Tensor:
    """`conv(x)` with the given weight and bias (padding modes and output_size included);
    `memory_format`, if given, is the layout of the result.

    On the CPU, the two DCGAN end layers that are matrix products in disguise run as one
    (addmm): a ConvTranspose2d on a 1x1 input and a Conv2d whose kernel covers its input.
    oneDNN runs those ~10-30x below its convolution speed, a few percent of a DCGAN
    training step (measured; see BENCHMARKS.md)."""
    cpu = x.device.type == "cpu"
    if (cpu and weight.dim() == 4 and weight.is_contiguous() and _strictly_channels_last(x)
            and not (torch.is_grad_enabled() and weight.requires_grad)):
        # Inference: oneDNN would reorder an NCHW weight for a channels_last input anyway.
        # (With autograd the copy would be saved: a weight-sized tensor per call. It is
        # not cached across calls: a weight changed through .data, as WGAN's clipping
        # does, keeps its version counter, so no cache key could see the change.)
        weight = weight.contiguous(memory_format=torch.channels_last)
    if isinstance(conv, nn.ConvTranspose2d):
        output_padding = conv._output_padding(x, output_size, list(conv.stride),
                                              list(conv.padding), list(conv.kernel_size), 2,
                                              list(conv.dilation))
        if cpu and dense_transposed(conv, x, output_padding):
            z = _gemm_conv_transpose(x, weight, bias)
        else:
            z = F.conv_transpose2d(x, weight, bias, conv.stride, conv.padding, output_padding,
                                   conv.groups, conv.dilation)
    elif cpu and dense_conv(conv, x):
        z = _gemm_conv(x, weight, bias)
    else:
        z = conv._conv_forward(x, weight, bias)
    # (N, C, 1, 1) inputs are NCHW and channels_last at once; ATen then picks NCHW.
    return z if memory_format is None else z.contiguous(memory_format=memory_format)


def _use_folding(bn: nn.BatchNorm2d) -> bool:
    return not bn.training and bn.running_mean is not None and bn.running_var is not None


# ---------------------------------------------------------------------------
# Training: ATen conv, fused BN+act, output registered for recomputation.

def _train_forward(x: Tensor, conv: nn.Module, bn: nn.BatchNorm2d, negative_slope: float,
                   output_size: list[int] | None, memory_format) -> Tensor:
    z = conv_forward(conv, x, conv.weight, conv.bias, output_size, memory_format)
    rm, rv, bn_training, factor = bn_act.module_args(bn)
    if isinstance(bn, SyncBatchNormAct2d) and bn.synchronizes():  # statistics of the whole process group
        y, again = sync_bn_act.sync_batch_norm_act(z, rm, rv, bn.weight, bn.bias, factor, bn.eps,
                                                   negative_slope, bn.process_group)
    else:
        y, again = bn_act.forward_with_stats(z, rm, rv, bn.weight, bn.bias, bn_training, factor,
                                             bn.eps, negative_slope)
    if y.requires_grad and not torch.compiler.is_compiling():
        recompute.register(y, z, again)
    return y


# ---------------------------------------------------------------------------
# Eval: BatchNorm folded into the convolution.

def fold_bn(conv: nn.Module, bn: nn.BatchNorm2d,
            memory_format: torch.memory_format = torch.contiguous_format,
            weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(weight, bias) of one convolution equal to conv followed by bn in eval mode; the
    weight is laid out in `memory_format`. `weight`: conv.weight, if already read (a
    parametrized weight is recomputed on every read)."""
    w = conv.weight if weight is None else weight
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    scale = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(acc)
    shift = -bn.running_mean.to(acc) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(acc)
    if conv.bias is not None:
        shift = shift + conv.bias.to(acc) * scale
    if isinstance(conv, nn.ConvTranspose2d):
        # weight (in, out/groups, kh, kw): output channel g*(out/groups)+j is [g-th block, j]
        g = conv.groups
        per_group = scale.reshape(g, 1, w.shape[1])
        factor = per_group.expand(g, w.shape[0] // g, w.shape[1]).reshape(w.shape[0], w.shape[1],
                                                                            1, 1)
    else:
        factor = scale.reshape(-1, 1, 1, 1)
    if w.requires_grad and torch.is_grad_enabled():
        folded = (w.to(acc) * factor).contiguous(memory_format=memory_format)
    else:  # one pass, straight into the requested layout
        folded = torch.empty_like(w, dtype=acc, memory_format=memory_format)
        torch.mul(w, factor, out=folded)
    return folded.to(w.dtype), shift.to(w.dtype)


def _eval_forward(x: Tensor, conv: nn.Module, bn: nn.BatchNorm2d, negative_slope: float,
                  output_size: list[int] | None, memory_format) -> Tensor:
    weight = conv.weight  # once: a parametrization recomputes it on every read
    params = [p for p in (weight, conv.bias, bn.weight, bn.bias) if p is not None]
    needs_graph = torch.is_grad_enabled() and any(p.requires_grad for p in params)
    fmt = torch.contiguous_format
    if (x.device.type == "cpu" and not needs_graph and weight.dim() == 4
            and (memory_format == torch.channels_last or _strictly_channels_last(x)
                 or _strictly_channels_last(weight))):
        # the layout oneDNN runs the conv in (and would reorder an NCHW weight to)
        fmt = torch.channels_last
    if needs_graph or torch.compiler.is_compiling():
        w, b = fold_bn(conv, bn, fmt, weight)
    else:
        with torch.no_grad():
            w, b = fold_bn(conv, bn, fmt, weight)
    y = conv_forward(conv, x, w, b, output_size, memory_format)
    if negative_slope == 1.0:
        return y
    if negative_slope == 0.0:
        return torch.relu_(y)
    return F.leaky_relu_(y, negative_slope)


def norm_act_forward(x: Tensor, bn: nn.BatchNorm2d, negative_slope: float) -> Tensor:
    """`leaky_relu(bn(x), negative_slope)` as one fused op, for a BatchNorm that no
    convolution of its run feeds (a pre-activation residual block's BN -> ReLU). In
    training the output is registered for recomputation as a block's is (the layer that
    consumes it keeps x and the statistics instead)."""
    rm, rv, bn_training, factor = bn_act.module_args(bn)
    if isinstance(bn, SyncBatchNormAct2d) and bn.synchronizes():
        y, again = sync_bn_act.sync_batch_norm_act(x, rm, rv, bn.weight, bn.bias, factor, bn.eps,
                                                   negative_slope, bn.process_group)
    else:
        y, again = bn_act.forward_with_stats(x, rm, rv, bn.weight, bn.bias, bn_training, factor,
                                             bn.eps, negative_slope)
    if y.requires_grad and recompute.active() and not torch.compiler.is_compiling():
        recompute.register(y, x, again)
    return y


def block_forward(x: Tensor, conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d,
                  negative_slope: float, output_size: list[int] | None = None,
                  memory_format: torch.memory_format | None = None) -> Tensor:
    """`leaky_relu(bn(conv(x)), negative_slope)` around an ATen convolution (see the module
    docstring). `memory_format`, if given, is the layout of the result (and of the saved
    conv output)."""
    args = (x, conv, bn, negative_slope)
    if _use_folding(bn):
        return _eval_forward(*args, output_size, memory_format)
    if torch.compiler.is_compiling() or recompute.active():
        return _train_forward(*args, output_size, memory_format)
    with recompute.scope():
        return _train_forward(*args, output_size, memory_format)


def run_blocks(x: Tensor, blocks: list[tuple[nn.Module, nn.BatchNorm2d, float]],
               memory_format: torch.memory_format | None = None) -> Tensor:
    """(conv, bn, negative_slope) blocks, each feeding the next: one fused chain when the
    triton backend's convolutions run (fastgan.ops.conv_bn_act.chain_enabled) and every
    block is chainable and unhooked, so that no normalised activation is written between
    them; else block_forward after block_forward (in `memory_format`, if given). Asked once
    per call; FusedSequential asks the same once per call for its stretches of blocks,
    which can end in a plain convolution."""
    if chain_enabled(x) and all(chainable(c, b) and not hooked(c) and not hooked(b)
                                for c, b, _ in blocks):
        return fused_chain(x, blocks)
    for conv, bn, slope in blocks:
        x = block_forward(x, conv, bn, slope, memory_format=memory_format)
    return x


# ---------------------------------------------------------------------------
# Modules

def _check_slope(cls: str, negative_slope: float) -> float:
    if negative_slope < 0:
        raise ValueError(f"{cls}: negative_slope must be >= 0 (0 is ReLU), got {negative_slope}")
    return float(negative_slope)


class _ConvBNAct(nn.Module):
    conv: nn.Conv2d | nn.ConvTranspose2d
    bn: nn.BatchNorm2d

    def __init__(self, conv: nn.Module, bn: nn.BatchNorm2d, negative_slope: float) -> None:
        super().__init__()
        if conv.out_channels != bn.num_features:
            raise ValueError(f"{type(self).__name__}: the convolution has {conv.out_channels} "
                             f"output channels but the BatchNorm2d has {bn.num_features} "
                             f"features")
        self.conv = conv
        self.bn = bn
        self.negative_slope = _check_slope(type(self).__name__, negative_slope)

    @classmethod
    def from_modules(cls, conv: nn.Module, bn: nn.BatchNorm2d, negative_slope: float = 0.2):
        """Wrap existing modules (shared, not copied) in a fused block."""
        expected = nn.ConvTranspose2d if cls is ConvTranspose2dBNAct else nn.Conv2d
        if not isinstance(conv, expected) or not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"{cls.__name__}.from_modules: expected ({expected.__name__}, "
                            f"BatchNorm2d), got ({type(conv).__name__}, {type(bn).__name__})")
        self = cls.__new__(cls)
        _ConvBNAct.__init__(self, conv, bn, negative_slope)
        return self

    @property
    def weight(self) -> Tensor:
        """The convolution's weight: class-name based init functions (the classic DCGAN
        `weights_init` matches 'Conv') find a `.weight` here as on nn.Conv2d."""
        return self.conv.weight

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class ConvTranspose2dBNAct(_ConvBNAct):
    """`nn.ConvTranspose2d` -> `nn.BatchNorm2d` -> `nn.LeakyReLU(negative_slope)`, fused.

    Children `.conv` and `.bn` are the plain torch modules (state_dict keys conv.weight,
    bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked).
    `negative_slope=0` is ReLU. `dilation`, `groups` and `padding_mode` are those of
    nn.ConvTranspose2d. forward(x, output_size=None) as nn.ConvTranspose2d.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, bias: bool = False, *, dilation=1, groups: int = 1,
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, negative_slope: float = 0.2,
                 device=None, dtype=None) -> None:
        kw = dict(device=device, dtype=dtype)
        conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
                                  output_padding, groups, bias, dilation, **kw)
        bn = nn.BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats, **kw)
        super().__init__(conv, bn, negative_slope)

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None:  # (the fused chain takes output_padding only)
            return block_forward(input, self.conv, self.bn, self.negative_slope, output_size)
        return run_blocks(input, [(self.conv, self.bn, self.negative_slope)])


class Conv2dBNAct(_ConvBNAct):
    """`nn.Conv2d` -> `nn.BatchNorm2d` -> `nn.LeakyReLU(negative_slope)`, fused.

    Same children and state_dict keys as ConvTranspose2dBNAct; `dilation`, `groups` and
    `padding_mode` are those of nn.Conv2d.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = False, *, dilation=1, groups: int = 1,
                 padding_mode: str = "zeros", eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, negative_slope: float = 0.2,
                 device=None, dtype=None) -> None:
        kw = dict(device=device, dtype=dtype)
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, **kw)
        bn = nn.BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats, **kw)
        super().__init__(conv, bn, negative_slope)

    def forward(self, input: Tensor) -> Tensor:
        return run_blocks(input, [(self.conv, self.bn, self.negative_slope)])


__all__ = ["norm_act_forward", "ConvTranspose2dBNAct", "Conv2dBNAct", "block_forward", "run_blocks", "conv_forward",
           "fold_bn"]
