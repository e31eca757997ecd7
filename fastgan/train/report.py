"""What a run shows: sample grids (PNG), metrics.jsonl, loss plots (PNG) and progress.

Progress is a tqdm bar when stderr is a terminal and one plain line per logging interval
otherwise (CI logs, `nohup`, pipes), so logs stay readable either way.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from typing import Any

import torch
from torch import Tensor

from fastgan.data.batches import to_uint8
from fastgan.runs.checkpoint import write_atomic


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """(N, C, H, W) images in [-1, 1] -> one (H', W', C) uint8 grid, `nrow` images a row
    (default: a square-ish grid), separated by `padding` black pixels."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    img = to_uint8(images).cpu()
    grid = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding,
                       dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, y:y + h, x:x + w] = img[i]
    return grid.permute(1, 2, 0).contiguous()


def save_grid(images: Tensor, path: str, nrow: int | None = None) -> None:
    """Write a PNG grid of (N, C, H, W) images in [-1, 1] to `path`, atomically."""
    from PIL import Image

    grid = image_grid(images, nrow).numpy()
    pic = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)

    def write(f):
        buf = io.BytesIO()
        pic.save(buf, format="PNG")
        f.write(buf.getvalue())

    write_atomic(path, write)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, appended and flushed line by line.

    On resume, lines past the checkpoint's step (written after the last checkpoint by a
    run that was then killed) are dropped, so the file reads as one continuous run."""

    def __init__(self, path: str, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and os.path.exists(path):
            keep = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
            write_atomic(path, lambda f: f.write("".join(json.dumps(r) + "\n"
                                                         for r in keep).encode()))

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str) -> list[dict[str, Any]]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line torn by a kill mid-write: skip it
                    continue
    return out


def eval_line(step: int, rec: dict, features: str) -> str:
    """The progress line of one --eval-every evaluation."""
    line = (f"step {step}: FID ({features}) {rec['fid']:.3f}  KID x1e3 {rec['kid'] * 1e3:.3f}  "
            f"IS {rec['is']:.3f}")
    if "modes" in rec:
        line += f"  modes {rec['modes']}/1000  KL {rec['modes_kl']:.3f}"
    if "class_accuracy" in rec:
        line += f"  class accuracy {rec['class_accuracy']:.3f}"
    return line


def plot_metrics(metrics_path: str, out_path: str) -> bool:
    """losses.png: D and G losses, D(x) / D(G(z)) and, when the run evaluates, FID and KID
    against the step, then modes and their KL (stacked data) and class accuracy (conditional
    runs) when measured. False when matplotlib is missing or there is nothing to plot."""
    records = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
    if not records:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = [r["step"] for r in records]
    evals = [r for r in records if "fid" in r]
    modes = [r for r in evals if "modes" in r]
    accs = [r for r in evals if "class_accuracy" in r]
    rows = 2 + bool(evals) + bool(modes) + bool(accs)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 2.9 * rows), sharex=True)
    ax1, ax2 = axes[0], axes[1]
    for key, label in (("d_loss", "D loss"), ("g_loss", "G loss")):
        ax1.plot(steps, [r[key] for r in records], label=label)
    if any(r.get("penalty") for r in records):
        ax1.plot(steps, [r.get("penalty", 0.0) for r in records], label="penalty")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key, label in (("d_real", "D(x)"), ("d_fake", "D(G(z))")):
        ax2.plot(steps, [r[key] for r in records], label=label)
    ax2.set_ylabel("mean sigmoid(D)")
    ax2.legend()
    ax2.grid(alpha=0.3)
    row = 2
    if evals:
        ax3 = axes[row]
        row += 1
        ax3.plot([r["step"] for r in evals], [r["fid"] for r in evals], "o-", label="FID")
        ax3.set_ylabel("FID (fastgan-fmnist)")
        ax3.set_yscale("log")
        ax3.grid(alpha=0.3, which="both")
        if any("kid" in r for r in evals):
            k = ax3.twinx()
            k.plot([r["step"] for r in evals], [r["kid"] * 1e3 for r in evals], "s--",
                   color="tab:red", label="KID x 1e3")
            k.set_ylabel("KID x 1e3")  # linear: the unbiased estimate can be < 0
            h1, l1 = ax3.get_legend_handles_labels()
            h2, l2 = k.get_legend_handles_labels()
            ax3.legend(h1 + h2, l1 + l2)
    if modes:
        ax4 = axes[row]
        row += 1
        ax4.plot([r["step"] for r in modes], [r["modes"] for r in modes], "o-", label="modes")
        ax4.set_ylabel("modes covered (of 1000)")
        ax4.grid(alpha=0.3)
        k = ax4.twinx()
        k.plot([r["step"] for r in modes], [r["modes_kl"] for r in modes], "s--",
               color="tab:red", label="KL to uniform")
        k.set_ylabel("KL to uniform (nats)")
        h1, l1 = ax4.get_legend_handles_labels()
        h2, l2 = k.get_legend_handles_labels()
        ax4.legend(h1 + h2, l1 + l2)
    if accs:
        ax5 = axes[row]
        ax5.plot([r["step"] for r in accs], [r["class_accuracy"] for r in accs], "o-")
        ax5.set_ylabel("class accuracy")
        ax5.set_ylim(0, 1)
        ax5.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(out_path, lambda f: f.write(buf.getvalue()))
    return True


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A tqdm bar on a terminal, plain log lines elsewhere; `quiet` silences both."""

    def __init__(self, start: int, end: int, quiet: bool = False) -> None:
        self.start, self.end, self.quiet = start, end, quiet
        self.t0 = time.perf_counter()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=end, initial=start, unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, record: dict[str, Any]) -> None:
        fields = (f"d_loss {record['d_loss']:.4f}  g_loss {record['g_loss']:.4f}  "
                  f"D(x) {record['d_real']:.3f}  D(G(z)) {record['d_fake']:.3f}  "
                  f"{record['img_per_s']:.0f} img/s")
        if self.bar is not None:
            self.bar.set_postfix_str(fields.replace("  ", " "), refresh=True)
        elif not self.quiet:
            done = record["step"] - self.start
            left = self.end - record["step"]
            elapsed = time.perf_counter() - self.t0
            eta = _duration(elapsed / done * left) if done > 0 else "?"
            print(f"step {record['step']}/{self.end}  {fields}  eta {eta}", flush=True)

    def write(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["eval_line", "image_grid", "save_grid", "MetricsLog", "read_metrics", "plot_metrics", "Progress"]
