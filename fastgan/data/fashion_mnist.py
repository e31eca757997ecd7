"""Fashion-MNIST, the built-in dataset: its IDX files ship gzipped inside the package
(fastgan/data/fashion-mnist/, from Debian's dataset-fashion-mnist; see the LICENSE there).

The IDX format is parsed here with gzip and numpy, no download and no torchvision: a
big-endian header (magic number, then one int32 per dimension) followed by the raw uint8
data. Images are 2051 = 0x0803 (uint8, 3 dims: N, 28, 28), labels 2049 = 0x0801 (uint8, N).
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np
import torch

from fastgan.errors import UserError

# A hyphen, not fashion_mnist: a folder named like this module would look like a second,
# namespace package of the same name (setuptools warns on every build).
DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion-mnist")

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    """The uint8 array of one gzipped IDX file, shaped as its header says."""
    try:
        with open(path, "rb") as f:
            data = gzip.decompress(f.read())
    except FileNotFoundError:
        raise UserError(f"{path}: Fashion-MNIST file missing; reinstall fastgan or run "
                        "scripts/fetch_fashion_mnist.py") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: corrupt Fashion-MNIST file (not a valid gzip stream: {e})") from None
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise UserError(f"{path}: corrupt Fashion-MNIST file (only {len(data)} bytes)")
    got_magic, *shape = (int(v) for v in np.frombuffer(data, dtype=">i4", count=1 + ndim))
    if got_magic != magic:
        raise UserError(f"{path}: corrupt Fashion-MNIST file (IDX magic number {got_magic}, "
                        f"expected {magic})")
    if len(data) != header + int(np.prod(shape)):
        raise UserError(f"{path}: corrupt Fashion-MNIST file ({len(data) - header} data bytes, "
                        f"the header's shape {tuple(shape)} needs {int(np.prod(shape))})")
    # frombuffer views the immutable bytes; copy so torch gets a writable array.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_fashion_mnist(split: str = "train", root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's images, uint8 (N, 1, 28, 28), and labels, int64 (N,) in 0..9.

    split: "train" (60,000 images) or "test" (10,000). root: the folder holding the four
    .gz files; the copy inside the package by default.
    """
    if split not in FILES:
        raise UserError(f"Fashion-MNIST split {split!r}: expected 'train' or 'test'")
    root = DEFAULT_ROOT if root is None else root
    images_file, labels_file = (os.path.join(root, name) for name in FILES[split])
    images = _read_idx(images_file, IMAGES_MAGIC, 3)
    labels = _read_idx(labels_file, LABELS_MAGIC, 1)
    if images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
        raise UserError(f"{images_file}: corrupt Fashion-MNIST file (images {images.shape}, "
                        f"{labels.shape[0]} labels in {labels_file}; expected (N, 28, 28) and N labels)")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


# Stacked Fashion-MNIST (the Stacked MNIST of VEEGAN / PacGAN, on Fashion-MNIST): three
# channels, each an independent image of one split, so 10^3 = 1000 modes (class triples).
# Channel k of stacked image i is image perm_k[i] of the split, perm_k drawn from a fixed
# seed per (split, channel): the same images on every machine, each split image once per
# channel. Its label, the mode, is 100 * class(R) + 10 * class(G) + class(B).
STACKED_SEEDS = {"train": 1000, "test": 2000}
STACKED_MODES = 1000


def stack_channels(images: torch.Tensor, classes: torch.Tensor,
                   perms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, H, W) stacked as (M, 3, H, W): channel k of image i is
    images[perms[k][i]]; and the modes 100 a + 10 b + c of their class triples (a, b, c)."""
    stacked = torch.cat([images[p] for p in perms], 1)
    modes = 100 * classes[perms[0]] + 10 * classes[perms[1]] + classes[perms[2]]
    return stacked, modes


def load_stacked_fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked Fashion-MNIST of a split: images uint8 (N, 3, 28, 28), N the split's size
    (60,000 or 10,000), and modes int64 (N,) in 0..999 (see STACKED_SEEDS)."""
    images, classes = load_fashion_mnist(split)
    n = images.shape[0]
    perms = [torch.randperm(n, generator=torch.Generator().manual_seed(STACKED_SEEDS[split] + k))
             for k in range(3)]
    return stack_channels(images, classes, perms)


def stacked_of_modes(modes: list[int], per_mode: int, split: str = "test",
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked images (len(modes) * per_mode, 3, 28, 28) uint8 of the given modes only, and
    their modes: for mode 100 a + 10 b + c, channel 0 is a random image of class a of the
    split, and so on (drawn with replacement, seeded): data with known, few modes, to check
    the mode metric against (fastgan.metrics.modes)."""
    images, classes = load_fashion_mnist(split)
    gen = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(classes == c).flatten() for c in range(10)]
    perms = [[], [], []]
    for m in modes:
        for k, c in enumerate((m // 100, m // 10 % 10, m % 10)):
            pool = by_class[c]
            perms[k].append(pool[torch.randint(len(pool), (per_mode,), generator=gen)])
    return stack_channels(images, classes, [torch.cat(p) for p in perms])


__all__ = ["load_fashion_mnist", "load_stacked_fashion_mnist", "stack_channels",
           "stacked_of_modes", "STACKED_MODES"]
