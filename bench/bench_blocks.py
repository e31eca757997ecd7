"""Fused Conv/ConvT + BatchNorm2d + LeakyReLU blocks and converted DCGANs against eager
PyTorch and torch.compile, on the CPU.

Benchmarks (issue 3):
  block   ConvTranspose2d(128->64, k4 s2 p1) + BatchNorm2d + LeakyReLU(0.2), forward +
          backward on (64, 128, 16, 16)
  sample  DCGAN generator sampling: eval, no_grad, batch 128, ngf 64
  train   one DCGAN G+D training step (pytorch/examples: BCELoss, Adam(2e-4, (0.5, 0.999))),
          batch 32, ngf = ndf = 32
  traced  the same step for the pair written with explicit calls in forward()
          (bench/explicit_dcgan.py), which fastgan.convert fuses through torch.fx
Each in fp32 NCHW against eager (and torch.compile for block and sample), with extra rows
for channels_last and bf16 autocast where oneDNN convolutions gain from them.

pytest-benchmark (one group per benchmark):
    python -m pytest bench/bench_blocks.py --benchmark-only
Paired ratios (what BENCHMARKS.md quotes):
    python -m fastgan.bench.bench_blocks [--rounds 20] [--benches block sample train]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os

import pytest
import torch
from torch import nn

import fastgan
from fastgan.models import Discriminator, Generator, weights_init

from fastgan.bench.common import Row, format_table, paired_ratio, paired_timings, saved_tensor_bytes

BENCHES = ("block", "sample", "train", "traced")


def _variants(mod: nn.Module, converted: nn.Module, compiled: bool):
    """name -> (module, channels_last, autocast bf16)."""
    out = {"eager": (mod, False, False)}
    if compiled:
        out["torch.compile"] = (torch.compile(copy.deepcopy(mod), dynamic=False), False, False)
    out["fastgan"] = (converted, False, False)
    out["eager channels_last"] = (copy.deepcopy(mod).to(memory_format=torch.channels_last),
                                  True, False)
    out["fastgan channels_last"] = (
        copy.deepcopy(converted).to(memory_format=torch.channels_last), True, False)
    out["eager bf16"] = (mod, False, True)
    out["fastgan bf16"] = (converted, False, True)
    return out


def _ctx(bf16: bool, device: str = "cpu"):
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _fmt(x: torch.Tensor, cl: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def block_cases(extra: bool = True):
    torch.manual_seed(0)
    eager = nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64),
                          nn.LeakyReLU(0.2))
    x = torch.randn(64, 128, 16, 16)
    g = torch.randn(64, 64, 32, 32)
    cases = {}
    for name, (mod, cl, bf16) in _variants(eager, fastgan.convert(eager), True).items():
        if not extra and (cl or bf16):
            continue

        def run(mod=mod, cl=cl, bf16=bf16, x=_fmt(x, cl), g=_fmt(g, cl)):
            xi = x.detach().requires_grad_()
            with _ctx(bf16):
                y = mod(xi)
            y.backward(g.to(y.dtype))

        cases[name] = run
    return cases


def sample_cases(extra: bool = True):
    torch.manual_seed(0)
    G = Generator(100, 64).apply(weights_init).eval()
    z = torch.randn(128, 100, 1, 1)
    cases = {}
    for name, (mod, cl, bf16) in _variants(G, fastgan.convert(G), True).items():
        if not extra and (cl or bf16):
            continue
        mod.eval()

        def run(mod=mod, bf16=bf16, z=_fmt(z, cl)):
            with torch.no_grad(), _ctx(bf16):
                mod(z)

        cases[name] = run
    return cases


def train_step(G, D, optG, optD, real, noise, bf16):
    """One DCGAN step as pytorch/examples writes it (BCELoss on D's sigmoid); bench_paths
    times it too."""
    crit = nn.BCELoss()
    dev = real.device.type
    with _ctx(bf16, dev):
        D.zero_grad()
        out = D(real).float()
        err_real = crit(out, torch.ones_like(out))
    err_real.backward()
    with _ctx(bf16, dev):
        fake = G(noise)
        out = D(fake.detach()).float()
        err_fake = crit(out, torch.zeros_like(out))
    err_fake.backward()
    optD.step()
    with _ctx(bf16, dev):
        G.zero_grad()
        out = D(fake).float()
        err_g = crit(out, torch.ones_like(out))
    err_g.backward()
    optG.step()


def train_cases(extra: bool = True):
    torch.manual_seed(0)
    G0, D0 = Generator(100, 32).apply(weights_init), Discriminator(32).apply(weights_init)
    real = torch.randn(32, 3, 64, 64).tanh()
    noise = torch.randn(32, 100, 1, 1)
    rows = {"eager": (False, False, False), "fastgan": (True, False, False)}
    if extra:
        rows.update({"eager channels_last": (False, True, False),
                     "fastgan channels_last": (True, True, False),
                     "eager bf16": (False, False, True), "fastgan bf16": (True, False, True)})
    cases = {}
    for name, (fused, cl, bf16) in rows.items():
        G, D = copy.deepcopy(G0), copy.deepcopy(D0)
        if fused:
            G, D = fastgan.convert(G), fastgan.convert(D)
        if cl:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))

        def run(G=G, D=D, optG=optG, optD=optD, bf16=bf16, r=_fmt(real, cl), n=_fmt(noise, cl)):
            train_step(G, D, optG, optD, r, n, bf16)

        cases[name] = run
    return cases


def traced_cases(extra: bool = True):
    """The training step of the explicit-forward pair: eager, torch.compile, fastgan."""
    from fastgan.bench.explicit_dcgan import ExplicitDiscriminator, ExplicitGenerator

    torch.manual_seed(0)
    G0 = ExplicitGenerator(100, 32).apply(weights_init)
    D0 = ExplicitDiscriminator(32).apply(weights_init)
    real = torch.randn(32, 3, 64, 64).tanh()
    noise = torch.randn(32, 100, 1, 1)
    pairs = {"eager": (copy.deepcopy(G0), copy.deepcopy(D0)),
             "torch.compile": (torch.compile(copy.deepcopy(G0), dynamic=False),
                               torch.compile(copy.deepcopy(D0), dynamic=False))}
    Gc, rep_g = fastgan.convert(G0, report=True)
    Dc, rep_d = fastgan.convert(D0, report=True)
    assert len(rep_g.fused) == 4 and len(rep_d.fused) == 3, (rep_g, rep_d)
    pairs["fastgan"] = (Gc, Dc)
    cases = {}
    for name, (G, D) in pairs.items():
        optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))

        def run(G=G, D=D, optG=optG, optD=optD):
            train_step(G, D, optG, optD, real, noise, False)

        cases[name] = run
    return cases


MAKERS = {"block": block_cases, "sample": sample_cases, "train": train_cases,
          "traced": traced_cases}
TITLES = {
    "block": "ConvT(128->64, k4 s2 p1) + BN + LeakyReLU, fwd+bwd, (64,128,16,16)",
    "sample": "DCGAN generator sampling, eval, batch 128, ngf 64",
    "train": "DCGAN G+D training step, batch 32, ngf=ndf=32",
    "traced": "DCGAN G+D training step, explicit forward() (torch.fx path), batch 32, ngf=ndf=32",
}

_IMPLS = ["eager", "torch.compile", "fastgan", "eager channels_last", "fastgan channels_last",
          "eager bf16", "fastgan bf16"]


@pytest.fixture(scope="module")
def _cases():
    return {}


@pytest.mark.parametrize("bench,impl", [(b, i) for b in BENCHES for i in _IMPLS])
def test_blocks(benchmark, _cases, bench, impl):
    if bench not in _cases:
        _cases[bench] = MAKERS[bench]()
    cases = _cases[bench]
    if impl not in cases:
        pytest.skip(f"{impl} is not a row of {bench}")
    benchmark.group = f"blocks {bench}"
    benchmark.extra_info.update(bench=bench, impl=impl)
    fn = cases[impl]
    for _ in range(2):
        fn()
    benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=1)


ATEN_CONV = "fastgan[triton, ATen conv]"


@contextlib.contextmanager
def _aten_convolutions():
    """FASTGAN_FUSED_CONV=0 inside: the triton backend keeps ATen's convolutions."""
    old = os.environ.get("FASTGAN_FUSED_CONV")
    os.environ["FASTGAN_FUSED_CONV"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["FASTGAN_FUSED_CONV"]
        else:
            os.environ["FASTGAN_FUSED_CONV"] = old


def rows(cfg):
    """`fastgan bench` rows on its default, the DCGAN 64x64 pair at cfg.batch: a ConvT
    block, generator sampling, and the G+D training step (with saved MB of G)."""
    bf16 = cfg.dtype == torch.bfloat16
    dev = cfg.device
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    fg = {f"fastgan[{b}]": b for b in cfg.fastgan_impls()}
    if dev == "cuda" and "triton" in fg.values():
        # fastgan[triton] runs the fused chain (Triton convolutions); this one the same
        # backend around ATen's convolutions, to tell what the fusion itself buys
        fg[ATEN_CONV] = "triton"

    def amp():
        return _ctx(bf16, dev)

    def use(name):
        stack = contextlib.ExitStack()
        stack.enter_context(fastgan.use_backend(fg.get(name, "auto")))
        if name == ATEN_CONV:
            stack.enter_context(_aten_convolutions())
        return stack

    def prep(m):
        return m.to(dev).to(memory_format=fmt)

    def inp(*shape):
        return torch.randn(*shape, device=dev).contiguous(memory_format=fmt) if len(shape) == 4 \
            else torch.randn(*shape, device=dev)

    torch.manual_seed(0)
    out = []

    # ConvT(128->64) + BN + LeakyReLU, the generator's 16x16 -> 32x32 block at ngf 64.
    blk = prep(nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False),
                             nn.BatchNorm2d(64), nn.LeakyReLU(0.2)))
    bmods = {"eager": blk, "torch.compile": torch.compile(copy.deepcopy(blk), dynamic=False)}
    bmods.update({k: fastgan.convert(blk) for k in fg})
    x = inp(cfg.batch, 128, 16, 16)
    g = inp(cfg.batch, 64, 32, 32)

    def block(name):
        def run():
            with use(name):
                xi = x.detach().requires_grad_()
                with amp():
                    y = bmods[name](xi)
                y.backward(g.to(y.dtype))
        return run

    out.append(Row(f"ConvT+BN+LeakyReLU fwd+bwd ({cfg.batch},128,16,16)", "block",
                   {k: block(k) for k in bmods}))

    # Sampling: the generator (ngf 64) in eval mode.
    G0 = prep(Generator(100, 64).apply(weights_init))
    D0 = prep(Discriminator(64).apply(weights_init))
    z = inp(cfg.batch, 100, 1, 1)
    gmods = {"eager": G0, "torch.compile": torch.compile(copy.deepcopy(G0), dynamic=False)}
    gmods.update({k: fastgan.convert(G0) for k in fg})

    def sample(name):
        m = gmods[name]

        def run():
            m.eval()
            with use(name), torch.no_grad(), amp():
                m(z)
        return run

    out.append(Row(f"DCGAN G sampling, eval, batch {cfg.batch}", "sampling",
                   {k: sample(k) for k in gmods}))

    # Training step of the pair: BCELoss, Adam(2e-4, (0.5, 0.999)), as pytorch/examples.
    real = torch.randn(cfg.batch, 3, 64, 64, device=dev).tanh().contiguous(memory_format=fmt)
    noise = inp(cfg.batch, 100, 1, 1)
    pairs = {"eager": (copy.deepcopy(G0).train(), copy.deepcopy(D0))}
    pairs["torch.compile"] = tuple(torch.compile(copy.deepcopy(m), dynamic=False) for m in (G0.train(), D0))
    pairs.update({k: (fastgan.convert(G0.train()), fastgan.convert(D0)) for k in fg})
    opts = {k: tuple(torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for m in gd)
            for k, gd in pairs.items()}

    def train(name):
        (G, D), (optG, optD) = pairs[name], opts[name]

        def run():
            with use(name):
                train_step(G, D, optG, optD, real, noise, bf16)
        return run

    def saved(name):
        G = pairs[name][0]

        def count():
            with use(name), amp():
                return saved_tensor_bytes(lambda: G(noise), exclude=tuple(G.parameters()))
        return count

    out.append(Row(f"DCGAN G+D train step, batch {cfg.batch}", "train step",
                   {k: train(k) for k in pairs},
                   saved={k: saved(k) for k in pairs if k != "torch.compile"},
                   note="saved MB: what the generator's forward keeps for backward"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--benches", nargs="*", default=list(BENCHES), choices=BENCHES)
    p.add_argument("--no-extra", action="store_true", help="skip channels_last / bf16 rows")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for bench in args.benches:
        cases = MAKERS[bench](extra=not args.no_extra)
        samples = paired_timings(cases, rounds=args.rounds)
        base = ["eager"] + (["torch.compile"] if "torch.compile" in cases else [])
        print(format_table(TITLES[bench], samples, base))
        for prefix in ("channels_last", "bf16"):
            e, f = f"eager {prefix}", f"fastgan {prefix}"
            if e in samples:
                print(f"  {f} vs {e}: {paired_ratio(samples, e, f):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
