"""The rules of fusion: which modules make a fused run, and the layout a converted model
runs it in. Shared by FusedSequential (fastgan/nn/sequential.py) and traced models
(fastgan/nn/traced.py).

- Which modules make a run: `is_conv`, `bn_slope` (a BatchNorm and the activation it applies
  itself), `act_slope` (a ReLU/LeakyReLU after it), `hooked` (hooks keep a module unfused).
- The layout a run executes in on the CPU: `wants_channels_last`.

How the blocks of a run execute (the fused chain or block by block) is
fastgan/nn/blocks.py's: run_blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fastgan.nn.bn_act import BatchNormAct2d
from fastgan.nn.sync_bn_act import SyncBatchNormAct2d

PLAIN_CONVS = (nn.Conv2d, nn.ConvTranspose2d)

# Modules that accept any memory format and keep it (so a channels_last run can go through).
LAYOUT_AGNOSTIC = (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid,
                   nn.Identity)


def hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def is_conv(m: nn.Module) -> bool:
    if type(m) in PLAIN_CONVS:
        return True
    # weight parametrizations (spectral_norm, weight_norm via torch.nn.utils.parametrizations)
    # keep `.weight` a plain attribute, so the fused path sees the parametrized weight.
    return parametrize.is_parametrized(m) and isinstance(m, PLAIN_CONVS)


def act_slope(m: nn.Module) -> float | None:
    """The negative slope of an activation module a run can end in (ReLU is 0), else None."""
    if type(m) is nn.ReLU:
        return 0.0
    if type(m) is nn.LeakyReLU and m.negative_slope >= 0:
        return float(m.negative_slope)
    return None


def bn_slope(m: nn.Module | None) -> float | None:
    """For a BatchNorm a fused block can take, the activation it applies itself (1.0 for
    none: nn.BatchNorm2d, or a SyncBatchNormAct2d made from one by convert(sync_bn=True));
    None for anything else."""
    if type(m) is nn.BatchNorm2d:
        return 1.0
    if type(m) in (SyncBatchNormAct2d, BatchNormAct2d):
        return m.negative_slope
    return None


def wants_channels_last(x: Tensor, n_convs: int, first_conv: nn.Module | None) -> bool:
    """Whether to run a converted model's convolutions in channels_last for an NCHW input
    (`n_convs` convolutions, fused or plain; `first_conv` that of the first fused run).

    On the CPU, oneDNN's convolutions (forward and both backward passes) are faster in
    channels_last than in NCHW, where they also reorder their inputs and outputs. So an
    NCHW input is relaid once on entry, every conv run and elementwise layer runs in
    channels_last, and the result is made contiguous again on exit: the caller sees NCHW
    values and NCHW gradients. With autograd this pays only when the entry and exit
    copies (and their gradients) are shared by two or more convolutions; for a lone
    block it costs more than it saves (measured), so a one-conv model stays NCHW in
    training. Models already in channels_last, other layouts, and devices other than
    the CPU are left as they are."""
    if not (isinstance(x, Tensor) and x.dim() == 4 and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16) and x.is_contiguous()):
        return False
    if n_convs < 2 and torch.is_grad_enabled():
        return False
    w = _stored_weight(first_conv) if first_conv is not None else None
    return w is not None and w.dim() == 4 and w.is_contiguous()


def _stored_weight(conv: nn.Module) -> Tensor | None:
    """The weight tensor a conv stores, without evaluating a parametrization: reading
    `.weight` of a spectral-normalised conv in training runs a power iteration (and
    advances its state), which only the convolution's own call may do."""
    if parametrize.is_parametrized(conv, "weight"):
        return conv.parametrizations.weight.original
    return conv.weight


__all__ = ["PLAIN_CONVS", "LAYOUT_AGNOSTIC", "hooked", "is_conv", "act_slope", "bn_slope",
           "wants_channels_last"]
