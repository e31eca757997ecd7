"""Training throughput of `fastgan train`: --impl fastgan vs eager vs compile.

Two measurements on the default run (built-in Fashion-MNIST, 32x32 DCGAN, ns loss,
Adam, EMA; batch 64 unless --batch-size):

- **Cold start, each impl in a fresh process** with empty torch.compile / Triton caches:
  seconds from the start of the trainer's construction to the end of its first step
  ("time to first step": torch.compile's cold compile lands here), and the img/s of the
  first `--steps` steps including that warm-up.
- **Steady state, paired**: the three trainers side by side in one process, warmed up,
  then `--rounds` interleaved rounds of `--window` steps each; img/s medians and the
  median of per-round ratios (> 1: fastgan faster), as fastgan.bench.common does for every row.

    python -m fastgan.bench.bench_train                 # both, ~4 minutes on a 2-core CPU
    python -m fastgan.bench.bench_train --skip-cold --rounds 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from fastgan.bench.common import median, paired_ratio, paired_timings
from fastgan.runs.config import IMPLS, TrainConfig

# `fastgan train --impl`'s choices, the baselines first: the order of the rows
IMPL_ORDER = tuple(sorted(IMPLS, key=lambda impl: impl == "fastgan"))


def _config(impl: str, batch_size: int, image_size: int, device: str):
    return TrainConfig(impl=impl, batch_size=batch_size, image_size=image_size, device=device,
                       out="").check()


def _worker(args: argparse.Namespace) -> None:
    """One impl, fresh process: time to first step and img/s over the first steps."""
    from fastgan.data import load_dataset
    from fastgan.train.loop import Trainer

    cfg = _config(args.worker, args.batch_size, args.image_size, args.device)
    images = load_dataset(cfg.data, cfg.image_size)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, images)
    step_s = []
    for _ in range(args.steps):
        t1 = time.perf_counter()
        trainer.train_step()
        if cfg.device == "cuda":
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - t1)
    total = time.perf_counter() - t0
    print(json.dumps({"impl": args.worker, "first_step_s": step_s[0] + (total - sum(step_s)),
                      "img_per_s_with_warmup": args.steps * cfg.batch_size / total,
                      "steps": args.steps}))


def cold_start(impl: str, steps: int = 1, batch_size: int = 64, image_size: int = 32,
               device: str = "cpu") -> dict:
    """Run `_worker` for `impl` in a fresh process with empty compile caches."""
    with tempfile.TemporaryDirectory(prefix="fastgan-cold-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
               "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
        cmd = [sys.executable, "-m", "fastgan.bench.bench_train", "--worker", impl, "--steps",
               str(steps), "--batch-size", str(batch_size), "--image-size", str(image_size),
               "--device", device]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def steady_state(batch_size: int, image_size: int, device: str, rounds: int, window: int,
                 warmup: int = 3) -> dict[str, dict]:
    from fastgan.data import load_dataset
    from fastgan.train.loop import Trainer

    images = load_dataset("fashion-mnist", image_size)
    trainers = {impl: Trainer(_config(impl, batch_size, image_size, device), images)
                for impl in IMPL_ORDER}

    def steps(t):
        return lambda: [t.train_step() for _ in range(window)]

    samples = paired_timings({k: steps(t) for k, t in trainers.items()}, rounds=rounds,
                             warmup=warmup, device=device)
    out = {}
    for impl, xs in samples.items():
        out[impl] = {"img_per_s": window * batch_size / median(xs),
                     "vs_eager": paired_ratio(samples, "eager", impl),
                     "vs_compile": paired_ratio(samples, "compile", impl)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgan.bench.bench_train",
                                description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20, help="steps of each cold-start run")
    p.add_argument("--rounds", type=int, default=10, help="paired steady-state rounds")
    p.add_argument("--window", type=int, default=5, help="steps per impl per round")
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--skip-steady", action="store_true")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    print(f"bench_train: device {args.device}, batch {args.batch_size}, {args.image_size}x"
          f"{args.image_size} Fashion-MNIST DCGAN, ns loss, EMA; {torch.get_num_threads()} threads")
    res: dict = {"config": vars(args)}
    if not args.skip_cold:
        res["cold"] = {}
        print(f"cold start (fresh process, empty compile caches, first {args.steps} steps):")
        for impl in IMPL_ORDER:
            r = cold_start(impl, args.steps, args.batch_size, args.image_size, args.device)
            res["cold"][impl] = r
            print(f"  {impl:<8} time to first step {r['first_step_s']:7.2f} s   "
                  f"{r['img_per_s_with_warmup']:7.1f} img/s over {args.steps} steps with warm-up",
                  flush=True)
    if not args.skip_steady:
        print(f"steady state ({args.rounds} paired rounds of {args.window} steps):")
        res["steady"] = steady_state(args.batch_size, args.image_size, args.device, args.rounds,
                                     args.window)
        for impl, r in res["steady"].items():
            print(f"  {impl:<8} {r['img_per_s']:7.1f} img/s   vs eager {r['vs_eager']:.2f}x   "
                  f"vs compile {r['vs_compile']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
