"""GANLoss: the discriminator and generator losses of a GAN step, as one fused op."""

from __future__ import annotations

from torch import Tensor, nn

from fastgan import functional
from fastgan.ops import gan_loss as _gan_loss


class GANLoss(nn.Module):
    """`GANLoss(kind, reduction)(real_logits, fake_logits)` is
    `fastgan.functional.gan_loss(real_logits, fake_logits, kind, reduction)`: a
    GANLosses(d_loss, g_loss, d_real, d_fake) NamedTuple. See that function for the kinds
    ("minimax", "ns", "lsgan", "hinge", "wgan", "rpgan"), reductions ("mean", "sum"), the
    `real_label` smoothing of the logistic kinds, dtypes and gradients. Double backward is
    not supported. The module has no parameters or buffers.
    """

    def __init__(self, kind: str = "ns", reduction: str = "mean", *,
                 real_label: float = 1.0) -> None:
        super().__init__()
        _gan_loss.check_kind(kind, reduction, real_label)
        self.kind = kind
        self.reduction = reduction
        self.real_label = float(real_label)

    def forward(self, real_logits: Tensor, fake_logits: Tensor) -> functional.GANLosses:
        return functional.gan_loss(real_logits, fake_logits, self.kind, self.reduction,
                                   real_label=self.real_label)

    def extra_repr(self) -> str:
        s = f"kind={self.kind!r}, reduction={self.reduction!r}"
        return s + (f", real_label={self.real_label}" if self.real_label != 1.0 else "")


__all__ = ["GANLoss"]
