"""Benchmark of the combined GAN loss: forward + backward of the ns loss, D and G.

Three implementations of the same step, in one run, on the same inputs:
  eager    d = bce(r, 1) + bce(f, 0); g = bce(f, 1)   (binary_cross_entropy_with_logits)
  compile  torch.compile of that expression (inductor, static shapes)
  fastgan  fastgan.functional.gan_loss(r, f, "ns")
each followed by (d + g).backward() and clearing the two .grad fields (what
optimizer.zero_grad() does by default). At GAN batch sizes (64, 512 logits) the cost
is the per-call overhead: Python, dispatcher, allocations, autograd nodes.

test_ns_fwd_bwd is the step exactly as above (the fused op also returns D(x) and
D(G(z)), which eager does not compute there); test_ns_stats_fwd_bwd has eager and
compile compute them too (sigmoid(logits).mean() without grad, as training loops
log them), so that all three produce the same four numbers.

    pytest bench/bench_gan_loss.py                      # table, grouped by N
    pytest bench/bench_gan_loss.py --benchmark-autosave  # then --benchmark-compare
    python bench/bench_gan_loss.py                      # the same, then median ratios

On a shared machine add --benchmark-timer=time.thread_time: CPU time of the calling
thread leaves out the time the benchmark is descheduled (which otherwise lands on
whichever implementation happens to run while another process is busy).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import pytest
import torch
import torch.nn.functional as F

import fastgan

SIZES = (64, 512)
IMPLS = ("eager", "compile", "fastgan")


def eager_ns(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _impl(name: str, stats: bool):
    fn = eager_ns_stats if stats else eager_ns
    if name == "eager":
        return fn
    if name == "compile":
        return torch.compile(fn, dynamic=False)
    return fastgan_ns


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_ns_fwd_bwd(benchmark, impl: str, n: int) -> None:
    _run(benchmark, impl, n, stats=False)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_ns_stats_fwd_bwd(benchmark, impl: str, n: int) -> None:
    _run(benchmark, impl, n, stats=True)


def _run(benchmark, impl: str, n: int, stats: bool) -> None:
    benchmark.group = f"gan_loss ns{'+stats' if stats else ''} fwd+bwd N={n}"
    torch.manual_seed(0)
    real = torch.randn(n, requires_grad=True)
    fake = torch.randn(n, requires_grad=True)
    fn = _impl(impl, stats)

    def step() -> None:
        out = fn(real, fake)
        (out[0] + out[1]).backward()
        real.grad = None
        fake.grad = None

    for _ in range(20):  # compiles, and warms caches and the allocator
        step()
    benchmark.pedantic(step, rounds=2000, iterations=10, warmup_rounds=50)


def _ratios(path: str) -> None:
    with open(path) as f:
        data = json.load(f)["benchmarks"]
    med = {(b["name"].split("[")[0], b["params"]["impl"], b["params"]["n"]): b["stats"]["median"]
           for b in data}
    print(f"\n{'test':>22} {'N':>5} {'eager us':>9} {'compile us':>11} {'fastgan us':>11} "
          f"{'eager/fastgan':>14} {'compile/fastgan':>16}")
    for test in sorted({k[0] for k in med}):
        for n in SIZES:
            if (test, "fastgan", n) not in med:
                continue
            e, c, g = (med[(test, i, n)] * 1e6 for i in IMPLS)
            print(f"{test:>22} {n:>5} {e:9.2f} {c:11.2f} {g:11.2f} {e / g:13.2f}x {c / g:15.2f}x")


if __name__ == "__main__":
    out = os.path.join(tempfile.mkdtemp(), "bench_gan_loss.json")
    rc = pytest.main([__file__, "-q", "-p", "no:cacheprovider", f"--benchmark-json={out}",
                      *sys.argv[1:]])
    if rc == 0:
        _ratios(out)
    sys.exit(rc)
