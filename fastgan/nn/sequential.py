"""FusedSequential: an nn.Sequential that runs its Conv -> BatchNorm2d -> activation runs fused,
and its pre-activation BatchNorm2d -> activation pairs (a residual block's BN -> ReLU that no
convolution of the Sequential feeds) as one fused BatchNorm+activation.

fastgan.convert turns an nn.Sequential into this subclass in place of its class: the
children, their names, parameters, buffers, hooks and state_dict keys stay exactly what
they were (`seq[0]` is still the nn.ConvTranspose2d, `seq[1]` the nn.BatchNorm2d), only
forward() changes. Runs are found again whenever the children change.

On the CPU an NCHW input is run in channels_last through the convolutions and
elementwise layers of the Sequential and returned NCHW (rules.wants_channels_last).
What makes a run and the layout rule are fastgan/nn/rules.py's; how blocks execute
(ATen convolutions or the triton backend's fused chain) fastgan/nn/blocks.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fastgan.nn import recompute, rules
from fastgan.nn.blocks import block_forward, conv_forward, norm_act_forward
from fastgan.nn.fused_chain import chainable, fused_chain
from fastgan.nn.rules import LAYOUT_AGNOSTIC, PLAIN_CONVS, act_slope, bn_slope, hooked, is_conv
from fastgan.ops.conv_bn_act import chain_enabled


@dataclass(frozen=True)
class Run:
    """children [start, start + length) of a Sequential form one fused block."""

    start: int
    length: int  # 2 (conv, bn) or 3 (conv, bn, act); 2 (bn, act) for a pre-activation
    negative_slope: float  # 1.0 when there is no activation: BatchNorm alone
    conv: bool = True  # False: a pre-activation BatchNorm2d -> activation, no convolution


@dataclass(frozen=True)
class NormAct:
    """A FusedSequential step: a pre-activation BatchNorm2d and the activation after it."""

    bn: nn.BatchNorm2d
    negative_slope: float

    def __call__(self, input: Tensor) -> Tensor:
        return norm_act_forward(input, self.bn, self.negative_slope)


def _pre_activation(bn: nn.Module, act: nn.Module | None) -> float | None:
    """The slope of a BatchNorm2d -> ReLU|LeakyReLU pair outside a conv run, else None."""
    if bn_slope(bn) != 1.0 or act is None or hooked(bn) or hooked(act):
        return None
    return act_slope(act)


def find_runs(modules: list[nn.Module]) -> tuple[list[Run], list[str]]:
    """Fusable runs in a list of children, and why near misses were not fused."""
    found: list[Run] = []
    skipped: list[str] = []
    i = 0
    while i < len(modules):
        conv = modules[i]
        bn = modules[i + 1] if i + 1 < len(modules) else None
        own = bn_slope(bn)
        if not (is_conv(conv) and own is not None):
            # a pre-activation pair; a BatchNorm2d right after a convolution that could not
            # be fused (hooks, channel mismatch) stays unfused with it
            slope = _pre_activation(conv, bn)
            if slope is not None and not (i > 0 and is_conv(modules[i - 1])):
                found.append(Run(i, 2, slope, conv=False))
                i += 2
                continue
            i += 1
            continue
        act = modules[i + 2] if i + 2 < len(modules) and own == 1.0 else None
        slope = act_slope(act) if act is not None else None
        parts = [conv, bn] + ([act] if slope is not None else [])
        slope = own if slope is None else slope
        why = None
        if any(hooked(m) for m in parts):
            why = "a module in the run has forward/backward hooks"
        elif conv.out_channels != bn.num_features:
            why = (f"conv has {conv.out_channels} output channels, BatchNorm2d "
                   f"{bn.num_features} features")
        if why:
            skipped.append(f"children {i}..{i + len(parts) - 1}: {why}")
            i += 1
            continue
        found.append(Run(i, len(parts), slope))
        i += len(parts)
    return found, skipped


def _conv_count(steps: list) -> int:
    return sum(1 for s in steps if isinstance(s, (tuple, *PLAIN_CONVS)))


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
            if r is not None and not r.conv:
                steps.append(NormAct(mods[i], r.negative_slope))
                i += r.length
            elif r is not None:
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
        if isinstance(input, Tensor) and chain_enabled(input):  # decided once per call
            return _run_chained(input, steps)
        relayout = rules.wants_channels_last(input, n_convs, first_conv)
        fmt = torch.channels_last if relayout else None
        for step in steps:
            if relayout:
                # channels_last inside runs of convolutions and elementwise layers only;
                # anything else gets the layout it was given
                known = isinstance(step, (tuple, NormAct)) or type(step) in LAYOUT_AGNOSTIC
                input = input.contiguous(memory_format=torch.channels_last if known
                                         else torch.contiguous_format)
            if isinstance(step, tuple):
                conv, bn, slope = step
                input = block_forward(input, conv, bn, slope, memory_format=fmt)
            elif type(step) in PLAIN_CONVS and not hooked(step) and isinstance(input, Tensor):
                # a convolution outside a run (a discriminator's first and last layers):
                # the same ATen call as its forward(), in the run's layout, with the
                # matrix-product form where it applies (blocks.conv_forward)
                input = conv_forward(step, input, step.weight, step.bias, memory_format=fmt)
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
        plain = type(step) in PLAIN_CONVS and not hooked(step) and chainable(step)
        if chain or plain:
            input = fused_chain(input, chain, tail=step if plain else None)
            chain = []
            if plain:
                continue
        if isinstance(step, tuple):  # a block the chain cannot take (groups, SyncBN, hooks)
            input = block_forward(input, *step)
        elif step is not None:
            input = step(input)
    return input


__all__ = ["FusedSequential", "find_runs", "NormAct", "Run"]
