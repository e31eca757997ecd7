"""Evaluate every kept checkpoint of some runs and plot the metrics over training time: the
study of README "Mode collapse, measured" (DCGAN vs ResNet vs R3GAN on stacked-fashion-mnist
at one CPU time budget; conditional vs unconditional on Fashion-MNIST).

    python scripts/mode_study.py RUN_DIR... [--rates R...] [--metrics fid,modes] [--n 10000]
                                 --out curves.png [--grids grids.png] [--json FILE]

Each run's checkpoints/step_*.pt go through `fastgan eval`'s code (the EMA generator, n
samples from seed 0, fastgan-fmnist features against the run's training data; accuracy for
conditional runs only); the x axis is the step, or with `--rates` (one per run, images/s
measured on a quiet machine) the training minutes: images trained on / rate, so runs that
shared the CPU with other work are placed where they would be alone. `--grids` puts the
last sample grid of each run side by side.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's fastgan

from fastgan.commands.eval import parse_metrics  # noqa: E402
from fastgan.metrics.evaluate import generator_metrics, reference_stats  # noqa: E402
from fastgan.metrics.features import get_extractor  # noqa: E402
from fastgan.runs.generator import load_generator  # noqa: E402

LABELS = {"fid": "FID (fastgan-fmnist features)", "modes": "modes covered (of 1000)",
          "modes_kl": "KL of the mode histogram to uniform", "class_accuracy": "class accuracy"}


def run_name(cfg) -> str:
    name = cfg.arch + (" conditional" if cfg.conditional else "")
    return name + (f" (width {cfg.ngf})" if cfg.ngf != 64 else "")


def evaluate_run(run: str, rate: float | None, metrics: tuple[str, ...], n: int) -> dict:
    ckpts = sorted(glob.glob(os.path.join(run, "checkpoints", "step_*.pt")))
    if not ckpts:
        raise SystemExit(f"{run}: no checkpoints/step_*.pt (train with --ckpt-every)")
    points, cfg = [], None
    for path in ckpts:
        G, cfg, _ = load_generator(path, device="cpu")
        extractor = get_extractor("fastgan-fmnist", data=cfg.data)
        ref = reference_stats(cfg.data, "train", cfg.image_size, extractor)
        step = int(re.search(r"step_(\d+)", path).group(1))
        wanted = tuple(m for m in metrics if m != "accuracy" or cfg.conditional)
        res = generator_metrics(G, cfg.nz, n, ref, extractor, wanted, seed=0)
        res.update(step=step, x=step * cfg.batch_size * cfg.n_critic / rate / 60 if rate else step)
        print(f"{run} step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items()
                                                 if k in LABELS), flush=True)
        points.append(res)
    grids = sorted(glob.glob(os.path.join(run, "samples", "step_*.png")))
    return {"run": run, "name": run_name(cfg), "rate_img_s": rate, "points": points,
            "last_grid": grids[-1] if grids else None}


def plot(results: list[dict], keys: list[str], out: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6))
    for ax, key in zip(list(getattr(axes, "flat", [axes])), keys):
        for r in results:
            pts = [p for p in r["points"] if key in p]
            if pts:
                line, = ax.plot([p["x"] for p in pts], [p[key] for p in pts], "o-",
                                label=r["name"])
                if key == "modes":  # what a uniform generator would show, same counted images
                    ax.plot([p["x"] for p in pts], [p["modes_uniform"] for p in pts], ":",
                            color=line.get_color())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(LABELS[key] + (" (dotted: if uniform)" if key == "modes" else ""))
        if key == "fid":
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def grids(results: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = [r for r in results if r["last_grid"]]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4.5))
    for ax, r in zip(list(getattr(axes, "flat", [axes])), shown):
        ax.imshow(Image.open(r["last_grid"]).convert("RGB"))
        last = r["points"][-1]
        extra = f", {last['modes']} modes" if "modes" in last else ""
        ax.set_title(f"{r['name']}: step {last['step']}{extra}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--rates", type=float, nargs="+",
                    help="each run's training rate, images/s on a quiet machine (x: minutes)")
    ap.add_argument("--metrics", default="fid,modes")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--out", required=True, help="the curves' PNG")
    ap.add_argument("--grids", help="the last sample grids' PNG")
    ap.add_argument("--json", help="also write every point to this file; runs already in it "
                                   "(same directory, same points) are not evaluated again")
    args = ap.parse_args()
    rates = args.rates or [None] * len(args.runs)
    if len(rates) != len(args.runs):
        ap.error(f"--rates: one per run ({len(args.runs)}), got {len(rates)}")
    torch.set_grad_enabled(False)
    metrics = parse_metrics(args.metrics)
    done = {}
    if args.json and os.path.isfile(args.json):
        with open(args.json) as f:
            done = {r["run"]: r for r in json.load(f)}
    results = []
    for run, rate in zip(args.runs, rates):
        steps = len(glob.glob(os.path.join(run, "checkpoints", "step_*.pt")))
        old = done.get(run)
        if old and len(old["points"]) == steps and old["rate_img_s"] == rate:
            results.append(old)
        else:
            results.append(evaluate_run(run, rate, metrics, args.n))
    keys = [k for k in ("modes", "modes_kl", "fid", "class_accuracy")
            if any(k in p for r in results for p in r["points"])]
    plot(results, keys, args.out, "training minutes (at each model's quiet-machine rate)"
         if args.rates else "step")
    if args.grids:
        grids(results, args.grids)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
