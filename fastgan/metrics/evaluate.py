"""FID / KID / IS of a generator or of a set of images against a dataset, and its mode
coverage and class accuracy by fastgan's classifier (modes.py) (`fastgan eval` and
`fastgan train --eval-every` run them; the command is fastgan/commands/eval.py).

Generated images are quantised to uint8 exactly as a saved PNG would be, then go through
the same feature network and the same code as the real images (clean-fid's point: what is
measured is what a user would save). Reference statistics of a dataset (mean and
covariance of its features, plus up to 10,000 of its features for KID) are computed once
per (dataset, split, feature network and its weights, image size) and cached in
$FASTGAN_CACHE (default ~/.cache/fastgan)/stats/ as .npz, written atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from fastgan.data.batches import to_uint8
from fastgan.errors import UserError
from fastgan.metrics.distances import FeatureStats, frechet_distance, inception_score, kid
from fastgan.metrics.features import Extractor, FmnistFeatures, joint_probs
from fastgan.metrics.modes import class_accuracy, mode_metrics
from fastgan.runs.checkpoint import write_atomic
from fastgan.runs.generator import generate_batches, sample_labels

METRICS = ("fid", "kid", "is", "modes", "accuracy")
FEATURE_METRICS = ("fid", "kid", "is")  # need the feature network; the default
REFERENCE_METRICS = ("fid", "kid")    # the ones compared with a dataset's statistics
CLASSIFIER_METRICS = ("modes", "accuracy")
KID_KEEP = 10_000   # reference features kept for KID
BATCH = 250


def cache_dir() -> str:
    root = os.environ.get("FASTGAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastgan")
    return os.path.join(root, "stats")


def _data_key(data: str) -> str:
    """A file-name-safe identity of a dataset: the built-in name, or the path's base name
    plus a hash of its absolute path and its files' sizes and times (a changed folder
    gets new statistics)."""
    from fastgan.data import builtin_name

    if builtin_name(data):
        return builtin_name(data)
    path = os.path.abspath(data)
    h = hashlib.sha1(path.encode())
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                h.update(f"{os.path.relpath(os.path.join(root, f), path)}:{st.st_size}:"
                         f"{st.st_mtime_ns}".encode())
    elif os.path.exists(path):
        st = os.stat(path)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(path))
    return f"{base}-{h.hexdigest()[:10]}"


def uint8_batches(images: Tensor) -> Iterator[Tensor]:
    """uint8 images (a loaded dataset) in batches of BATCH."""
    for i in range(0, images.shape[0], BATCH):
        yield images[i:i + BATCH]


def generated_batches(G: torch.nn.Module, nz: int, n: int, seed: int,
                      labels: Tensor | None = None) -> Iterator[Tensor]:
    """n samples of G as uint8 images (PNG quantisation), from noise seeded by `seed`; a
    conditional G draws the classes `labels` (default: every class equally often)."""
    return (to_uint8(x) for x in generate_batches(G, nz, n, seed, labels))


def _extract(extractor: Extractor | None, batches: Iterator[Tensor], features: bool,
             probs: bool, classes: bool, device: torch.device | str = "cpu",
             progress: Callable[[int], None] | None = None):
    """One pass over the batches: the feature statistics and features (when `features`),
    the class probabilities for IS (`probs`) and each channel's class probabilities from
    fastgan's classifier (`classes`; a 3-channel image's channels are classified one by one,
    as stacked-fashion-mnist's). The classifier's forward pass is shared with the feature
    network when that is the same network."""
    stats = FeatureStats(extractor.dim) if features else None
    feats, ps, cps = [], [], []
    classifier = None
    for b in batches:
        if classes and classifier is None:
            stacked = b.shape[1] == 3
            same = isinstance(extractor, FmnistFeatures) and extractor.stacked == stacked
            classifier = extractor if same else FmnistFeatures(torch.device(device), stacked)
        f = p = cp = None
        if classifier is not None and classifier is extractor:
            f, cp = extractor.classify(b)
            p = joint_probs(cp) if probs else None
        elif features or probs:
            f, p = extractor(b, probs)
        if classes and cp is None:
            cp = classifier.classify(b)[1]
        if features:
            stats.update(f)
            feats.append(f.float())
        if p is not None:
            ps.append(p)
        if cp is not None:
            cps.append(cp)
        if progress:
            progress(b.shape[0])
    return (stats, torch.cat(feats).numpy() if feats else None,
            torch.cat(ps).numpy() if ps else None, torch.cat(cps) if cps else None)


def reference_stats(data: str, split: str, image_size: int, extractor: Extractor,
                    quiet: bool = False) -> dict:
    """{"mu", "sigma", "n", "kid_features"} of a dataset, from the cache or computed now."""
    from fastgan.data import builtin_name, load_dataset

    key = _data_key(data)
    split_key = split if builtin_name(data) else "all"  # splits exist for the built-in only
    path = os.path.join(cache_dir(), f"{key}-{split_key}-{extractor.key}-{image_size}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path) as z:
                return {k: z[k] for k in ("mu", "sigma", "n", "kid_features")}
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
            pass
    images = load_dataset(data, image_size, split=split)
    if not quiet:
        print(f"computing reference statistics of {data} ({split}, {images.shape[0]} images, "
              f"{extractor.name} features); cached in {path}", flush=True)
    stats, feats, _, _ = _extract(extractor, uint8_batches(images), features=True, probs=False,
                                  classes=False)
    mu, sigma = stats.mean_cov()
    keep = np.random.default_rng(0).permutation(feats.shape[0])[:KID_KEEP]
    ref = {"mu": mu, "sigma": sigma, "n": np.int64(stats.n), "kid_features": feats[np.sort(keep)]}

    def write(f):
        buf = io.BytesIO()
        np.savez(buf, **ref)
        f.write(buf.getvalue())

    write_atomic(path, write)
    return ref


def compute_metrics(batches: Iterator[Tensor], ref: dict | None, extractor: Extractor | None,
                    metrics: tuple[str, ...] = FEATURE_METRICS,
                    progress: Callable[[int], None] | None = None,
                    labels: Tensor | None = None,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """The requested metrics of a stream of uint8 image batches: fid and kid against the
    reference statistics `ref`, fid / kid / is with `extractor`'s features; modes
    (stacked 3-channel images) and accuracy (against `labels`, one per image) by fastgan's
    classifier on `device` (modes.py)."""
    want_is = "is" in metrics
    features = any(m in REFERENCE_METRICS for m in metrics)
    classes = any(m in CLASSIFIER_METRICS for m in metrics)
    stats, feats, probs, channel_probs = _extract(extractor, batches, features, want_is, classes,
                                                  device, progress)
    out: dict[str, float] = {}
    if "fid" in metrics:
        mu, sigma = stats.mean_cov()
        out["fid"] = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(feats, ref["kid_features"])
    if want_is:
        out["is"], out["is_std"] = inception_score(probs, splits=min(10, probs.shape[0]))
    if "modes" in metrics:
        if channel_probs.shape[1] != 3:
            raise UserError(f"--metrics modes: needs stacked-fashion-mnist's 3-channel images, "
                            f"got {channel_probs.shape[1]} channel(s)")
        out.update(mode_metrics(channel_probs))
    if "accuracy" in metrics:
        out["class_accuracy"] = class_accuracy(channel_probs, labels[:channel_probs.shape[0]])
    return out


def generator_metrics(G: torch.nn.Module, nz: int, n: int, ref: dict | None,
                      extractor: Extractor | None, metrics: tuple[str, ...] = FEATURE_METRICS,
                      seed: int = 0, progress: Callable[[int], None] | None = None,
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """compute_metrics of n samples of G; a conditional G draws every class equally often,
    and those classes are the labels of `accuracy`."""
    labels = sample_labels(G, n)
    return compute_metrics(generated_batches(G, nz, n, seed, labels), ref, extractor, metrics,
                           progress, labels, device)


__all__ = ["reference_stats", "compute_metrics", "generator_metrics", "uint8_batches",
           "generated_batches", "cache_dir", "METRICS", "FEATURE_METRICS", "REFERENCE_METRICS",
           "CLASSIFIER_METRICS"]
