"""Combined GAN loss, forward + backward of the ns loss (D and G): eager, torch.compile
of the same expression, and fastgan.functional.gan_loss.

  eager          d = bce(r, 1) + bce(f, 0); g = bce(f, 1)   (binary_cross_entropy_with_logits)
  torch.compile  torch.compile of that expression (inductor, static shapes)
  fastgan[cpu]   fastgan.functional.gan_loss(r, f, "ns")

each followed by (d + g).backward() and clearing both .grad fields (what
optimizer.zero_grad() does by default). At GAN batch sizes (64, 512 logits) the cost is
per-call overhead: Python, dispatcher, allocations, autograd nodes. The fused op also
returns D(x) and D(G(z)); the "+stats" cases have eager and compile compute them too
(sigmoid(logits).mean() without grad, as training loops log them).

pytest-benchmark (one group per case, so --benchmark-compare lines up):
    python -m pytest bench/bench_gan_loss.py --benchmark-only
Paired ratios (each round times every implementation back to back; see common.py):
    python -m fastgan.bench.bench_gan_loss [--rounds 200] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics

import pytest
import torch
import torch.nn.functional as F

import fastgan

from fastgan.bench.common import Row, paired_ratio, paired_timings

SIZES = (64, 512)
IMPL_LABELS = ("eager", "torch.compile", "fastgan[cpu]")


def eager_ns(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
    bce = F.binary_cross_entropy_with_logits
    d_loss = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
    g_loss = bce(fake, torch.ones_like(fake))
    return d_loss, g_loss


def eager_ns_stats(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
    d_loss, g_loss = eager_ns(real, fake)
    with torch.no_grad():
        d_real, d_fake = torch.sigmoid(real).mean(), torch.sigmoid(fake).mean()
    return d_loss, g_loss, d_real, d_fake


def fastgan_ns(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return fastgan.functional.gan_loss(real, fake, "ns")  # (d_loss, g_loss, d_real, d_fake)


def make_cases(n: int, stats: bool = False, steps: int = 1, device: str = "cpu"):
    """impl name -> zero-argument callable running `steps` loss forward+backward steps."""
    real = torch.randn(n, device=device, requires_grad=True)
    fake = torch.randn(n, device=device, requires_grad=True)
    expr = eager_ns_stats if stats else eager_ns
    fns = {"eager": expr, "torch.compile": torch.compile(expr, dynamic=False)}
    if "cpu" in fastgan.available_backends():
        fns["fastgan[cpu]"] = fastgan_ns
    cases = {}
    for name, fn in fns.items():
        def run(fn=fn):
            for _ in range(steps):
                out = fn(real, fake)
                (out[0] + out[1]).backward()
                real.grad = None
                fake.grad = None
        for _ in range(5):  # compiles, warms caches and the allocator
            run()
        cases[name] = run
    return cases


@pytest.mark.parametrize("stats", (False, True), ids=("ns", "ns+stats"))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", IMPL_LABELS)
def test_gan_loss(benchmark, impl: str, n: int, stats: bool) -> None:
    cases = make_cases(n, stats)
    if impl not in cases:
        pytest.skip(f"{impl} not available here")
    benchmark.group = f"gan_loss {'ns+stats' if stats else 'ns'} fwd+bwd N={n}"
    benchmark.extra_info.update(n=n, stats=stats, impl=impl)
    benchmark.pedantic(cases[impl], rounds=2000, iterations=10, warmup_rounds=50)


def rows(cfg):
    """`fastgan bench` rows: the DCGAN discriminator's ns loss on a batch of logits."""
    n = cfg.batch
    real = cfg.input(n, requires_grad=True)
    fake = cfg.input(n, requires_grad=True)
    fns = {"eager": eager_ns, "torch.compile": torch.compile(eager_ns, dynamic=False)}
    for b in cfg.fastgan_impls():
        fns[f"fastgan[{b}]"] = fastgan_ns

    def step(name):
        fn = fns[name]
        backend = name[len("fastgan["):-1] if name.startswith("fastgan[") else "auto"

        def run():
            with fastgan.use_backend(backend):
                out = fn(real, fake)
            (out[0] + out[1]).backward()
            real.grad = None
            fake.grad = None
        return run

    return [Row(f"GAN loss (ns) D+G fwd+bwd ({n},)", "op", {k: step(k) for k in fns},
                note="per-call overhead dominates at batch sizes")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--steps", type=int, default=20, help="loss steps timed per round")
    p.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"median us per step, paired median ratios over {args.rounds} rounds")
    print(f"  {'case':<22} {'impl':<14} {'us/step':>8} {'vs eager':>9} {'vs compile':>11}")
    for stats in (False, True):
        for n in args.sizes:
            samples = paired_timings(make_cases(n, stats, args.steps), rounds=args.rounds)
            case = f"{'ns+stats' if stats else 'ns'} N={n}"
            for impl, xs in samples.items():
                print(f"  {case:<22} {impl:<14} {statistics.median(xs) / args.steps * 1e6:8.2f} "
                      f"{paired_ratio(samples, 'eager', impl):8.2f}x "
                      f"{paired_ratio(samples, 'torch.compile', impl):10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
