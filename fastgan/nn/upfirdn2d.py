"""Upsample2d / Downsample2d: StyleGAN's FIR resampling (`fastgan.functional.upsample2d`,
`downsample2d`) as modules holding their filter as a buffer."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from fastgan import functional


class _FIRResample(nn.Module):
    resample: Any  # fastgan.functional.upsample2d or downsample2d

    def __init__(self, factor: Any = 2, filter: Any = (1, 3, 3, 1), padding: Any = 0,
                 flip_filter: bool = False, gain: float = 1) -> None:
        super().__init__()
        self.factor, self.padding, self.flip_filter, self.gain = factor, padding, flip_filter, gain
        # the filter moves with .to(device) and is saved in state_dict, as StyleGAN's
        # resample_filter buffers are
        self.register_buffer("filter", functional.setup_filter(
            list(filter) if isinstance(filter, tuple) else filter))

    def forward(self, x: Tensor) -> Tensor:
        return self.resample(x, self.filter, self.factor, self.padding, self.flip_filter, self.gain)

    def extra_repr(self) -> str:
        s = f"factor={self.factor}, filter={tuple(self.filter.shape)}"
        if self.padding != 0:
            s += f", padding={self.padding}"
        if self.flip_filter:
            s += ", flip_filter=True"
        return s + (f", gain={self.gain}" if self.gain != 1 else "")


class Upsample2d(_FIRResample):
    """FIR upsampling of (N, C, H, W) by `factor` (an int or [x, y]):
    `fastgan.functional.upsample2d(x, setup_filter(filter), factor, padding, flip_filter,
    gain)`, the output `factor` times the input. Arguments: (factor=2, filter=(1, 3, 3, 1),
    padding=0, flip_filter=False, gain=1); the default filter is StyleGAN2's."""

    resample = staticmethod(functional.upsample2d)


class Downsample2d(_FIRResample):
    """FIR downsampling of (N, C, H, W) by `factor` (an int or [x, y]):
    `fastgan.functional.downsample2d(x, setup_filter(filter), factor, padding,
    flip_filter, gain)`, the output the input divided by `factor`. Arguments as
    Upsample2d's."""

    resample = staticmethod(functional.downsample2d)


__all__ = ["Downsample2d", "Upsample2d"]
