"""What the class-conditional models share (`fastgan train --conditional`).

- `LabelledSequential`: an nn.Sequential whose forward(x, labels) hands the labels to the
  layers that take them (conditional BatchNorm) and runs the others as usual.
- `Projection`: the projection discriminator's class term (Miyato and Koyama, "cGANs with
  Projection Discriminator", ICLR 2018): <embed(y), h> added to the unconditional logit.
- `num_classes(model)`: how many classes a model is conditioned on (0: unconditional).
  Conditional models keep it in a `num_classes` attribute; the engine (sampling, grids,
  evaluation) asks here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastgan.nn import ConditionalBatchNormAct2d


def num_classes(model: nn.Module) -> int:
    """The number of classes `model` draws or judges (0: unconditional)."""
    return int(getattr(model, "num_classes", 0) or 0)


def check_labels(labels: Tensor | None, n: int, classes: int, where: str) -> None:
    """A clear error unless `labels` fits a conditional model (int64 (n,) in [0, classes)),
    or unless it is None for an unconditional one."""
    if classes == 0:
        if labels is not None:
            raise ValueError(f"{where}: labels given to an unconditional model")
        return
    if labels is None:
        raise ValueError(f"{where}: a conditional model needs labels (int64 (N,) in "
                         f"0..{classes - 1})")
    if labels.dtype != torch.long or labels.shape != (n,):
        raise ValueError(f"{where}: labels must be int64 of shape ({n},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")


class LabelledSequential(nn.Sequential):
    """nn.Sequential whose layers that take labels (ConditionalBatchNormAct2d) get them."""

    def forward(self, input: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        for m in self:
            input = m(input, labels) if isinstance(m, ConditionalBatchNormAct2d) else m(input)
        return input


class Projection(nn.Module):
    """<embed(labels), h> / sqrt(dim) per sample: a projection discriminator's class term
    for features h (N, dim). The embedding starts at N(0, 1); the scaling keeps the term's
    size independent of the width (R3GAN's conditional head scales it so too)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, dim)
        nn.init.normal_(self.embed.weight)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, h: Tensor, labels: Tensor) -> Tensor:
        return (self.embed(labels) * h).sum(1) * self.scale


__all__ = ["LabelledSequential", "Projection", "check_labels", "num_classes"]
