"""`fastgan bench` rows: one `fastgan train` step of every architecture, per impl.

For each architecture (dcgan, resnet, r3gan; `fastgan bench --archs`), optionally also
class-conditional (`--conditional-archs`), one row times `Trainer.train_step` of the run
`fastgan train --arch ARCH --impl IMPL` makes at 32x32 on the built-in Fashion-MNIST, with
the architecture's preset (fastgan.runs.config.ARCH_PRESETS: resnet hinge + spectral norm,
r3gan rpgan + R1 + R2), Adam and EMA:

  eager          --impl eager: the plain models, the loss as plain torch expressions, and
                 the ops fastgan's models call themselves (bias_act, upfirdn2d, conditional
                 BatchNorm) on their plain-PyTorch reference
  torch.compile  --impl compile: the same, under torch.compile (G, D, the loss). With R1
                 or R2 (aot_autograd has no double backward) or spectral norm (two
                 compiled SN calls before one backward fail in torch 2.14) the D step runs
                 D uncompiled; G's forward and backward, D in the G step and the loss are
                 compiled, which is what the trainer can run compiled of that step
                 (bench_train.compiled_parts, in each row's note)
  fastgan[b]     --impl fastgan on backend b (converted models, fused loss)

Each call is one whole step (n_critic D updates, the G update, EMA). The rows' saved
column is what autograd keeps for backward in one training-mode forward of G (a noise
batch) plus one of D (a real batch), weights excluded (bench_train.forward_saved_bytes;
results.json has the G / D split). Batch 32 and --ngf = --ndf = 64 (fastgan train's
default widths); --quick: 16x16, batch 4, width 8. A step takes seconds on a CPU, so these rows
run at most MAX_ROUNDS rounds there.

These rows alone, with fastgan bench's flags and outputs (table, results.json, chart, and
the time to first step of dcgan and of each of --archs):
    python -m fastgan.bench.bench_archs [--archs resnet r3gan] [--conditional-archs]
The same steps with img/s, cold starts and more rounds: python -m fastgan.bench.bench_train
--arch ARCH [--conditional].
"""

from __future__ import annotations

from typing import Callable

import torch

import fastgan
from fastgan.bench.bench_train import (compiled_parts, describe, forward_saved_bytes,
                                       load_data, make_trainer, train_config)
from fastgan.bench.common import Config, Row

IMAGE_SIZE, BATCH, WIDTH = 32, 32, 64
# --quick (tests/test_bench.py): tiny, and at 16x16 one block fewer per network, which
# shortens torch.compile's cold compile (most of a quick row's time)
QUICK_IMAGE_SIZE, QUICK_BATCH, QUICK_WIDTH = 16, 4, 8
MAX_ROUNDS = 10  # on the CPU, where one step of resnet / r3gan takes ~0.5-2 s


def _column_impls(cfg: Config) -> dict[str, tuple[str, str | None]]:
    """Row column -> (fastgan train --impl, fastgan backend to run it on or None)."""
    cols: dict[str, tuple[str, str | None]] = {"eager": ("eager", None),
                                               "torch.compile": ("compile", None)}
    cols.update({f"fastgan[{b}]": ("fastgan", b) for b in cfg.fastgan_impls()})
    return cols


def arch_row(cfg: Config, arch: str, conditional: bool = False) -> Row:
    """The row of one `fastgan train` step of `arch` (see the module docstring)."""
    size, batch, width = ((QUICK_IMAGE_SIZE, QUICK_BATCH, QUICK_WIDTH) if cfg.quick
                          else (IMAGE_SIZE, BATCH, WIDTH))
    cols = _column_impls(cfg)
    tcfgs = {col: train_config(impl, batch, size, cfg.device, arch, conditional,
                               width=width) for col, (impl, _) in cols.items()}
    data = load_data(next(iter(tcfgs.values())))
    impls: dict[str, Callable[[], object]] = {}
    saved: dict[str, Callable[[], dict[str, int]]] = {}
    for col, (impl, backend) in cols.items():
        trainer = make_trainer(tcfgs[col], data)
        fresh = [impl == "compile"]

        def step(trainer=trainer, backend=backend, fresh=fresh):
            if fresh and fresh.pop():
                # compile as `fastgan train --impl compile` does in its own process: other
                # rows compiled the same model classes (forward code objects) at other
                # shapes, and dynamo would recompile them with dynamic shapes (automatic
                # dynamic) or hit its recompile limit; the rows before are done with theirs
                torch._dynamo.reset()
            if backend is None:  # eager / compile: the trainer picks the reference ops
                trainer.train_step()
            else:
                with fastgan.use_backend(backend):
                    trainer.train_step()

        def count(trainer=trainer, backend=backend):
            if backend is None:
                return forward_saved_bytes(trainer)
            with fastgan.use_backend(backend):
                return forward_saved_bytes(trainer)

        impls[col] = step
        if col != "torch.compile":  # the same modules as eager's; hooks miss compiled graphs
            saved[col] = count
    tcfg = next(iter(tcfgs.values()))
    # short enough for the table's 44 characters; the note has the rest
    name = (f"{arch}{' cond' if conditional else ''} train step ({tcfg.loss}) "
            f"{size}x{size} b{batch}")
    return Row(name, "train step", impls, saved=saved,
               note=f"{describe(tcfg)}, width {width}; {compiled_parts(tcfg)}; "
                    "saved MB: G forward + D forward",
               rounds=MAX_ROUNDS if cfg.device == "cpu" else None)


def rows(cfg: Config) -> list[Row]:
    """A row per architecture in cfg.archs (`fastgan bench --archs`), each followed by its
    class-conditional row with cfg.conditional_archs."""
    out = []
    for arch in cfg.archs:
        out.append(arch_row(cfg, arch))
        if cfg.conditional_archs:
            out.append(arch_row(cfg, arch, conditional=True))
    return out


def main(argv: list[str] | None = None) -> int:
    from fastgan.bench import suite  # (suite imports this module for its PROVIDERS)

    return suite.main(argv, providers=(rows,))


if __name__ == "__main__":
    raise SystemExit(main())
