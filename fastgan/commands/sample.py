"""`fastgan sample CKPT`: images from a training checkpoint, as a PNG grid and/or an .npz.

The EMA generator by default (`ema=False`: the trained G), in eval mode with its own
BatchNorm statistics (fastgan.runs.generator.load_generator). The .npz holds `images`,
uint8 (N, H, W, C): the format `fastgan train --data` and `fastgan eval --images` read.
"""

from __future__ import annotations

import io

import numpy as np

from fastgan.data.batches import to_uint8
from fastgan.errors import UserError
from fastgan.runs.checkpoint import write_atomic
from fastgan.runs.generator import generate, load_generator
from fastgan.train.report import save_grid


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


__all__ = ["sample"]
