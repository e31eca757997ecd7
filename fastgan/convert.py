"""fastgan.convert: make an existing model use the fused blocks, one call, same state_dict.

What is converted: inside every nn.Sequential (at any depth, the model itself included),
each run of children

    nn.Conv2d | nn.ConvTranspose2d  ->  nn.BatchNorm2d  ->  nn.ReLU | nn.LeakyReLU (slope >= 0)

(in-place activations included; a Conv -> BatchNorm2d run without an activation is fused
too, as slope 1), and each pre-activation pair

    nn.BatchNorm2d  ->  nn.ReLU | nn.LeakyReLU      (no convolution right before it)

as in the residual blocks of SNGAN/BigGAN-style generators, which runs as one fused
BatchNorm+activation. The Sequential's class becomes fastgan.nn.FusedSequential, a subclass
whose forward runs those children as fused blocks; the children themselves are untouched,
so module names, parameters, buffers, state_dict keys and values, and class-name based
init functions (the classic DCGAN `weights_init`, which looks for 'Conv' and 'BatchNorm')
are exactly as before. Checkpoints load both ways. The converted model's forward opens a
recompute scope (fastgan.nn.recompute), so any layer that saves a block output for
backward keeps the block's conv output instead. On the CPU, a converted Sequential with
two or more convolutions runs them in channels_last for an NCHW input (oneDNN's
convolutions are faster there, forward and backward) and returns NCHW (the caller's tensors and the parameters keep their layouts).
Models already in channels_last stay in it end to end.

With `sync_bn=True` every 2-D BatchNorm first becomes a fastgan.nn.SyncBatchNormAct2d
(statistics merged across torch.distributed ranks), in place, and runs ending in one are
fused as well; a ConditionalBatchNormAct2d merges its statistics the same way.

Not converted (reported): runs where a module has forward/backward hooks (the old
hook-based spectral_norm, say; torch.nn.utils.parametrizations are fine), subclasses of
Conv2d/BatchNorm2d/ReLU/LeakyReLU (nn.SyncBatchNorm unless sync_bn=True, custom layers),
Sequential subclasses that override forward, Conv -> LeakyReLU without BatchNorm (it would not pay: the
in-place activation already keeps one tensor, and its pass is a few percent of the
convolution's; such layers still run in channels_last with the rest).

Modules that call their layers from their own forward() (`F.relu(self.bn1(self.conv1(x)))`)
are traced with torch.fx, each child kept as one call, and their Conv -> BatchNorm2d
[-> relu / leaky_relu, as a module, a function or a tensor method] chains fused; the
module keeps its identity, children, state_dict and other methods, and its class is
swapped for a same-named subclass with the rewritten forward (fastgan.nn.traced). Left
alone, and reported: forwards that torch.fx cannot trace (control flow on tensor
values), forwards that differ between train and eval mode, and chains whose conv output
is used elsewhere too or whose modules have hooks. `trace=False` turns this off. Like a
converted Sequential, a traced forward with two or more convolutions runs them in
channels_last for an NCHW CPU input; layers that are not elementwise (views, flatten,
other modules) and the outputs get NCHW tensors.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

from torch import nn

from fastgan.nn import recompute, traced
from fastgan.nn.bn_act import BatchNormAct2d
from fastgan.nn.cbn_act import ConditionalBatchNormAct2d
from fastgan.nn.sync_bn_act import SyncBatchNormAct2d, synchronize_
from fastgan.nn.sequential import FusedSequential, find_runs

log = logging.getLogger("fastgan")


@dataclass
class ConversionReport:
    """What fastgan.convert fused (`fused`) and which near misses it left alone (`skipped`)."""

    fused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    synchronized: list[str] = field(default_factory=list)  # with sync_bn=True

    def __str__(self) -> str:
        lines = [f"fastgan.convert: {len(self.fused)} block(s) fused"
                 + (f", {len(self.synchronized)} BatchNorm(s) synchronized"
                    if self.synchronized else "")]
        lines += [f"  synced  {s}" for s in self.synchronized]
        lines += [f"  fused   {s}" for s in self.fused]
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)


def _describe(seq: nn.Sequential, start: int, length: int) -> str:
    names = list(seq._modules)[start:start + length]
    kinds = [type(seq._modules[n]).__name__ for n in names]
    return f"[{', '.join(names)}] " + " -> ".join(kinds)


_SYNCABLE = (nn.BatchNorm2d, BatchNormAct2d, nn.SyncBatchNorm)


def _synchronize(module: nn.Module, rep: ConversionReport) -> None:
    """Every BatchNorm of `module` that can be becomes a SyncBatchNormAct2d, in place."""
    for name, m in module.named_modules():
        where = name or "<root>"
        if type(m) is SyncBatchNormAct2d:
            rep.synchronized.append(f"{where} (already SyncBatchNormAct2d)")
        elif isinstance(m, ConditionalBatchNormAct2d):
            m.synchronized = True
            rep.synchronized.append(f"{where} ConditionalBatchNormAct2d (statistics synchronized)")
        elif type(m) in _SYNCABLE:
            kind = type(m).__name__
            synchronize_(m)
            rep.synchronized.append(f"{where} {kind} -> SyncBatchNormAct2d")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            rep.skipped.append(f"{where}: {type(m).__name__} is not a 2-D BatchNorm fastgan can "
                               f"synchronize; its statistics stay per process")


def convert(module: nn.Module, inplace: bool = False, *, sync_bn: bool = False,
            report: bool = False, trace: bool = True):
    """Fuse every Conv2d|ConvTranspose2d -> BatchNorm2d -> ReLU|LeakyReLU run in `module`'s
    nn.Sequentials (see the module docstring for what is and is not converted).

    With `sync_bn=True`, every nn.BatchNorm2d, fastgan BatchNormAct2d and nn.SyncBatchNorm
    (from nn.SyncBatchNorm.convert_sync_batchnorm, say), inside fused blocks or not, first
    becomes a fastgan.nn.SyncBatchNormAct2d in place (same object, parameters, buffers and
    state_dict; an nn.SyncBatchNorm keeps its process group, a BatchNormAct2d its slope),
    so its training statistics are those of the whole torch.distributed group; then runs
    are fused as usual, a fused block merging its statistics across ranks.
    nn.SyncBatchNorm modules are taken to be 2-D (fed (N, C, H, W)). Other BatchNorms
    (1-D, 3-D, subclasses) are left alone and reported.

    With `trace=True` (the default), a module that calls a Conv, a BatchNorm2d and an
    activation among its own children from its forward() is traced with torch.fx and its
    chains fused too (fastgan.nn.traced; its docstring says what the trace keeps and
    what it guards against); `trace=False` leaves such modules alone and reports them.

    Returns the converted module (a deep copy unless `inplace=True`), or
    `(module, ConversionReport)` with `report=True`. The report is also logged at INFO
    level on the "fastgan" logger.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fastgan.convert: module must be a torch.nn.Module, got "
                        f"{type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    rep = ConversionReport()
    if sync_bn:
        _synchronize(module, rep)
    for name, m in module.named_modules():
        if not isinstance(m, nn.Sequential):
            continue
        where = name or "<root>"
        runs, skipped = find_runs(list(m._modules.values()))
        rep.skipped += [f"{where} {s}" for s in skipped]
        if not runs:
            continue
        if type(m) not in (nn.Sequential, FusedSequential):
            rep.skipped.append(f"{where}: {type(m).__name__} is a Sequential subclass with its "
                               f"own forward()")
            continue
        m.__class__ = FusedSequential
        rep.fused += [f"{where} {_describe(m, r.start, r.length)}" for r in runs]
    for name, m in list(module.named_modules()):
        if not traced.candidate(m):
            continue
        where = name or "<root>"
        if not trace:
            rep.skipped.append(f"{where}: {type(m).__name__} calls its layers from forward() "
                               f"(trace=False)")
            continue
        try:
            rep.fused += [f"{where} {d}" for d in traced.convert_traced(m)]
        except Exception as e:  # noqa: BLE001 - any trace failure leaves the module as it was
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            rep.skipped.append(f"{where}: {type(m).__name__}.forward could not be traced "
                               f"({msg})")
    if rep.fused or rep.synchronized:
        recompute.install_scope_hooks(module)
    log.info("%s", rep)
    return (module, rep) if report else module


__all__ = ["convert", "ConversionReport"]
