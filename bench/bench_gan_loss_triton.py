"""GPU benchmark of the triton backend of the combined GAN loss against eager and
torch.compile.

    python -m fastgan.bench.bench_gan_loss_triton            # table on stdout
    python -m pytest bench/bench_gan_loss_triton.py  # the same, as (skipped-without-CUDA) tests

The ns loss, forward + (d_loss + g_loss).backward() + clearing both .grad fields, at
N = 64 and 512 (GAN batches) and 65536 logits per batch (the multi-program path), fp32:
  eager           d = bce(r, 1) + bce(f, 0); g = bce(f, 1) (binary_cross_entropy_with_logits)
  torch.compile   the same expression, inductor, static shapes
  fastgan[triton] fastgan.functional.gan_loss(r, f, "ns") on the triton backend (and
                  fastgan[cuda] when the CUDA kernels are built)
Timed with triton.testing.do_bench (median of CUDA-event times, L2 flushed between
runs). At GAN batch sizes every implementation is bound by launch latency and host
overhead, not by memory: 64 logits are 256 bytes (BENCHMARKS.md, "GPU: traffic model").
"""

from __future__ import annotations

import pytest
import torch

import fastgan

from fastgan.bench.bench_gan_loss import eager_ns, fastgan_ns

SIZES = (64, 512, 65536)


def _impls() -> dict:
    fns = {"eager": (eager_ns, "auto"),
           "torch.compile": (torch.compile(eager_ns, dynamic=False), "auto"),
           "fastgan[triton]": (fastgan_ns, "triton")}
    if "cuda" in fastgan.available_backends():
        fns["fastgan[cuda]"] = (fastgan_ns, "cuda")
    return fns


def run(n: int) -> dict[str, float]:
    """Median ms of one loss step per implementation."""
    from triton.testing import do_bench

    torch.manual_seed(0)
    real = torch.randn(n, device="cuda", requires_grad=True)
    fake = torch.randn(n, device="cuda", requires_grad=True)
    out = {}
    for name, (fn, backend) in _impls().items():
        def step(fn=fn, backend=backend):
            with fastgan.use_backend(backend):
                loss = fn(real, fake)
            (loss[0] + loss[1]).backward()
            real.grad = None
            fake.grad = None

        for _ in range(3):  # compile / JIT outside the timing
            step()
        out[name] = do_bench(step, warmup=25, rep=100, return_mode="median")
    return out


def _row(n: int, ms: dict[str, float]) -> str:
    cells = "  ".join(f"{name} {v * 1e3:8.1f}us" for name, v in ms.items())
    ratio = ms["eager"] / ms["fastgan[triton]"]
    return f"ns fwd+bwd N={n:<6} {cells}  eager/triton {ratio:4.2f}x"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("n", SIZES)
def test_bench_gan_loss_triton(n):
    pytest.importorskip("triton")
    ms = run(n)
    assert all(v > 0 for v in ms.values())
    print(_row(n, ms))


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench_gan_loss_triton: needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name()}")
    for n in SIZES:
        print(_row(n, run(n)))


if __name__ == "__main__":
    main()
