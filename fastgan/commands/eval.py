"""`fastgan eval (CKPT | --images DIR|FILE.npz)`: FID / KID / IS of a run's generator or of a
set of images against a dataset, its mode coverage (stacked-fashion-mnist) and class accuracy
(a conditional run, or images with labels), offline (fastgan.metrics.evaluate computes them);
prints a table and writes JSON when asked.
"""

from __future__ import annotations

import json

from fastgan.data import load_dataset
from fastgan.errors import UserError
from fastgan.metrics.evaluate import (FEATURE_METRICS, METRICS, REFERENCE_METRICS,
                                      compute_metrics, generated_batches, reference_stats,
                                      uint8_batches)
from fastgan.metrics.features import get_extractor
from fastgan.runs.checkpoint import write_atomic
from fastgan.runs.config import default_device
from fastgan.runs.generator import load_generator, sample_labels


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics: expected a comma-separated subset of {','.join(METRICS)}, "
                        f"got {text!r}")
    return names


def format_table(res: dict[str, float], features: str) -> str:
    lines = [f"{'metric':<32}{'value':>14}"]
    if "fid" in res:
        lines.append(f"{f'FID ({features})':<32}{res['fid']:>14.4f}")
    if "kid" in res:
        lines.append(f"{f'KID ({features}) x 1e3':<32}{res['kid'] * 1e3:>14.4f} "
                     f"± {res['kid_std'] * 1e3:.4f}")
    if "is" in res:
        lines.append(f"{f'IS ({features})':<32}{res['is']:>14.4f} ± {res['is_std']:.4f}")
    if "modes" in res:
        lines.append(f"{'modes covered (of 1000)':<32}{res['modes']:>14d}")
        lines.append(f"{'modes KL to uniform (nats)':<32}{res['modes_kl']:>14.4f}")
        lines.append(f"{'images counted for modes':<32}{res['modes_counted']:>14.4f}")
        lines.append(f"{'modes if uniform, same count':<32}{res['modes_uniform']:>14.1f}")
    if "class_accuracy" in res:
        lines.append(f"{'class accuracy':<32}{res['class_accuracy']:>14.4f}")
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
    labels = None
    if ckpt is not None:
        G, cfg, used_ema = load_generator(ckpt, ema=not no_ema, device=device)
        data = data or cfg.data
        size = cfg.image_size
        count = n
        source = f"{n} samples of the {'EMA ' if used_ema else ''}generator in {ckpt}"
        labels = sample_labels(G, n)
        if "accuracy" in names and labels is None:
            raise UserError(f"--metrics accuracy: the run in {ckpt} is not class-conditional "
                            "(trained without --conditional)")
        batches = generated_batches(G, cfg.nz, n, seed, labels)
    else:
        data = data or "fashion-mnist"
        size = image_size or 32
        if "accuracy" in names:
            if not images.lower().endswith(".npz"):
                raise UserError(f"--metrics accuracy: --images {images} needs labels: give an "
                                ".npz with `images` and `labels` arrays")
            imgs, labels = load_dataset(images, size, labels=True)
            imgs, labels = imgs[:n], labels[:n]
        else:
            imgs = load_dataset(images, size)[:n]
        count = imgs.shape[0]
        source = f"{count} images of {images}"
        batches = uint8_batches(imgs)
    extractor = ref = None
    if any(m in FEATURE_METRICS for m in names):
        extractor = get_extractor(features, weights, device, data)
        if "is" in names and not extractor.has_probs:
            raise UserError("--metrics is: the pytorch-fid Inception has no classifier; use the "
                            "TorchScript inception-2015-12-05.pt or leave IS out")
    if any(m in REFERENCE_METRICS for m in names):
        ref = reference_stats(data, split, size, extractor)
        print(f"fastgan eval: {source} vs {data} ({split}, {int(ref['n'])} images), "
              f"{size}x{size}, {extractor.name} features", flush=True)
    else:
        print(f"fastgan eval: {source}, {size}x{size}", flush=True)
    res = compute_metrics(batches, ref, extractor, names, labels=labels, device=device)
    name = extractor.name if extractor else "fastgan-fmnist"
    print(format_table(res, name))
    if name != "Inception":
        print(f"({name}: fastgan's Fashion-MNIST classifier; comparable between "
              "fastgan runs, not with published Inception numbers)")
    if json_path:
        out = {**res, "source": source, "image_size": size, "n": count}
        if extractor:
            out.update(features=extractor.name, feature_key=extractor.key)
        if ref:
            out["reference"] = {"data": data, "split": split, "n": int(ref["n"])}
        write_atomic(json_path, lambda f: f.write((json.dumps(out, indent=2) + "\n").encode()))
        print(f"wrote {json_path}")
    return 0


__all__ = ["eval_command", "parse_metrics", "format_table"]
