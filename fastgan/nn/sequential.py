"""FusedSequential: an nn.Sequential that runs its Conv -> BatchNorm2d -> activation runs fused.

fastgan.convert turns an nn.Sequential into this subclass in place of its class: the
children, their names, parameters, buffers, hooks and state_dict keys stay exactly what
they were (`seq[0]` is still the nn.ConvTranspose2d, `seq[1]` the nn.BatchNorm2d), only
forward() changes. Runs are found again whenever the children change.

On the CPU an NCHW input is run in channels_last through the convolutions and
elementwise layers of the Sequential and returned NCHW (see _wants_channels_last).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fastgan.nn import recompute
from fastgan.nn.blocks import conv_bn_act, conv_forward
from fastgan.nn.fused_chain import chainable, fused_chain
from fastgan.ops.conv_bn_act import chain_enabled
from fastgan.nn.bn_act import BatchNormAct2d
from fastgan.nn.sync_bn_act import SyncBatchNormAct2d


@dataclass(frozen=True)
class Run:
    """children [start, start + length) of a Sequential form one fused block."""

    start: int
    length: int  # 2 (conv, bn) or 3 (conv, bn, act)
    negative_slope: float  # 1.0 when there is no activation: BatchNorm alone


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _is_conv(m: nn.Module) -> bool:
    if type(m) in (nn.Conv2d, nn.ConvTranspose2d):
        return True
    # weight parametrizations (spectral_norm, weight_norm via torch.nn.utils.parametrizations)
    # keep `.weight` a plain attribute, so the fused path sees the parametrized weight.
    return parametrize.is_parametrized(m) and isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))


def _slope(m: nn.Module) -> float | None:
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


def find_runs(modules: list[nn.Module]) -> tuple[list[Run], list[str]]:
    """Fusable runs in a list of children, and why near misses were not fused."""
    runs: list[Run] = []
    skipped: list[str] = []
    i = 0
    while i < len(modules):
        conv = modules[i]
        bn = modules[i + 1] if i + 1 < len(modules) else None
        own = bn_slope(bn)
        if not (_is_conv(conv) and own is not None):
            i += 1
            continue
        act = modules[i + 2] if i + 2 < len(modules) and own == 1.0 else None
        slope = _slope(act) if act is not None else None
        parts = [conv, bn] + ([act] if slope is not None else [])
        slope = own if slope is None else slope
        why = None
        if any(_hooked(m) for m in parts):
            why = "a module in the run has forward/backward hooks"
        elif conv.out_channels != bn.num_features:
            why = (f"conv has {conv.out_channels} output channels, BatchNorm2d "
                   f"{bn.num_features} features")
        if why:
            skipped.append(f"children {i}..{i + len(parts) - 1}: {why}")
            i += 1
            continue
        runs.append(Run(i, len(parts), slope))
        i += len(parts)
    return runs, skipped


_PLAIN_CONVS = (nn.Conv2d, nn.ConvTranspose2d)

# Modules that accept any memory format and keep it (so a channels_last run can go through).
_LAYOUT_AGNOSTIC = (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid,
                    nn.Identity)


def _conv_count(steps: list) -> int:
    return sum(1 for s in steps if isinstance(s, (tuple, *_PLAIN_CONVS)))


def _wants_channels_last(x: Tensor, n_convs: int, first_conv: nn.Module | None) -> bool:
    """Whether to run this Sequential's convolutions in channels_last for an NCHW input
    (`n_convs` convolutions, fused or plain; `first_conv` that of the first fused run).

    On the CPU, oneDNN's convolutions (forward and both backward passes) are faster in
    channels_last than in NCHW, where they also reorder their inputs and outputs. So an
    NCHW input is relaid once on entry, every conv run and elementwise layer runs in
    channels_last, and the result is made contiguous again on exit: the caller sees NCHW
    values and NCHW gradients. With autograd this pays only when the entry and exit
    copies (and their gradients) are shared by two or more convolutions; for a lone
    block it costs more than it saves (measured), so a one-conv Sequential stays NCHW in
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


class FusedSequential(nn.Sequential):
    """nn.Sequential whose Conv2d|ConvTranspose2d -> BatchNorm2d [-> ReLU|LeakyReLU] runs
    execute as fastgan fused blocks (see fastgan.convert)."""

    def _plan(self) -> tuple[list, int, nn.Module | None]:
        """(steps, number of convolutions, first fused run's conv), rebuilt when the
        children change. A step is a child, or (conv, bn, negative_slope) for a run."""
        mods = list(self._modules.values())
        key = tuple(id(m) for m in mods)
        cached = self.__dict__.get("_fastgan_plan")
        if cached is not None and cached[0] == key:
            return cached[1]
        runs, _ = find_runs(mods)
        steps: list = []
        by_start = {r.start: r for r in runs}
        i = 0
        while i < len(mods):
            r = by_start.get(i)
            if r is not None:
                steps.append((mods[i], mods[i + 1], r.negative_slope))
                i += r.length
            else:
                steps.append(mods[i])
                i += 1
        first = next((s[0] for s in steps if isinstance(s, tuple)), None)
        plan = (steps, _conv_count(steps), first)
        self.__dict__["_fastgan_plan"] = (key, plan)
        return plan

    def _run(self, input: Tensor) -> Tensor:
        steps, n_convs, first_conv = self._plan()
        if isinstance(input, Tensor) and chain_enabled(input):
            return _run_chained(input, steps)
        relayout = _wants_channels_last(input, n_convs, first_conv)
        for step in steps:
            if relayout:
                # channels_last inside runs of convolutions and elementwise layers only;
                # anything else gets the layout it was given
                known = isinstance(step, tuple) or type(step) in _LAYOUT_AGNOSTIC
                input = input.contiguous(memory_format=torch.channels_last if known
                                         else torch.contiguous_format)
            if isinstance(step, tuple):
                conv, bn, slope = step
                input = conv_bn_act(input, conv, bn, slope,
                                    memory_format=torch.channels_last if relayout else None)
            elif type(step) in _PLAIN_CONVS and not _hooked(step) and isinstance(input, Tensor):
                # a convolution outside a run (a discriminator's first and last layers):
                # the same ATen call as its forward(), in the run's layout, with the
                # matrix-product form where it applies (blocks.conv_forward)
                input = conv_forward(step, input, step.weight, step.bias,
                                     memory_format=torch.channels_last if relayout else None)
            else:
                input = step(input)
        if relayout and isinstance(input, Tensor):
            input = input.contiguous()
        return input

    def forward(self, input: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return self._run(input)
        with recompute.scope():
            return self._run(input)


def _run_chained(input: Tensor, steps: list) -> Tensor:
    """The steps with each stretch of consecutive chainable blocks run as one fused chain
    (fastgan/nn/fused_chain.py), a plain convolution right after a stretch joining it as
    its tail: no normalised activation is written inside a stretch, and no convolution
    runs in ATen."""
    chain: list = []
    for step in steps + [None]:
        if isinstance(step, tuple) and chainable(step[0], step[1]):
            chain.append(step)
            continue
        plain = type(step) in _PLAIN_CONVS and not _hooked(step) and chainable(step)
        if chain or plain:
            input = fused_chain(input, chain, tail=step if plain else None)
            chain = []
            if plain:
                continue
        if isinstance(step, tuple):
            input = conv_bn_act(input, *step)
        elif step is not None:
            input = step(input)
    return input


__all__ = ["FusedSequential", "find_runs", "Run", "bn_slope"]
