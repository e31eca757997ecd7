"""SyncBatchNormAct2d: nn.SyncBatchNorm followed by LeakyReLU, as fastgan's fused op with
statistics merged across a torch.distributed process group (fastgan/ops/sync_bn_act.py)."""

from __future__ import annotations

from torch import Tensor, nn

from fastgan.ops import bn_act as _bn_act
from fastgan.ops import sync_bn_act as _sync


class SyncBatchNormAct2d(nn.SyncBatchNorm):
    """`nn.SyncBatchNorm(num_features, ...)` then `nn.LeakyReLU(negative_slope)`, fused.

    In training, the batch statistics are those of the whole `process_group` (the default
    group when None): each rank's are weighted by its count (uneven batches, or a rank with
    no samples), and the running statistics, updated with the unbiased variance of the
    global count, are identical on every rank. One all-reduce of 2C + 1 values forward and
    one backward; double backward works. Without an initialised torch.distributed, in a
    group of one, on a rank outside the group and in eval mode it is BatchNormAct2d: no
    collective. Unlike nn.SyncBatchNorm it runs on CPU tensors too (gloo).

    A subclass of nn.SyncBatchNorm with its parameters, buffers and state_dict keys, so
    checkpoints load both ways. Input: 4-D (N, C, H, W). `negative_slope=0` is ReLU,
    `negative_slope=1` is BatchNorm alone (what fastgan.convert(sync_bn=True) makes of a
    plain BatchNorm2d).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 negative_slope: float = 0.2, process_group=None, device=None,
                 dtype=None) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, process_group=process_group,
                         device=device, dtype=dtype)
        if negative_slope < 0:
            raise ValueError(f"SyncBatchNormAct2d: negative_slope must be >= 0, got "
                             f"{negative_slope}")
        self.negative_slope = float(negative_slope)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"SyncBatchNormAct2d: expected 4-D input (N, C, H, W), got "
                             f"{input.dim()}-D input of shape {tuple(input.shape)}")

    def synchronizes(self) -> bool:
        """Whether a forward now merges statistics across ranks (training mode with batch
        statistics, in a group of two or more that this rank belongs to)."""
        return self.training and _sync.group_size(self.process_group) > 1

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        sync = self.synchronizes()
        rm, rv, bn_training, factor = _bn_act.module_args(self)
        if sync:
            return _sync.sync_batch_norm_act(input, rm, rv, self.weight, self.bias, factor,
                                             self.eps, self.negative_slope,
                                             self.process_group)[0]
        return _bn_act.batch_norm_act(input, rm, rv, self.weight, self.bias, bn_training, factor,
                                      self.eps, self.negative_slope)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", negative_slope={self.negative_slope}"


def synchronize_(bn: nn.modules.batchnorm._BatchNorm, negative_slope: float = 1.0,
                 process_group=None) -> SyncBatchNormAct2d:
    """Turn `bn` (an nn.BatchNorm2d, fastgan BatchNormAct2d or nn.SyncBatchNorm) into a
    SyncBatchNormAct2d in place: same object, parameters, buffers, hooks and state_dict;
    only its class changes. A BatchNormAct2d keeps its slope; an nn.SyncBatchNorm its
    process group."""
    slope = getattr(bn, "negative_slope", negative_slope)
    group = getattr(bn, "process_group", None) or process_group
    bn.__class__ = SyncBatchNormAct2d
    bn.negative_slope = float(slope)
    bn.process_group = group
    return bn


def desynchronize_(module: nn.Module) -> nn.Module:
    """Every SyncBatchNormAct2d in `module` becomes a BatchNormAct2d in place (same
    parameters, buffers, slope and state_dict), and every ConditionalBatchNormAct2d stops
    synchronizing: for a copy that one process runs on its
    own, in training mode too (a sampling generator's standing statistics), where a
    collective would wait for processes that never join it."""
    from fastgan.nn.bn_act import BatchNormAct2d
    from fastgan.nn.cbn_act import ConditionalBatchNormAct2d

    for m in module.modules():
        if type(m) is SyncBatchNormAct2d:
            m.__class__ = BatchNormAct2d
            del m.process_group
        elif isinstance(m, ConditionalBatchNormAct2d):
            m.synchronized = False
    return module


__all__ = ["SyncBatchNormAct2d", "synchronize_", "desynchronize_"]
