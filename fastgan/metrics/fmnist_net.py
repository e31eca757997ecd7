"""The feature network of fastgan's offline metrics, "FID (fastgan-fmnist)".

A small CNN classifier trained on Fashion-MNIST's training split (scripts/train_feature_net.py)
and shipped with the package (weights/fmnist_net.pt, checked against weights/fmnist_net.json),
so that FID, KID and IS need no download: its 128-d penultimate features (after global average
pooling) feed FID/KID, its softmax feeds IS.

    net = load_fmnist_net("cuda")
    features, logits = net.features_and_logits(prepare(images).to("cuda"))

Scores computed with it are comparable with each other, not with Inception-based FID.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

NAME = "fastgan-fmnist"
FEATURE_DIM = 128
NUM_CLASSES = 10
INPUT_SIZE = 32

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
WEIGHTS_FILE = os.path.join(WEIGHTS_DIR, "fmnist_net.pt")

# ITU-R BT.601 luma weights (R, G, B): how an RGB image becomes the net's one channel.
LUMA_601 = (0.299, 0.587, 0.114)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    # No conv bias: the BatchNorm that follows subtracts any constant per channel.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class FmnistNet(nn.Module):
    """Fashion-MNIST classifier: (N, 1, 32, 32) float in [-1, 1] -> (N, 10) logits.

    Four conv3x3-BN-ReLU stages (32, 64, 128, 128 channels), a 2x2 max pool after each of
    the first three (32 -> 16 -> 8 -> 4), global average pooling to FEATURE_DIM = 128
    features and one Linear layer to the 10 class logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(1, 32), nn.MaxPool2d(2),
            _conv_bn_relu(32, 64), nn.MaxPool2d(2),
            _conv_bn_relu(64, 128), nn.MaxPool2d(2),
            _conv_bn_relu(128, FEATURE_DIM),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        # Channels-last weights and inputs: oneDNN's CPU convolutions run about twice as fast
        # in that layout, and only when both are in it (cuDNN takes either).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._features(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled features (N, FEATURE_DIM) and the logits (N, 10) of one forward pass."""
        f = self._features(x)
        return f.float(), self.classifier(f)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.contiguous(memory_format=torch.channels_last))


def prepare(images: torch.Tensor) -> torch.Tensor:
    """A batch of images (N, C, S, S) as the net's input: float32 (N, 1, 32, 32) in [-1, 1].

    images: uint8 in [0, 255], or floating point in [-1, 1] (a generator's output range,
    as fastgan.data.to_float makes it); C 1 (grayscale) or 3 (RGB, reduced to ITU-R 601 luma
    0.299 R + 0.587 G + 0.114 B of the [0, 1] values); any square size S, resized to 32x32
    (bilinear, antialiased) when it differs. The result stays on the input's device.

    uint8 images map exactly as fastgan.data.to_float maps the training data (x / 127.5 - 1),
    so the same images given as uint8 or as to_float's output give the same tensor.
    28x28 Fashion-MNIST images should be padded to 32 first (fastgan.data.fit_to_size), as
    the net was trained on them; resizing them instead changes their scale.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
        raise ValueError(f"prepare: expected square images (N, 1 or 3, S, S), got shape "
                         f"{tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float().div_(127.5).sub_(1.0)
    elif images.is_floating_point():
        x = images.float()
    else:
        raise TypeError(f"prepare: expected uint8 in [0, 255] or float in [-1, 1], got {images.dtype}")
    if x.shape[1] == 3:
        r, g, b = (x[:, i:i + 1].add(1.0).mul_(0.5) for i in range(3))
        x = (LUMA_601[0] * r + LUMA_601[1] * g + LUMA_601[2] * b).mul_(2.0).sub_(1.0)
    if x.shape[-1] != INPUT_SIZE:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                          align_corners=False)
    # A generator without a final tanh can overshoot [-1, 1]; the net never saw such values.
    # Not in place: x is still the caller's tensor when float32 32x32 grayscale came in.
    return x.clamp(-1.0, 1.0)


def sha256_file(path: str) -> str:
    """The hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_fmnist_net(device: torch.device | str = "cpu", path: str | None = None) -> FmnistNet:
    """The trained FmnistNet in eval mode on device.

    path: the weights file (a state_dict); the shipped weights/fmnist_net.pt by default. Its
    SHA-256 must equal the "sha256" of the .json beside it (same name), so that scores are
    never silently computed with other weights; RuntimeError naming the file otherwise.
    """
    path = path or WEIGHTS_FILE
    meta_path = os.path.splitext(path)[0] + ".json"
    try:
        with open(meta_path) as f:
            want = json.load(f)["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"{meta_path}: cannot read the feature network's expected SHA-256 "
                           f"({type(e).__name__}: {e}); reinstall fastgan or rerun "
                           "scripts/train_feature_net.py") from None
    try:
        got = sha256_file(path)
    except OSError as e:
        raise RuntimeError(f"{path}: cannot read the feature network's weights ({e}); reinstall "
                           "fastgan or rerun scripts/train_feature_net.py") from None
    if got != want:
        raise RuntimeError(f"{path}: the feature network's weights have SHA-256 {got}, but "
                           f"{os.path.basename(meta_path)} expects {want}; the file is corrupt or "
                           "not the one trained with it (reinstall fastgan or rerun "
                           "scripts/train_feature_net.py)")
    net = FmnistNet()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval().to(device)


__all__ = ["FEATURE_DIM", "FmnistNet", "NAME", "load_fmnist_net", "prepare", "sha256_file"]
