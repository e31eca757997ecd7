"""Drop-in modules built on fastgan's fused ops."""

from fastgan.nn import recompute
from fastgan.nn.bias_act import BiasAct
from fastgan.nn.blocks import Conv2dBNAct, ConvTranspose2dBNAct
from fastgan.nn.bn_act import BatchNormAct2d
from fastgan.nn.cbn_act import ConditionalBatchNormAct2d
from fastgan.nn.gan_loss import GANLoss
from fastgan.nn.sequential import FusedSequential
from fastgan.nn.sync_bn_act import SyncBatchNormAct2d
from fastgan.nn.upfirdn2d import Downsample2d, Upsample2d

__all__ = ["BatchNormAct2d", "ConvTranspose2dBNAct", "Conv2dBNAct", "FusedSequential",
           "recompute"]
__all__ += ["GANLoss", "SyncBatchNormAct2d"]
__all__ += ["BiasAct", "Downsample2d", "Upsample2d"]
__all__ += ["ConditionalBatchNormAct2d"]
