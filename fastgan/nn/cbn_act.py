"""ConditionalBatchNormAct2d: class-conditional BatchNorm2d followed by LeakyReLU, fused."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgan.ops import bn_act as _bn_act
from fastgan.ops import cbn_act as _cbn_act
from fastgan.ops import sync_bn_act as _sync


class ConditionalBatchNormAct2d(nn.modules.batchnorm._BatchNorm):
    """Class-conditional BatchNorm2d (de Vries et al. 2017, as in SNGAN / BigGAN
    generators) then LeakyReLU(negative_slope), as one fused op.

    Normalises as `nn.BatchNorm2d(num_features, affine=False)` (batch statistics in
    training, running statistics in eval, the same buffers, momentum rule and
    state_dict), then applies a per-class affine: for labels y, `out =
    leaky_relu(x_hat * weight[y] + bias[y])`. `weight` (num_classes, C) starts at ones,
    `bias` at zeros. `forward(input, labels)` takes labels as an (N,) integer tensor of
    class indices in [0, num_classes) (checked with a clear error for CPU labels; on a GPU
    an index out of range trips the lookup's device-side assert, as nn.Embedding's does).
    `negative_slope=0` gives ReLU. A _BatchNorm subclass, so code that finds BatchNorm
    modules (standing statistics, weight init by class name) finds it.

    `fastgan.convert(model, sync_bn=True)` sets `synchronized` (and `process_group`, None
    for the default group): in training under torch.distributed the statistics are then
    those of the whole group (fastgan.ops.sync_bn_act, one all-reduce each way), and the
    per-sample affine and activation follow as plain differentiable ops.
    """

    def __init__(self, num_features: int, num_classes: int, eps: float = 1e-5,
                 momentum: float | None = 0.1, track_running_stats: bool = True,
                 negative_slope: float = 0.2, device=None, dtype=None) -> None:
        if num_classes <= 0:
            raise ValueError(f"ConditionalBatchNormAct2d: num_classes must be positive, got "
                             f"{num_classes}")
        if negative_slope < 0:
            raise ValueError(f"ConditionalBatchNormAct2d: negative_slope must be >= 0, got "
                             f"{negative_slope}")
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False,
                         track_running_stats=track_running_stats, device=device, dtype=dtype)
        self.num_classes = num_classes
        self.negative_slope = float(negative_slope)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_classes, num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_classes, num_features, **factory))
        self.synchronized = False
        self.process_group = None

    def synchronizes(self) -> bool:
        """Whether a forward now merges statistics across ranks (synchronized, training,
        in a group of two or more)."""
        return self.synchronized and self.training and _sync.group_size(self.process_group) > 1

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if isinstance(getattr(self, "weight", None), nn.Parameter):  # (after __init__)
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"ConditionalBatchNormAct2d: expected 4-D input (N, C, H, W), got "
                             f"{input.dim()}-D input of shape {tuple(input.shape)}")

    def _check_labels(self, input: Tensor, labels: Tensor) -> None:
        if not isinstance(labels, Tensor):
            raise TypeError(f"ConditionalBatchNormAct2d: labels must be a Tensor of class "
                            f"indices, got {type(labels).__name__}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"ConditionalBatchNormAct2d: labels must be an integer tensor, got "
                            f"{labels.dtype}")
        if labels.dim() != 1 or labels.shape[0] != input.shape[0]:
            raise ValueError(f"ConditionalBatchNormAct2d: labels must have shape "
                             f"({input.shape[0]},) (one class per sample of the input of shape "
                             f"{tuple(input.shape)}), got {tuple(labels.shape)}")
        if labels.device != self.weight.device:
            raise ValueError(f"ConditionalBatchNormAct2d: labels are on {labels.device} but "
                             f"the module is on {self.weight.device}")
        # the value check reads the labels: on the CPU only (on a GPU it would synchronise
        # every call; the embedding lookup's device-side assert catches them there), and
        # not under torch.compile (a graph break; the lookup raises there as well)
        if labels.is_cpu and not torch.compiler.is_compiling() and labels.numel() and (
                int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"ConditionalBatchNormAct2d: labels must be class indices in "
                             f"[0, {self.num_classes}), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")

    def forward(self, input: Tensor, labels: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_labels(input, labels)
        rm, rv, bn_training, factor = _bn_act.module_args(self)
        # the class rows as an embedding lookup: its backward (embedding_dense_backward)
        # adds the per-sample gradients into the rows in microseconds, where index_select's
        # (scatter_add_) and indexing's (index_put_) take milliseconds on the CPU
        if labels.dtype not in (torch.int32, torch.int64):
            labels = labels.long()
        scale = F.embedding(labels, self.weight)
        shift = F.embedding(labels, self.bias)
        if self.synchronizes():
            x_hat = _sync.sync_batch_norm_act(input, rm, rv, None, None, factor, self.eps, 1.0,
                                              self.process_group)[0]
            y = x_hat * scale[:, :, None, None].to(x_hat.dtype) + shift[:, :, None, None].to(
                x_hat.dtype)
            return F.leaky_relu(y, self.negative_slope)
        return _cbn_act.conditional_batch_norm_act(input, scale, shift, rm, rv, bn_training,
                                                   factor, self.eps, self.negative_slope)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_classes={self.num_classes}, eps={self.eps}, "
                f"momentum={self.momentum}, track_running_stats={self.track_running_stats}, "
                f"negative_slope={self.negative_slope}")


__all__ = ["ConditionalBatchNormAct2d"]
