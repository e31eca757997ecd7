"""Image data for `fastgan train --data`: a folder of PNG/JPEG files or an .npz array,
loaded once into one uint8 tensor (N, C, S, S), C 1 (grayscale) or 3 (RGB), S the image size.

Files are resized and center-cropped as pytorch/examples' dcgan does (Resize(S) then
CenterCrop(S)); in-memory arrays (.npz, Fashion-MNIST) go through `fit_to_size`.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fastgan.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# A progress bar is worth its noise only when loading takes a while.
PROGRESS_MIN_FILES = 2000

# Float32 elements (input + output) resized at once by fit_to_size: bounds its
# temporary memory to ~256 MB whatever the dataset size.
_CHUNK_ELEMENTS = 1 << 26


def fit_to_size(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) brought to (N, C, image_size, image_size).

    - already that size: returned as they are;
    - 28x28 to 32: a border of 2 zero pixels on each side, exact (Fashion-MNIST's
      background is 0, and the classic DCGAN needs a power-of-two size);
    - otherwise: the short side resized to image_size (bilinear, antialiased when
      shrinking) and the long side center-cropped, as Resize + CenterCrop do for files.
    """
    n, c, h, w = images.shape
    s = image_size
    if (h, w) == (s, s):
        return images
    if (h, w, s) == (28, 28, 32):
        return F.pad(images, (2, 2, 2, 2), value=0)
    # Short side to s; the long side keeps the aspect ratio (truncated, as torchvision's Resize).
    rh, rw = (s, w * s // h) if h <= w else (h * s // w, s)
    top, left = (rh - s) // 2, (rw - s) // 2
    out = torch.empty((n, c, s, s), dtype=torch.uint8)
    chunk = max(1, _CHUNK_ELEMENTS // (c * (h * w + rh * rw)))
    for i in range(0, n, chunk):
        x = F.interpolate(images[i:i + chunk].float(), size=(rh, rw), mode="bilinear",
                          antialias=True, align_corners=False)
        out[i:i + chunk] = x[:, :, top:top + s, left:left + s].round_().clamp_(0, 255)
    return out


def _image_files(path: str) -> list[str]:
    """Every PNG/JPEG under path, nested folders included, sorted for a fixed order."""
    files = []
    for dirpath, _, names in os.walk(path):
        files += [os.path.join(dirpath, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(files)


def _load_image(file: str, image_size: int) -> Image.Image:
    """One file as an "L" or "RGB" image of image_size x image_size."""
    s = image_size
    try:
        with Image.open(file) as img:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale (never below s): much faster for photos.
            img.draft(img.mode, (s, s))
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                # Pillow would clip these to 255 when converting to 8 bits, not scale them.
                raise UserError(f"--data: {file} is a 16/32-bit image (mode {img.mode}); "
                                "convert it to 8-bit grayscale or RGB")
            # Grayscale stays one channel; alpha, palette, CMYK, ... become RGB.
            img = img.convert("L" if img.mode in ("L", "1") else "RGB")
            w, h = img.size
            side = min(w, h)
            # Resizing the centered side x side box to s x s is Resize(s) + CenterCrop(s) in one
            # step; BICUBIC is antialiased when shrinking.
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            return img.resize((s, s), Image.Resampling.BICUBIC, box=box)
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"--data: cannot read image {file}: {e}") from None


def folder_labels(path: str, files: list[str]) -> torch.Tensor:
    """Class indices of `files` under the folder `path`: one class per sub-folder of `path`
    (an image's first folder below it; deeper folders belong to that class), numbered in
    sorted order of the sub-folder names (torchvision's ImageFolder rule)."""
    tops = [os.path.relpath(f, path).split(os.sep)[0] for f in files]
    loose = [f for f, t in zip(files, tops) if t == os.path.basename(f)]
    if loose:
        raise UserError(f"--data: {path} has images outside class sub-folders (e.g. {loose[0]}); "
                        "a labelled folder holds one sub-folder of images per class")
    index = {name: i for i, name in enumerate(sorted(set(tops)))}
    return torch.tensor([index[t] for t in tops], dtype=torch.long)


def load_image_folder(path: str, image_size: int, labels: bool = False):
    """Every PNG/JPEG under the folder `path` (nested, sorted), as uint8 (N, C, S, S);
    with `labels`, also their classes, int64 (N,) (folder_labels: one per sub-folder).

    Each image is resized so its short side is image_size, then center-cropped. All
    images must be grayscale (C = 1) or all color (C = 3).
    """
    if not os.path.isdir(path):
        raise UserError(f"--data: {path} is not a folder" if os.path.exists(path)
                        else f"--data: {path} does not exist")
    files = _image_files(path)
    if not files:
        raise UserError(f"--data: no PNG or JPEG images under {path}")
    classes = folder_labels(path, files) if labels else None  # before the slow part
    progress = files
    if len(files) > PROGRESS_MIN_FILES:
        from tqdm import tqdm  # only needed for large folders

        progress = tqdm(files, desc=f"loading {path}", unit="img")
    out = None
    first_of_mode: dict[str, str] = {}
    for i, file in enumerate(progress):
        img = _load_image(file, image_size)
        first_of_mode.setdefault(img.mode, file)
        if len(first_of_mode) > 1:
            raise UserError(f"--data: {path} mixes grayscale and color images (e.g. "
                            f"{first_of_mode['L']} is grayscale, {first_of_mode['RGB']} is RGB); "
                            "convert them all to RGB or all to grayscale")
        arr = np.asarray(img)
        if out is None:  # the first image fixes the channel count
            out = torch.empty((len(files), 1 if arr.ndim == 2 else 3, image_size, image_size),
                              dtype=torch.uint8)
            out_np = out.numpy()  # shares memory: fill the tensor without a second copy
        out_np[i] = arr if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return (out, classes) if labels else out


def _npz_labels(path: str, archive, n: int) -> torch.Tensor:
    if "labels" not in archive.files:
        raise UserError(f"--data: {path} has no `labels` array (found: "
                        f"{', '.join(archive.files)}); a labelled .npz holds `images` and "
                        "`labels`, integer class indices (N,)")
    try:
        labels = archive["labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"--data: cannot read `labels` from {path}: {e}") from None
    if labels.dtype.kind not in "iu" or labels.shape != (n,) or (n and labels.min() < 0):
        got = (f"dtype {labels.dtype}, shape {labels.shape}"
               + (f", min {labels.min()}" if labels.size and labels.dtype.kind in "iu" else ""))
        raise UserError(f"--data: {path}: `labels` has {got}; expected integer class indices "
                        f">= 0, one per image ({n},)")
    return torch.from_numpy(labels.astype(np.int64))


def load_npz(path: str, image_size: int, labels: bool = False):
    """The uint8 array `images` of an .npz file, (N, H, W) or (N, H, W, C) with C 1 or 3,
    as uint8 (N, C, S, S) (through fit_to_size when H, W are not S); with `labels`, also
    its `labels` array, int64 (N,)."""
    if not os.path.isfile(path):
        raise UserError(f"--data: {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"--data: {path} is not a readable .npz file: {e}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a plain .npy array under an .npz name
        raise UserError(f"--data: {path} is not an .npz archive (expected one with an `images` array)")
    with archive:
        if "images" not in archive.files:
            raise UserError(f"--data: {path} has no `images` array (found: "
                            f"{', '.join(archive.files) or 'nothing'})")
        try:
            images = archive["images"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"--data: cannot read `images` from {path}: {e}") from None
        classes = _npz_labels(path, archive, images.shape[0]) if labels else None
    expected = "expected uint8 (N, H, W) or (N, H, W, C) with C 1 or 3"
    if images.dtype != np.uint8:
        raise UserError(f"--data: {path}: `images` has dtype {images.dtype}; {expected}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise UserError(f"--data: {path}: `images` has shape {images.shape}; {expected}")
    if images.shape[0] == 0:
        raise UserError(f"--data: {path}: `images` holds no images (shape {images.shape})")
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    out = fit_to_size(nchw, image_size)
    return (out, classes) if labels else out


__all__ = ["fit_to_size", "folder_labels", "load_image_folder", "load_npz", "IMAGE_EXTENSIONS"]
