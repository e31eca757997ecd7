"""`fastgan eval (CKPT | --images DIR|FILE.npz)`: FID / KID / IS of a run's generator or of a
set of images against a dataset, offline (fastgan.metrics.evaluate computes them); prints a
table and writes JSON when asked.
"""

from __future__ import annotations

import json

from fastgan.data import load_dataset
from fastgan.errors import UserError
from fastgan.metrics.evaluate import (METRICS, compute_metrics, generated_batches,
                                      reference_stats, uint8_batches)
from fastgan.metrics.features import get_extractor
from fastgan.runs.checkpoint import write_atomic
from fastgan.runs.config import default_device
from fastgan.runs.generator import load_generator


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
        G, cfg, used_ema = load_generator(ckpt, ema=not no_ema, device=device)
        data = data or cfg.data
        size = cfg.image_size
        count = n
        source = f"{n} samples of the {'EMA ' if used_ema else ''}generator in {ckpt}"
        batches = generated_batches(G, cfg.nz, n, seed)
    else:
        data = data or "fashion-mnist"
        size = image_size or 32
        imgs = load_dataset(images, size)[:n]
        count = imgs.shape[0]
        source = f"{count} images of {images}"
        batches = uint8_batches(imgs)
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


__all__ = ["eval_command", "parse_metrics", "format_table"]
