"""StyleGAN-family ops, forward + backward: eager, torch.compile of the same expression,
and fastgan's kernels.

  bias_act   lrelu(x + b) * sqrt(2) on (N, 256, 32, 32): eager is that expression
             (add, leaky_relu, mul: NVlabs' reference), fastgan one fused pass each way
  FIR        upsample2d then downsample2d with the [1, 3, 3, 1] filter on (N, 128, 32, 32):
             eager is the reference (zero-stuffed depthwise convolutions,
             fastgan/ops/upfirdn2d_reference.py), fastgan the polyphase kernels

each followed by a backward with a fixed upstream gradient. N is 32 (4 with --quick).

The R3GAN-style training step on these ops is bench/bench_archs.py's r3gan row.

Paired ratios, as `fastgan bench` reports them:
    python -m fastgan.bench.bench_stylegan [--rounds 30] [--batch 32] [--malloc default]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

import fastgan
from fastgan import functional as FG
from fastgan.ops import upfirdn2d_reference
from fastgan.bench.common import (Row, format_table, paired_timings, saved_tensor_bytes,
                                  tune_malloc)

SQRT2 = math.sqrt(2.0)


def eager_bias_lrelu(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x + b.reshape(1, -1, 1, 1), 0.2) * SQRT2


def fastgan_bias_lrelu(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return FG.bias_act(x, b, act="lrelu")


_FIR = FG.setup_filter([1, 3, 3, 1])


def fir_up_down(x: torch.Tensor) -> torch.Tensor:
    """2x FIR upsample, then 2x FIR downsample (on whichever backend is in use)."""
    f = _FIR.to(x.device)
    return FG.downsample2d(FG.upsample2d(x, f), f)


def reference_fir_up_down(x: torch.Tensor) -> torch.Tensor:
    """fir_up_down on the reference ops, called directly (no backend choice, which
    torch.compile would have to trace): upsample2d's and downsample2d's padding for a
    4-tap filter and factor 2."""
    f = _FIR.to(x.device)
    y = upfirdn2d_reference.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4)
    return upfirdn2d_reference.upfirdn2d(y, f, down=2, padding=[1, 1, 1, 1])


def _steps(fns: dict, inputs: tuple[torch.Tensor, ...], upstream: torch.Tensor) -> dict:
    """impl -> a callable running forward + backward once (fastgan[b] on backend b)."""
    def make(name, fn):
        backend = name[len("fastgan["):-1] if name.startswith("fastgan[") else "auto"

        def run():
            with fastgan.use_backend(backend):
                y = fn(*inputs)
            y.backward(upstream)
            for t in inputs:
                t.grad = None
        return run
    return {name: make(name, fn) for name, fn in fns.items()}


def _saved(fns: dict, inputs: tuple[torch.Tensor, ...]) -> dict:
    def make(name, fn):
        backend = name[len("fastgan["):-1] if name.startswith("fastgan[") else "auto"

        def bytes_saved():
            with fastgan.use_backend(backend):
                # the input is kept by the layer before anyway: not counted
                return saved_tensor_bytes(lambda: fn(*inputs), exclude=inputs)
        return bytes_saved
    return {name: make(name, fn) for name, fn in fns.items() if name != "torch.compile"}


def make_rows(cfg, n: int) -> list[Row]:
    x = cfg.input(n, 256, 32, 32, requires_grad=True)
    b = torch.randn(256, device=cfg.device, dtype=cfg.dtype).requires_grad_()
    gy = torch.randn_like(x)
    bias_fns = {"eager": eager_bias_lrelu,
                "torch.compile": torch.compile(eager_bias_lrelu, dynamic=False)}
    xf = cfg.input(n, 128, 32, 32, requires_grad=True)
    gf = torch.randn_like(xf)
    fir_fns = {"eager": reference_fir_up_down,
               "torch.compile": torch.compile(reference_fir_up_down, dynamic=False)}
    for be in cfg.fastgan_impls():
        bias_fns[f"fastgan[{be}]"] = fastgan_bias_lrelu
        fir_fns[f"fastgan[{be}]"] = fir_up_down
    return [
        Row(f"bias_act lrelu fwd+bwd ({n},256,32,32)", "op", _steps(bias_fns, (x, b), gy),
            saved=_saved(bias_fns, (x, b)), note="eager: add, leaky_relu, mul"),
        Row(f"FIR up2+down2 [1,3,3,1] fwd+bwd ({n},128,32,32)", "op",
            _steps(fir_fns, (xf,), gf), saved=_saved(fir_fns, (xf,)),
            note="eager: zero-stuffed depthwise convolutions"),
    ]


def rows(cfg) -> list[Row]:
    """`fastgan bench` rows: the StyleGAN ops at batch 32 (4 with --quick)."""
    return make_rows(cfg, 4 if cfg.quick else 32)


def main(argv: list[str] | None = None) -> int:
    from fastgan.bench.common import Config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--malloc", choices=["default", "tuned"], default="tuned",
                   help="tuned (default) keeps freed blocks for reuse: see common.tune_malloc")
    args = p.parse_args(argv)
    if args.malloc == "tuned":
        tune_malloc()
    cfg = Config(batch=args.batch, dtype=torch.float32, channels_last=False, device="cpu",
                 backends=[b for b in fastgan.available_backends() if b == "cpu"],
                 quick=False, rounds=args.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for row in make_rows(cfg, args.batch):
        impls = {}
        for name, fn in row.impls.items():
            try:
                fn()
                impls[name] = fn
            except NotImplementedError as e:
                print(f"  {name}: {e}")
        samples = paired_timings(impls, rounds=args.rounds)
        print(format_table(row.name, samples,
                           [b for b in ("eager", "torch.compile") if b in samples]))
        for name, fn in row.saved.items():
            print(f"  saved for backward, {name}: {fn() / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
