"""`fastgan sample CKPT`: images from a training checkpoint, as a PNG grid and/or an .npz.

The EMA generator by default (`ema=False`: the trained G), in eval mode with its own
BatchNorm statistics (fastgan.runs.generator.load_generator). The .npz holds `images`,
uint8 (N, H, W, C), and for a conditional run `labels` (N,): the format `fastgan train
--data` and `fastgan eval --images` read.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from fastgan.data.batches import to_uint8
from fastgan.errors import UserError
from fastgan.runs.checkpoint import write_atomic
from fastgan.models import num_classes
from fastgan.runs.generator import generate, load_generator, sample_labels
from fastgan.train.report import save_grid


def sample(ckpt: str, n: int = 64, out: str | None = None, npz: str | None = None,
           seed: int = 0, ema: bool = True, cls: int | None = None) -> int:
    """Write a PNG grid (`out`; grid.png when neither `out` nor `npz` is given) and/or an
    .npz of `n` samples. A conditional run draws class `cls`, or by default every class
    in turn: the grid then has one row per class (`labels` in the .npz)."""
    if out is None and npz is None:
        out = "grid.png"
    if n < 1:
        raise UserError(f"--n: expected a positive number of images, got {n}")
    if npz is not None and not npz.endswith(".npz"):
        raise UserError(f"--npz {npz}: expected a file name ending in .npz")
    G, cfg, used_ema = load_generator(ckpt, ema)
    labels = sample_labels(G, n, cls)
    rows = None
    if labels is not None and cls is None:  # one row per class: class k's samples in row k
        k = num_classes(G)
        per_row = -(-n // k)
        labels = torch.arange(k).repeat_interleave(per_row)[:n]
        rows = per_row
    images = generate(G, cfg.nz, n, seed, labels)
    written = []
    if out:
        save_grid(images, out, nrow=rows)
        written.append(out)
    if npz:
        arr = to_uint8(images).permute(0, 2, 3, 1).numpy()
        extra = {} if labels is None else {"labels": labels.numpy()}

        def write(f):
            buf = io.BytesIO()
            np.savez(buf, images=arr, **extra)
            f.write(buf.getvalue())

        write_atomic(npz, write)
        written.append(npz)
    which = "EMA generator" if used_ema else "generator" + (" (the run has no EMA copy)"
                                                            if ema else "")
    print(f"{n} samples from the {which} of {ckpt}: {', '.join(written)}")
    return 0


__all__ = ["sample"]
