"""Measure the mode metric (`fastgan eval --metrics modes`, fastgan/metrics/modes.py) on data
whose modes are known, both ways: real held-out stacked data (all 1000 modes) must score close
to 1000, data drawn from few modes close to their number.

    python scripts/check_mode_metric.py [--seeds 10] [--json FILE]

Every set is built from Fashion-MNIST's test split (which the classifier never saw) and goes
through the same path as `fastgan eval`: uint8 images at 32x32, fastgan-fmnist-stacked
classification, modes.mode_metrics. Prints a Markdown table (README "Mode collapse,
measured" holds its output).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's fastgan

from fastgan.data import fit_to_size, load_dataset, load_fashion_mnist  # noqa: E402
from fastgan.data.fashion_mnist import stacked_of_modes  # noqa: E402
from fastgan.metrics.evaluate import compute_metrics, uint8_batches  # noqa: E402
from fastgan.metrics.features import FmnistFeatures  # noqa: E402
from fastgan.metrics.modes import CONFIDENCE  # noqa: E402


def score(images: torch.Tensor) -> dict:
    return compute_metrics(uint8_batches(fit_to_size(images, 32)), None, None, ("modes",))


def classifier_line() -> str:
    """The classifier's accuracy on the test split, and how often a channel passes the
    confidence threshold and is then wrong."""
    images, classes = load_fashion_mnist("test")
    probs = FmnistFeatures(torch.device("cpu")).classify(fit_to_size(images, 32))[1][:, 0]
    conf, pred = probs.max(1)
    kept = conf >= CONFIDENCE
    wrong = (pred != classes)
    return (f"classifier on the 10,000 test images: accuracy {1 - wrong.double().mean():.4f}; "
            f"{kept.double().mean():.3f} of them classified with probability >= {CONFIDENCE}, "
            f"of which {(wrong & kept).sum() / kept.sum():.4f} wrong")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10,
                    help="random draws of the 10-mode sets (3 of the others)")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(classifier_line(), flush=True)
    rows = []

    def row(name: str, true_modes: int, results: list[dict]) -> None:
        m = [r["modes"] for r in results]
        kl = [r["modes_kl"] for r in results]
        cnt = [r["modes_counted"] for r in results]
        rows.append({"data": name, "true_modes": true_modes, "draws": len(results),
                     "modes_min": min(m), "modes_median": statistics.median(m),
                     "modes_max": max(m), "modes_kl_median": statistics.median(kl),
                     "true_kl": math.log(1000 / true_modes),
                     "counted_median": statistics.median(cnt)})
        r = rows[-1]
        print(f"| {name} | {true_modes} | {r['modes_median']:g} ({r['modes_min']}-{r['modes_max']})"
              f" | {r['modes_kl_median']:.3f} (true {r['true_kl']:.3f}) | "
              f"{r['counted_median']:.2f} |", flush=True)

    print("| data (10,000 images unless said) | true modes | modes found: median (min-max) "
          "| modes_kl median | share counted |")
    print("|---|---|---|---|---|")
    real = load_dataset("stacked-fashion-mnist", 32, "test")
    row("stacked test split (held out)", 1000, [score(real)])
    row("stacked test split, first 5,000", 1000, [score(real[:5000])])
    for k, per in ((1, 10000), (10, 1000), (100, 100)):
        res = []
        for s in range(args.seeds if k == 10 else 3):
            gen = torch.Generator().manual_seed(s)
            modes = torch.randperm(1000, generator=gen)[:k].tolist()
            res.append(score(stacked_of_modes(modes, per, "test", seed=s)[0]))
        row(f"{k} random mode(s)", k, res)
    diag = [111 * c for c in range(10)]
    row("the 10 modes (c, c, c)", 10, [score(stacked_of_modes(diag, 1000, "test", seed=s)[0])
                                       for s in range(3)])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
