"""Drop-in modules built on fastgan's fused ops."""

from fastgan.nn.bn_act import BatchNormAct2d

__all__ = ["BatchNormAct2d"]
