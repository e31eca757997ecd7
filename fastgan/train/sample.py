"""`fastgan sample CKPT`: images from a training checkpoint, as a PNG grid and/or an .npz.

The EMA generator by default (`ema=False`: the trained G), in eval mode with its own
BatchNorm statistics (loop.sampling_generator). The .npz holds `images`, uint8
(N, H, W, C): the format `fastgan train --data` and `fastgan eval --images` read.
"""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import torch

import fastgan
from fastgan.data.batches import to_uint8
from fastgan.errors import UserError
from fastgan.train.checkpoint import load_checkpoint, write_atomic
from fastgan.train.config import TrainConfig, default_device
from fastgan.train.loop import build_models, sampling_generator
from fastgan.train.report import save_grid


def load_generator(ckpt: str, ema: bool = True, device: str | None = None,
                   what: str = "CKPT") -> tuple[torch.nn.Module, TrainConfig, bool]:
    """(G ready to sample, the run's config, whether it is the EMA copy) from a checkpoint
    file or a run directory."""
    state = load_checkpoint(ckpt, what)
    cfg = TrainConfig.from_json(state["config"], ckpt)
    device = device or default_device()
    G, _ = build_models(cfg, state["nc"])
    use_ema = ema and state.get("G_ema") is not None
    try:
        G.load_state_dict(state["G_ema"] if use_ema else state["G"])
    except (RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{what} {ckpt}: the generator's weights do not fit the checkpoint's "
                        f"config ({first[:300]})") from None
    G = fastgan.convert(G.to(device), inplace=True)
    return sampling_generator(G, cfg.nz, device, cfg.seed), cfg, use_ema


GEN_BATCH = 250


@torch.no_grad()
def generate_batches(G: torch.nn.Module, nz: int, n: int, seed: int) -> Iterator[torch.Tensor]:
    """n images of G in [-1, 1], GEN_BATCH at a time on G's device, from CPU noise seeded
    by `seed` (the same images whatever the device)."""
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, n, GEN_BATCH):
        yield G(torch.randn(min(GEN_BATCH, n - i), nz, 1, 1, generator=gen).to(device))


def generate(G: torch.nn.Module, nz: int, n: int, seed: int) -> torch.Tensor:
    """n images in [-1, 1], float32 on the CPU (generate_batches, concatenated)."""
    return torch.cat([x.float().cpu() for x in generate_batches(G, nz, n, seed)])


def sample(ckpt: str, n: int = 64, out: str | None = None, npz: str | None = None,
           seed: int = 0, ema: bool = True) -> int:
    """Write a PNG grid (`out`; grid.png when neither `out` nor `npz` is given) and/or an
    .npz of `n` samples."""
    if out is None and npz is None:
        out = "grid.png"
    if n < 1:
        raise UserError(f"--n: expected a positive number of images, got {n}")
    if npz is not None and not npz.endswith(".npz"):
        raise UserError(f"--npz {npz}: expected a file name ending in .npz")
    G, cfg, used_ema = load_generator(ckpt, ema)
    images = generate(G, cfg.nz, n, seed)
    written = []
    if out:
        save_grid(images, out)
        written.append(out)
    if npz:
        arr = to_uint8(images).permute(0, 2, 3, 1).numpy()

        def write(f):
            buf = io.BytesIO()
            np.savez(buf, images=arr)
            f.write(buf.getvalue())

        write_atomic(npz, write)
        written.append(npz)
    which = "EMA generator" if used_ema else "generator" + (" (the run has no EMA copy)"
                                                            if ema else "")
    print(f"{n} samples from the {which} of {ckpt}: {', '.join(written)}")
    return 0


__all__ = ["sample", "load_generator", "generate", "generate_batches"]
