"""The data of `fastgan train`: `--data` names the built-in Fashion-MNIST, a folder of
PNG/JPEG images or an .npz file, and `load_dataset` turns it into one uint8 tensor
(N, C, S, S) held in memory; `Batches` streams shuffled, resumable batches of it.

    images = load_dataset("fashion-mnist", 32)     # (60000, 1, 32, 32) uint8
    batches = Batches(images, batch_size=128, seed=0)
    x = to_float(batches.next(), "cuda")            # (128, 1, 32, 32) float32 in [-1, 1]
    images, labels = load_dataset("fashion-mnist", 32, labels=True)   # labels (60000,) int64
    batches = Batches(images, 128, seed=0, labels=labels)
    x, y = batches.next_labelled()                  # the images and their labels
"""

from __future__ import annotations

import os

import torch

from fastgan.data.batches import Batches, to_float, to_uint8
from fastgan.data.fashion_mnist import (STACKED_MODES, load_fashion_mnist,
                                        load_stacked_fashion_mnist)
from fastgan.data.images import fit_to_size, load_image_folder, load_npz
from fastgan.errors import UserError

BUILTIN_DATASETS = ("fashion-mnist", "stacked-fashion-mnist")

# Other spellings accepted for the built-in datasets.
_ALIASES = {"fashion-mnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "stacked-fashion-mnist": "stacked-fashion-mnist",
            "stacked-fmnist": "stacked-fashion-mnist"}

_EXPECTED = ("expected fashion-mnist, stacked-fashion-mnist, a folder of PNG/JPEG images or "
             "an .npz file")


def check_image_size(image_size: int) -> None:
    """UserError naming --image-size unless it is a power of two >= 16 (the DCGAN models
    halve it down to 4)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) \
            or image_size < 16 or image_size & (image_size - 1):
        raise UserError(f"--image-size: got {image_size}, expected a power of two >= 16 (16, 32, 64, ...)")


def builtin_name(spec: str) -> str | None:
    """The built-in dataset a --data value names ("fmnist" -> "fashion-mnist"), or None."""
    return _ALIASES.get(spec.lower())


def load_dataset(spec: str, image_size: int, split: str = "train", labels: bool = False):
    """The images named by `--data` spec, uint8 (N, C, image_size, image_size), C 1 or 3;
    with `labels=True`, the pair (images, labels), labels int64 (N,) class indices from 0
    (`--conditional`; data without labels is a UserError).

    spec: "fashion-mnist" (or "fmnist"; labels: its 10 classes), "stacked-fashion-mnist"
    (3 channels, each an independent Fashion-MNIST image; labels: the 1000 class triples,
    fashion_mnist.load_stacked_fashion_mnist), a folder of PNG/JPEG
    images (labels: one sub-folder per class, sorted by name), or an .npz file with an
    `images` array (labels: its `labels` array). split ("train" or "test") applies to the
    built-in dataset only. image_size: a power of two >= 16 (check_image_size).
    """
    check_image_size(image_size)
    name = builtin_name(spec)
    if name:
        load = load_fashion_mnist if name == "fashion-mnist" else load_stacked_fashion_mnist
        images, classes = load(split)
        images = fit_to_size(images, image_size)
        return (images, classes) if labels else images
    if os.path.isdir(spec):
        return load_image_folder(spec, image_size, labels)
    if spec.lower().endswith(".npz"):
        return load_npz(spec, image_size, labels)
    if os.path.exists(spec):
        raise UserError(f"--data: {spec} is neither a folder nor an .npz file; {_EXPECTED}")
    raise UserError(f"--data: {spec!r} is not a built-in dataset nor an existing folder; {_EXPECTED}")


__all__ = ["BUILTIN_DATASETS", "STACKED_MODES", "Batches", "fit_to_size", "load_dataset",
           "load_fashion_mnist", "load_stacked_fashion_mnist",
           "load_image_folder", "load_npz", "to_float", "to_uint8", "check_image_size",
           "builtin_name"]
