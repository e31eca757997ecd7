"""TEMPORARY stand-in (eager composite) until the fused op lands from the cbn branch."""
from __future__ import annotations
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from fastgan.ops import bn_act as _bn_act


class ConditionalBatchNormAct2d(nn.modules.batchnorm._BatchNorm):
    def __init__(self, num_features, num_classes, eps=1e-5, momentum=0.1,
                 track_running_stats=True, negative_slope=0.2, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine=False,
                         track_running_stats=track_running_stats, device=device, dtype=dtype)
        self.num_classes = num_classes
        self.negative_slope = float(negative_slope)
        self.weight = nn.Parameter(torch.ones(num_classes, num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_classes, num_features, device=device, dtype=dtype))

    def forward(self, input: Tensor, labels: Tensor) -> Tensor:
        rm, rv, training, factor = _bn_act.module_args(self)
        y = F.batch_norm(input, rm, rv, None, None, training, factor, self.eps)
        y = y * self.weight[labels][:, :, None, None] + self.bias[labels][:, :, None, None]
        return F.leaky_relu(y, self.negative_slope)
