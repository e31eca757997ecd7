"""FID / KID / IS of a generator or of a set of images against a dataset, and `fastgan eval`.

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
import json
import os
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from fastgan.data.batches import to_uint8
from fastgan.errors import UserError
from fastgan.metrics.distances import FeatureStats, frechet_distance, inception_score, kid
from fastgan.metrics.features import Extractor, get_extractor
from fastgan.train.checkpoint import write_atomic

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


def _uint8_batches(images: Tensor) -> Iterator[Tensor]:
    for i in range(0, images.shape[0], BATCH):
        yield images[i:i + BATCH]


def _generated_batches(G: torch.nn.Module, nz: int, n: int, seed: int) -> Iterator[Tensor]:
    """n samples of G as uint8 images (PNG quantisation), from noise seeded by `seed`."""
    from fastgan.train.sample import generate_batches

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
    stats, feats, _ = _extract(extractor, _uint8_batches(images), probs=False)
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
    return compute_metrics(_generated_batches(G, nz, n, seed), ref, extractor, metrics, progress)


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics: expected a comma-separated subset of {','.join(METRICS)}, "
                        f"got {text!r}")
    return names


def format_table(res: dict[str, float], features: str) -> str:
    lines = [f"{'metric':<28}{'value':>14}"]
    if "fid" in res:
        lines.append(f"{f'FID ({features})':<28}{res['fid']:>14.4f}")
    if "kid" in res:
        lines.append(f"{f'KID ({features}) x 1e3':<28}{res['kid'] * 1e3:>14.4f} "
                     f"± {res['kid_std'] * 1e3:.4f}")
    if "is" in res:
        lines.append(f"{f'IS ({features})':<28}{res['is']:>14.4f} ± {res['is_std']:.4f}")
    return "\n".join(lines)


def eval_command(ckpt: str | None, images: str | None, data: str | None, n: int,
                 metrics: str, features: str, weights: str | None, json_path: str | None,
                 split: str = "train", image_size: int | None = None, no_ema: bool = False,
                 seed: int = 0) -> int:
    """`fastgan eval`: prints a table; writes JSON when asked."""
    from fastgan.data import load_dataset
    from fastgan.train.config import default_device

    if (ckpt is None) == (images is None):
        raise UserError("fastgan eval: give either a checkpoint (CKPT) or --images DIR|FILE.npz")
    if n < 2:
        raise UserError(f"--n: expected at least 2 samples, got {n}")
    names = parse_metrics(metrics)
    device = default_device()
    extractor = get_extractor(features, weights, device)
    if "is" in names and not extractor.has_probs:
        raise UserError("--metrics is: the pytorch-fid Inception has no classifier; use the "
                        "TorchScript inception-2015-12-05.pt or leave IS out")
    if ckpt is not None:
        from fastgan.train.sample import load_generator

        G, cfg, used_ema = load_generator(ckpt, ema=not no_ema, device=device)
        data = data or cfg.data
        size = cfg.image_size
        count = n
        source = f"{n} samples of the {'EMA ' if used_ema else ''}generator in {ckpt}"
        batches = _generated_batches(G, cfg.nz, n, seed)
    else:
        data = data or "fashion-mnist"
        size = image_size or 32
        imgs = load_dataset(images, size)[:n]
        count = imgs.shape[0]
        source = f"{count} images of {images}"
        batches = _uint8_batches(imgs)
    ref = reference_stats(data, split, size, extractor)
    print(f"fastgan eval: {source} vs {data} ({split}, {int(ref['n'])} images), "
          f"{size}x{size}, {extractor.name} features", flush=True)
    res = compute_metrics(batches, ref, extractor, names)
    print(format_table(res, extractor.name))
    if extractor.name != "Inception":
        print(f"({extractor.name}: fastgan's Fashion-MNIST classifier; comparable between "
              "fastgan runs, not with published Inception numbers)")
    if json_path:
        out = {**res, "features": extractor.name, "feature_key": extractor.key,
               "source": source, "reference": {"data": data, "split": split,
                                               "n": int(ref["n"])},
               "image_size": size, "n": count}
        write_atomic(json_path, lambda f: f.write((json.dumps(out, indent=2) + "\n").encode()))
        print(f"wrote {json_path}")
    return 0


__all__ = ["reference_stats", "compute_metrics", "generator_metrics", "eval_command",
           "parse_metrics", "format_table", "cache_dir", "METRICS"]
