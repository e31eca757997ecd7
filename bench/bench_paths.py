"""Does each CPU speed path of the blocks pay on this CPU? Each path on against off, paired
in one process, with eager and torch.compile beside them:

  cl-run   a converted Sequential with two or more convs runs them channels_last for an
           NCHW input (nn/rules.py: wants_channels_last)
  gemm     the DCGAN end layers (ConvTranspose2d on 1x1, Conv2d covering its input) as
           one addmm (nn/blocks.py: conv_forward)

"off" switches a path off by replacing its rule for the duration of the call, nothing
else. Usage: python -m fastgan.bench.bench_paths [--rounds 20] [--cases block sample train]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform

import torch
from torch import nn

import fastgan
from fastgan import _ext
from fastgan.models import Discriminator, Generator, weights_init
from fastgan.nn import blocks, rules

from fastgan.bench.bench_blocks import train_step
from fastgan.bench.common import median, paired_ratio, paired_timings


@contextlib.contextmanager
def _off(path: str):
    """The named path switched off (its rule answers False) inside the block."""
    targets = {"cl-run": [(rules, "wants_channels_last")],
               "gemm": [(blocks, "dense_transposed"), (blocks, "dense_conv")]}[path]
    saved = [(mod, name, getattr(mod, name)) for mod, name in targets]
    for mod, name in targets:
        setattr(mod, name, lambda *a, **k: False)
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def _with(fn, path):
    def run():
        with _off(path):
            fn()
    return run


def block_cases():
    torch.manual_seed(0)
    eager = nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64),
                          nn.LeakyReLU(0.2))
    fused = fastgan.convert(eager)
    compiled = torch.compile(copy.deepcopy(eager), dynamic=False)
    x, g = torch.randn(64, 128, 16, 16), torch.randn(64, 64, 32, 32)

    def step(mod):
        def run():
            mod(x.detach().requires_grad_()).backward(g)
        return run

    return {"eager": step(eager), "torch.compile": step(compiled), "fastgan": step(fused)}


def sample_cases():
    torch.manual_seed(0)
    G = Generator(100, 64).apply(weights_init).eval()
    fused, compiled = fastgan.convert(G).eval(), torch.compile(copy.deepcopy(G), dynamic=False)
    z = torch.randn(64, 100, 1, 1)

    def gen(mod):
        def run():
            with torch.no_grad():
                mod(z)
        return run

    return {"eager": gen(G), "torch.compile": gen(compiled), "fastgan": gen(fused),
            "fastgan cl-run off": _with(gen(fused), "cl-run"),
            "fastgan gemm off": _with(gen(fused), "gemm")}


def train_cases():
    torch.manual_seed(0)
    G0, D0 = Generator(100, 64).apply(weights_init), Discriminator(64).apply(weights_init)
    real, noise = torch.randn(64, 3, 64, 64).tanh(), torch.randn(64, 100, 1, 1)

    def step(fused, compiled=False):
        G, D = copy.deepcopy(G0), copy.deepcopy(D0)
        if fused:
            G, D = fastgan.convert(G), fastgan.convert(D)
        optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        if compiled:
            G, D = torch.compile(G, dynamic=False), torch.compile(D, dynamic=False)
        return lambda: train_step(G, D, optG, optD, real, noise, False)

    fused = step(True)
    return {"eager": step(False), "torch.compile": step(False, compiled=True), "fastgan": fused,
            "fastgan cl-run off": _with(fused, "cl-run"), "fastgan gemm off": _with(fused, "gemm")}


CASES = {"block": ("ConvT+BN+LeakyReLU fwd+bwd (64,128,16,16)", block_cases),
         "sample": ("DCGAN G sampling, eval, batch 64", sample_cases),
         "train": ("DCGAN G+D train step, batch 64", train_cases)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = p.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__} "
          f"(ATen {torch.backends.cpu.get_cpu_capability()}), fastgan CPU kernels "
          f"{_ext.cpu_capability()}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    for key in args.cases:
        title, make = CASES[key]
        samples = paired_timings(make(), rounds=args.rounds)
        print(f"\n{title}")
        for name, ts in samples.items():
            line = f"  {name:<22} {median(ts) * 1e3:9.2f} ms"
            if name != "eager":
                line += f"   vs eager {paired_ratio(samples, 'eager', name):5.2f}x"
            if name.startswith("fastgan"):
                line += f"   vs compile {paired_ratio(samples, 'torch.compile', name):5.2f}x"
            if name.startswith("fastgan "):
                line += f"   path on/off {paired_ratio(samples, name, 'fastgan'):5.2f}x"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
