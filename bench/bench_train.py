"""Training throughput of `fastgan train`: --impl fastgan vs eager vs compile.

Two measurements on a `fastgan train` run (built-in Fashion-MNIST at 32x32, Adam, EMA;
batch 64 unless --batch-size). By default the default run (DCGAN, ns loss); `--arch
resnet|r3gan` and `--conditional` measure the other architectures with their presets
(fastgan.runs.config.ARCH_PRESETS: resnet hinge + spectral norm, r3gan rpgan + R1 + R2),
as `fastgan train --arch ...` would run them:

- **Cold start, each impl in a fresh process** with empty torch.compile / Triton caches:
  seconds from the start of the trainer's construction to the end of its first step
  ("time to first step": torch.compile's cold compile lands here), and the img/s of the
  first `--steps` steps including that warm-up.
- **Steady state, paired**: the three trainers side by side in one process, warmed up,
  then `--rounds` interleaved rounds of `--window` steps each; img/s medians and the
  median of per-round ratios (> 1: fastgan faster), as fastgan.bench.common does for every row.

    python -m fastgan.bench.bench_train                 # both, ~4 minutes on a 2-core CPU
    python -m fastgan.bench.bench_train --skip-cold --rounds 10
    python -m fastgan.bench.bench_train --arch r3gan --conditional --batch-size 32

With R1/R2 (r3gan's preset) or spectral norm (resnet's) --impl compile compiles G, the
loss and D's forward in the G step, and the D step runs D uncompiled (aot_autograd has no
double backward; two compiled spectral-norm calls before one backward fail in torch 2.14;
see fastgan.train.loop.Trainer._d_step): its compile column is "as compiled as the trainer
gets torch.compile to run", not a failure (compiled_parts says it in the banner).
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

from fastgan.bench.common import (first_calls, median, paired_ratio, paired_timings,
                                  saved_tensor_bytes)
from fastgan.runs.config import ARCHS, IMPLS, TrainConfig, new_config

# `fastgan train --impl`'s choices, the baselines first: the order of the rows
IMPL_ORDER = tuple(sorted(IMPLS, key=lambda impl: impl == "fastgan"))


def train_config(impl: str, batch_size: int, image_size: int, device: str,
                 arch: str = "dcgan", conditional: bool = False, loss: str | None = None,
                 width: int | None = None) -> TrainConfig:
    """The config `fastgan train --arch ARCH [--conditional] --impl IMPL` would make:
    TrainConfig's defaults, the architecture's preset, then these settings (`width`:
    --ngf and --ndf; `loss` overrides the preset's loss)."""
    given = {"arch": arch, "conditional": conditional, "impl": impl, "batch_size": batch_size,
             "image_size": image_size, "device": device, "out": ""}
    if width is not None:
        given["ngf"] = given["ndf"] = width
    if loss is not None:
        given["loss"] = loss
    return new_config(given).check()


def compiled_parts(cfg: TrainConfig) -> str:
    """What --impl compile compiles of cfg's step (fastgan.train.loop.Trainer._d_step)."""
    if cfg.r1 or cfg.r2 or cfg.gp or cfg.spectral_norm:
        why = "; ".join(
            ["R1/R2/GP need a double backward, which aot_autograd lacks"] * bool(
                cfg.r1 or cfg.r2 or cfg.gp)
            + ["two compiled spectral-norm calls before one backward fail in torch 2.14"]
            * cfg.spectral_norm)
        return (f"compile: G, the loss and D in the G step compiled; the D step runs D "
                f"uncompiled ({why})")
    return "compile: G, D and the loss compiled"


def describe(cfg: TrainConfig) -> str:
    """The run in words, for banners and row names: arch, conditioning, loss, penalties."""
    extras = [f"R1 {cfg.r1:g}"] * bool(cfg.r1) + [f"R2 {cfg.r2:g}"] * bool(cfg.r2)
    extras += ["spectral norm"] * cfg.spectral_norm
    return (f"{cfg.arch}{' conditional' if cfg.conditional else ''}, {cfg.loss} loss"
            + "".join(f", {e}" for e in extras))


def load_data(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The run's images, and their labels for a conditional run (else None)."""
    from fastgan.data import load_dataset

    if cfg.conditional:
        return load_dataset(cfg.data, cfg.image_size, labels=True)
    return load_dataset(cfg.data, cfg.image_size), None


def make_trainer(cfg: TrainConfig, data: tuple[torch.Tensor, torch.Tensor | None] | None = None):
    """A Trainer of cfg on `data` (default: load_data(cfg))."""
    from fastgan.train.loop import Trainer

    images, labels = data if data is not None else load_data(cfg)
    return Trainer(cfg, images, labels=labels)


def forward_saved_bytes(trainer) -> dict[str, int]:
    """Bytes autograd saves for backward in one training-mode forward of the trainer's G
    (a batch of noise) and of its D (a real batch), weights excluded, each on the ops its
    impl trains with. Runs the modules themselves, not a torch.compile wrapper (whose
    saved tensors these hooks do not see). The forwards update BatchNorm statistics and
    spectral norm's power iteration as a training step would."""
    from fastgan.data import to_float

    cfg, dev = trainer.cfg, trainer.device
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 7)
    z = torch.randn(trainer.local_batch, cfg.nz, 1, 1, generator=gen, device=dev)
    if trainer.num_classes:
        real, y = trainer.batches.next_labelled()
        y_fake = torch.randint(trainer.num_classes, (trainer.local_batch,), generator=gen,
                               device=dev)
    else:
        real, y, y_fake = trainer.batches.next(), None, None
    real = to_float(real, dev)

    def run(net, x, labels):
        return net(x) if labels is None else net(x, labels)

    out = {}
    with trainer._ops():  # eager/compile: fastgan's own ops as the plain-PyTorch reference
        for name, net, x, labels in (("G", trainer.G, z, y_fake), ("D", trainer.D, real, y)):
            out[name] = saved_tensor_bytes(lambda: run(net, x, labels),
                                           exclude=tuple(net.parameters()))
    return out


def _worker(args: argparse.Namespace) -> None:
    """One impl, fresh process: time to first step and img/s over the first steps."""
    cfg = train_config(args.worker, args.batch_size, args.image_size, args.device, args.arch,
                       args.conditional, args.loss, args.width)
    data = load_data(cfg)
    t0 = time.perf_counter()
    trainer = make_trainer(cfg, data)
    step_s = []
    for _ in range(args.steps):
        t1 = time.perf_counter()
        trainer.train_step()
        if cfg.device == "cuda":
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - t1)
    total = time.perf_counter() - t0
    print(json.dumps({"impl": args.worker, "arch": cfg.arch, "conditional": cfg.conditional,
                      "loss": cfg.loss, "first_step_s": step_s[0] + (total - sum(step_s)),
                      "img_per_s_with_warmup": args.steps * cfg.batch_size / total,
                      "steps": args.steps}))


