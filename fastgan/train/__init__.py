"""fastgan's GAN engine: `fastgan train` (README.md, "Train a GAN").

    from fastgan.train import TrainConfig, train
    train(TrainConfig(steps=500, out="runs/demo"))     # Fashion-MNIST 32x32, DCGAN, ns loss

loop.py holds the step and the run loop, report.py grids, metrics.jsonl, plots and
progress, distributed.py the torchrun process group. What a run is (its settings,
checkpoints and generator) lives below, in fastgan.runs, which `fastgan sample` and
`fastgan eval` read too; fastgan.train may use fastgan.metrics (--eval-every), never the
other way round.
"""

from __future__ import annotations

import os
import time

from fastgan.errors import UserError
from fastgan.runs.config import TrainConfig


def new_run_dir(out: str) -> str:
    """`out`, or runs/run-<time> when empty; UserError if it would mix with existing files."""
    out = out or os.path.join("runs", time.strftime("run-%Y%m%d-%H%M%S"))
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UserError(f"--out {out}: exists and is not a directory")
        if os.path.exists(os.path.join(out, "config.json")):
            raise UserError(f"--out {out}: already holds a run; continue it with "
                            f"`fastgan train --resume {out}` or choose another --out")
        if os.listdir(out):
            raise UserError(f"--out {out}: exists and is not empty; choose a new or empty "
                            "directory (nothing in it is overwritten)")
    return out


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False) -> int:
    """Train (or, with `resume`, continue) the run `cfg` describes; returns the exit status
    (0 done, 128 + signal when stopped by SIGINT/SIGTERM after saving a checkpoint)."""
    from fastgan.data import load_dataset
    from fastgan.train.distributed import Dist
    from fastgan.train.loop import Run

    cfg.check()
    dist = Dist.from_env(cfg.device)  # several processes under torchrun, else one
    if not resume:
        out = cfg.out
        cfg.out = dist.from_main(lambda: new_run_dir(out))
    if cfg.conditional:
        images, labels = load_dataset(cfg.data, cfg.image_size, labels=True)
    else:
        images, labels = load_dataset(cfg.data, cfg.image_size), None
    # checks a resumed run before any output
    run = Run(cfg, images, resume=resume, quiet=quiet, dist=dist, labels=labels)
    if not quiet and dist.is_main:
        procs = (f" ({dist.world_size} processes, {run.trainer.local_batch} each)"
                 if dist.enabled else "")
        print(f"run {cfg.out}: {cfg.data} ({images.shape[0]} images, {images.shape[1]}x"
              f"{images.shape[2]}x{images.shape[3]}), arch {cfg.arch}"
              + (f" conditional on {run.trainer.num_classes} classes" if cfg.conditional else "")
              + f", loss {cfg.loss}, "
              f"impl {cfg.impl}, device {cfg.device}, amp {cfg.amp}, batch {cfg.batch_size}{procs}, "
              f"steps {cfg.steps}", flush=True)
    status = run.run()
    dist.close()
    return status


__all__ = ["TrainConfig", "train", "new_run_dir"]
