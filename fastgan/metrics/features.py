"""Feature networks for FID/KID (features) and IS (class probabilities), all offline.

- `fastgan-fmnist` (default): fastgan's own classifier trained on Fashion-MNIST
  (fmnist_net.py; weights ship with the package). Its numbers are "FID (fastgan-fmnist)",
  comparable between fastgan runs, never with published Inception FIDs. Against
  stacked-fashion-mnist it classifies each channel: "FID (fastgan-fmnist-stacked)".
- `inception`, from a file the user already has (`--weights PATH`; nothing is downloaded):
  - the TorchScript `inception-2015-12-05.pt` of StyleGAN2-ADA / StyleGAN3 / clean-fid:
    it takes uint8 [0, 255] RGB images at any size and resizes them to 299x299 itself
    as the TensorFlow original does; `return_features=True` gives the 2048-d pool3
    features, `no_output_bias=True` the class probabilities StyleGAN's IS uses;
  - pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (needs `pip install pytorch-fid`):
    its FID InceptionV3 takes [0, 1] RGB, resizes bilinearly to 299 and maps to [-1, 1];
    it gives pool3 features only, so IS needs the TorchScript file.
Every extractor takes uint8 (N, C, H, W) images, C = 1 (repeated to RGB for Inception) or 3,
and returns float64 features and, when asked, float64 probabilities.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from fastgan.errors import UserError
from fastgan.metrics.fmnist_net import FEATURE_DIM, load_fmnist_net, prepare, sha256_file

FEATURE_NETS = ("fastgan-fmnist", "inception")
INCEPTION_HELP = ("the TorchScript inception-2015-12-05.pt that StyleGAN2-ADA, StyleGAN3 and "
                  "clean-fid use, or pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                  "(the files those projects download on first use); fastgan downloads nothing")


class Extractor:
    """Callable: uint8 images -> (features (N, dim) float64, probabilities or None)."""

    name: str       # how the numbers are labelled: "FID (<name>)"
    key: str        # identifies the network and its weights in cache file names
    dim: int
    has_probs: bool

    def __call__(self, images: Tensor, probs: bool = False) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


class FmnistFeatures(Extractor):
    """fastgan's classifier. stacked=False: one image -> its 128 features and 10 class
    probabilities (an RGB image as its luma). stacked=True (stacked-fashion-mnist): each of
    the 3 channels classified on its own -> the three channels' features concatenated
    (384; the channels of real data are independent, so their cross-covariance, which FID
    also compares, is ~0) and the 1000 mode probabilities (the product of the channels')."""

    has_probs = True

    def __init__(self, device: torch.device, stacked: bool = False) -> None:
        self.net = load_fmnist_net(device)
        self.device = device
        self.stacked = stacked
        self.name = self.key = "fastgan-fmnist-stacked" if stacked else "fastgan-fmnist"
        self.dim = FEATURE_DIM * (3 if stacked else 1)

    @torch.no_grad()
    def classify(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Features (N, dim) float64 and each channel's class probabilities (N, C, 10)
        float64 (C = 3 when stacked, else 1), on the CPU."""
        n, c = images.shape[:2]
        if self.stacked and c != 3:
            raise UserError(f"stacked-fashion-mnist features need 3-channel images, got {c}")
        x = images.to(self.device)
        if self.stacked:
            x = x.reshape(n * 3, 1, *x.shape[2:])
        feats, logits = self.net.features_and_logits(prepare(x))
        probs = torch.softmax(logits.double(), 1).cpu().view(n, -1, logits.shape[1])
        return feats.double().cpu().reshape(n, -1), probs

    def __call__(self, images: Tensor, probs: bool = False) -> tuple[Tensor, Tensor | None]:
        feats, channel_probs = self.classify(images)
        return feats, (joint_probs(channel_probs) if probs else None)


def joint_probs(channel_probs: Tensor) -> Tensor:
    """(N, C, K) per-channel probabilities -> (N, K^C), the product over the channels, the
    first channel's class the most significant digit (as stacked-fashion-mnist labels)."""
    p = channel_probs[:, 0]
    for i in range(1, channel_probs.shape[1]):
        p = (p[:, :, None] * channel_probs[:, i, None, :]).flatten(1)
    return p


def _rgb(images: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise UserError(f"inception features need 1- or 3-channel images, got {images.shape[1]}")
    return images


class TorchScriptInception(Extractor):
    name = "Inception"
    dim = 2048
    has_probs = True

    def __init__(self, path: str, digest: str, device: torch.device) -> None:
        with warnings.catch_warnings():  # the file is TorchScript; torch calls that deprecated
            warnings.simplefilter("ignore", FutureWarning)
            self.model = torch.jit.load(path, map_location=device).eval()
        self.key = f"inception-ts-{digest[:12]}"
        self.device = device

    @torch.no_grad()
    def __call__(self, images: Tensor, probs: bool = False) -> tuple[Tensor, Tensor | None]:
        x = _rgb(images.to(self.device))
        feats = self.model(x, return_features=True).double().cpu()
        p = self.model(x, no_output_bias=True).double().cpu() if probs else None
        return feats, p


class PytorchFidInception(Extractor):
    name = "Inception"
    dim = 2048
    has_probs = False

    def __init__(self, path: str, digest: str, device: torch.device) -> None:
        try:
            import pytorch_fid.inception as pfi
        except ImportError as e:
            raise UserError(f"--weights {path}: a pytorch-fid weights file needs the pytorch-fid "
                            f"package (pip install pytorch-fid), which failed to import ({e}); "
                            "or pass the TorchScript inception-2015-12-05.pt") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        download = pfi.load_state_dict_from_url
        pfi.load_state_dict_from_url = lambda *a, **k: state  # the local file, never the URL
        try:
            model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                                    resize_input=True, normalize_input=True,
                                    use_fid_inception=True)
        finally:
            pfi.load_state_dict_from_url = download
        self.model = model.to(device).eval()
        self.key = f"inception-pfid-{digest[:12]}"
        self.device = device

    @torch.no_grad()
    def __call__(self, images: Tensor, probs: bool = False) -> tuple[Tensor, Tensor | None]:
        if probs:
            raise UserError("IS with --features inception needs the TorchScript "
                            "inception-2015-12-05.pt: pytorch-fid's network has no classifier")
        x = _rgb(images.to(self.device)).float() / 255
        return self.model(x)[0].flatten(1).double().cpu(), None


def get_extractor(name: str = "fastgan-fmnist", weights: str | None = None,
                  device: torch.device | str = "cpu", data: str | None = None) -> Extractor:
    """The feature network `name` ("fastgan-fmnist", or "inception" with `weights`) for
    images compared with the dataset `data`: fastgan-fmnist classifies stacked-fashion-mnist's
    channels one by one."""
    from fastgan.data import builtin_name

    device = torch.device(device)
    if name in ("fastgan-fmnist", "fmnist"):
        if weights:
            raise UserError("--weights: only for --features inception (fastgan-fmnist's "
                            "weights ship with fastgan)")
        return FmnistFeatures(device, stacked=builtin_name(data or "") == "stacked-fashion-mnist")
    if name != "inception":
        raise UserError(f"--features: expected one of {', '.join(FEATURE_NETS)}, got {name!r}")
    if not weights:
        raise UserError(f"--features inception needs --weights PATH: {INCEPTION_HELP}")
    if not os.path.isfile(weights):
        raise UserError(f"--weights {weights}: no such file (expected {INCEPTION_HELP})")
    digest = sha256_file(weights)
    try:
        return TorchScriptInception(weights, digest, device)
    except RuntimeError:  # not TorchScript: try pytorch-fid's state dict
        pass
    try:
        return PytorchFidInception(weights, digest, device)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure means the file is not one we know
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"--weights {weights}: neither a TorchScript Inception nor pytorch-fid's "
                        f"weights ({first}); expected {INCEPTION_HELP}") from None


__all__ = ["Extractor", "get_extractor", "FEATURE_NETS", "FmnistFeatures", "joint_probs",
           "TorchScriptInception", "PytorchFidInception"]
