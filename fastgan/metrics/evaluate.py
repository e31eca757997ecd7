"""FID / KID / IS of a generator or of a set of images against a dataset (`fastgan eval`
and `fastgan train --eval-every` run them; the command is fastgan/commands/eval.py).

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
from fastgan.metrics.distances import FeatureStats, frechet_distance, inception_score, kid
from fastgan.metrics.features import Extractor
from fastgan.runs.checkpoint import write_atomic
from fastgan.runs.generator import generate_batches

METRICS = ("fid", "kid", "is")
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


def generated_batches(G: torch.nn.Module, nz: int, n: int, seed: int) -> Iterator[Tensor]:
    """n samples of G as uint8 images (PNG quantisation), from noise seeded by `seed`."""
    return (to_uint8(x) for x in generate_batches(G, nz, n, seed))


def _extract(extractor: Extractor, batches: Iterator[Tensor], probs: bool,
             progress: Callable[[int], None] | None = None):
    stats = FeatureStats(extractor.dim)
    feats, ps = [], []
    for b in batches:
        f, p = extractor(b, probs)
        stats.update(f)
        feats.append(f.float())
        if p is not None:
            ps.append(p)
        if progress:
            progress(b.shape[0])
    return stats, torch.cat(feats).numpy(), (torch.cat(ps).numpy() if ps else None)


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
    stats, feats, _ = _extract(extractor, uint8_batches(images), probs=False)
    mu, sigma = stats.mean_cov()
    keep = np.random.default_rng(0).permutation(feats.shape[0])[:KID_KEEP]
    ref = {"mu": mu, "sigma": sigma, "n": np.int64(stats.n), "kid_features": feats[np.sort(keep)]}

    def write(f):
        buf = io.BytesIO()
        np.savez(buf, **ref)
        f.write(buf.getvalue())

    write_atomic(path, write)
    return ref


def compute_metrics(batches: Iterator[Tensor], ref: dict, extractor: Extractor,
                    metrics: tuple[str, ...] = METRICS,
                    progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """The requested metrics of a stream of uint8 image batches against reference stats."""
    want_is = "is" in metrics
    stats, feats, probs = _extract(extractor, batches, want_is, progress)
    out: dict[str, float] = {}
    if "fid" in metrics:
        mu, sigma = stats.mean_cov()
        out["fid"] = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(feats, ref["kid_features"])
    if want_is:
        out["is"], out["is_std"] = inception_score(probs, splits=min(10, probs.shape[0]))
    return out


def generator_metrics(G: torch.nn.Module, nz: int, n: int, ref: dict, extractor: Extractor,
                      metrics: tuple[str, ...] = METRICS, seed: int = 0,
                      progress: Callable[[int], None] | None = None) -> dict[str, float]:
    return compute_metrics(generated_batches(G, nz, n, seed), ref, extractor, metrics, progress)


__all__ = ["reference_stats", "compute_metrics", "generator_metrics", "uint8_batches",
           "generated_batches", "cache_dir", "METRICS"]