def cold_start(impl: str, steps: int = 1, batch_size: int = 64, image_size: int = 32,
               device: str = "cpu", arch: str = "dcgan", conditional: bool = False,
               loss: str | None = None, width: int | None = None) -> dict:
    """Run `_worker` for `impl` in a fresh process with empty compile caches (the run of
    train_config(impl, ..., arch, conditional, loss, width))."""
    with tempfile.TemporaryDirectory(prefix="fastgan-cold-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
               "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
        cmd = [sys.executable, "-m", "fastgan.bench.bench_train", "--worker", impl, "--steps",
               str(steps), "--batch-size", str(batch_size), "--image-size", str(image_size),
               "--device", device, "--arch", arch]
        cmd += ["--conditional"] * conditional
        cmd += ["--loss", loss] if loss is not None else []
        cmd += ["--width", str(width)] if width is not None else []
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} worker ({arch}) failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def steady_state(batch_size: int, image_size: int, device: str, rounds: int, window: int,
                 warmup: int = 3, arch: str = "dcgan", conditional: bool = False,
                 loss: str | None = None, width: int | None = None) -> dict[str, dict]:
    """The three impls' trainers side by side, paired rounds of `window` steps each:
    img/s, the ratios against eager and compile, and forward_saved_bytes per impl. An impl
    whose first step raises (e.g. a torch.compile error) gets {"failed": why} and the
    others go on."""
    cfgs = {impl: train_config(impl, batch_size, image_size, device, arch, conditional, loss,
                               width) for impl in IMPL_ORDER}
    data = load_data(cfgs["fastgan"])
    trainers = {impl: make_trainer(c, data) for impl, c in cfgs.items()}
    ok, failed = first_calls({k: t.train_step for k, t in trainers.items()})

    def steps(step):
        return lambda: [step() for _ in range(window)]

    samples = paired_timings({k: steps(fn) for k, fn in ok.items()}, rounds=rounds,
                             warmup=warmup, device=device)
    out: dict[str, dict] = {impl: {"failed": why} for impl, why in failed.items()}
    for impl, xs in samples.items():
        out[impl] = {"img_per_s": window * batch_size / median(xs)}
        for base in ("eager", "compile"):
            if base in samples:
                out[impl][f"vs_{base}"] = paired_ratio(samples, base, impl)
        if impl != "compile":  # the same modules as eager's (see forward_saved_bytes)
            out[impl]["saved_bytes"] = forward_saved_bytes(trainers[impl])
    return {impl: out[impl] for impl in IMPL_ORDER}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgan.bench.bench_train",
                                description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", choices=ARCHS, default="dcgan",
                   help="architecture, with its preset as `fastgan train --arch` applies it")
    p.add_argument("--conditional", action="store_true", help="class-conditional G and D")
    p.add_argument("--loss", default=None,
                   help="override the architecture's preset loss (default: the preset's)")
    p.add_argument("--width", type=int, default=None, help="--ngf and --ndf (default 64)")
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
    cfg = train_config("fastgan", args.batch_size, args.image_size, args.device, args.arch,
                       args.conditional, args.loss, args.width)
    print(f"bench_train: device {args.device}, batch {args.batch_size}, {args.image_size}x"
          f"{args.image_size} Fashion-MNIST {describe(cfg)}, EMA, width {cfg.ngf}; "
          f"{torch.get_num_threads()} threads\n  ({compiled_parts(cfg)})")
    res: dict = {"config": {**vars(args), "loss": cfg.loss}}
    spec = (args.arch, args.conditional, args.loss, args.width)
    if not args.skip_cold:
        res["cold"] = {}
        print(f"cold start (fresh process, empty compile caches, first {args.steps} steps):")
        for impl in IMPL_ORDER:
            try:
                r = cold_start(impl, args.steps, args.batch_size, args.image_size, args.device,
                               *spec)
            except RuntimeError as e:  # reported, and the other impls go on
                why = str(e).strip().splitlines()[-1][:200]
                res["cold"][impl] = {"impl": impl, "failed": why}
                print(f"  {impl:<8} failed: {why}", flush=True)
                continue
            res["cold"][impl] = r
            print(f"  {impl:<8} time to first step {r['first_step_s']:7.2f} s   "
                  f"{r['img_per_s_with_warmup']:7.1f} img/s over {args.steps} steps with warm-up",
                  flush=True)
    if not args.skip_steady:
        print(f"steady state ({args.rounds} paired rounds of {args.window} steps):")
        res["steady"] = steady_state(args.batch_size, args.image_size, args.device, args.rounds,
                                     args.window, 3, *spec)
        for impl, r in res["steady"].items():
            if "failed" in r:
                print(f"  {impl:<8} failed: {r['failed']}")
                continue
            ratios = "".join(f"   vs {b} {r['vs_' + b]:.2f}x" for b in ("eager", "compile")
                             if "vs_" + b in r)
            saved = r.get("saved_bytes")
            saved = (f"   saved for backward G {saved['G'] / 2**20:.1f} MB, "
                     f"D {saved['D'] / 2**20:.1f} MB" if saved else "")
            print(f"  {impl:<8} {r['img_per_s']:7.1f} img/s{ratios}{saved}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
