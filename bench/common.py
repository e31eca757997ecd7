"""What the benchmarks share: timing helpers, and the Config / Row of `fastgan bench`.

This machine (and most shared CI machines) drifts by tens of percent from one second
to the next, so speedups are measured as *paired* ratios: every round times each
implementation once, back to back, and the ratio baseline/candidate is taken within
the round; the median over rounds is reported. Medians of per-implementation times
are reported beside it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def paired_timings(cases: dict[str, Callable[[], object]], rounds: int = 30, warmup: int = 3,
                   device: str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each case, interleaved round by round."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    sync(device)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - t0)
    return samples


def first_calls(impls: dict[str, Callable[[], object]]) -> tuple[dict, dict[str, str]]:
    """Runs each implementation once (compiling where it compiles); one that raises is
    reported, not timed, and the others go on: (those that ran, name -> why one failed)."""
    ok, failed = {}, {}
    for name, fn in impls.items():
        try:
            fn()
            ok[name] = fn
        except Exception as e:  # e.g. an inductor error in torch.compile's column
            msg = (str(e).strip().splitlines() or [""])[-1][:160]
            failed[name] = f"{type(e).__name__}: {msg}"
    return ok, failed


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(samples: dict[str, list[float]], baseline: str, candidate: str) -> float:
    """Median over rounds of baseline_time / candidate_time (> 1: candidate is faster)."""
    return statistics.median(b / c for b, c in zip(samples[baseline], samples[candidate]))


def spread(xs: list[float]) -> tuple[float, float]:
    """Interquartile range (q1, q3)."""
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def format_table(title: str, samples: dict[str, list[float]], baselines: list[str]) -> str:
    lines = [title, f"  {'impl':<22} {'median ms':>10} {'IQR ms':>16} " +
             " ".join(f"{'vs ' + b:>12}" for b in baselines)]
    for name, xs in samples.items():
        q1, q3 = spread(xs) if len(xs) >= 2 else (xs[0], xs[0])
        ratios = " ".join(f"{paired_ratio(samples, b, name):>11.2f}x" for b in baselines)
        lines.append(f"  {name:<22} {median(xs) * 1e3:>10.3f} {q1 * 1e3:>7.3f}-{q3 * 1e3:<8.3f} "
                     + ratios)
    return "\n".join(lines)


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], exclude: tuple[torch.Tensor, ...] = ()) -> int:
    """Bytes autograd saves for backward while running fn() (distinct storages, minus
    those of `exclude`, e.g. parameters)."""
    seen: dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def tune_malloc() -> bool:
    """Makes glibc keep freed large blocks for reuse: no per-allocation mmap below 32 MiB
    and no trimming of the heap top. Without it, each fresh 16 MiB activation or gradient
    comes back from the kernel as ~4000 zeroed pages, a page fault each, which on a small
    CPU costs as much as the BatchNorm itself and depends on the order of earlier frees.
    Process-wide, applies to every implementation alike; for benchmarks, off by default
    (glibc's defaults are what users get). Returns False where it cannot be applied."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1
    return ok and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1


# ---------------------------------------------------------------------------
# What `fastgan bench` (bench/suite.py) runs: a configuration, and the rows each bench
# module contributes through its rows(cfg).

@dataclasses.dataclass
class Config:
    batch: int
    dtype: torch.dtype
    channels_last: bool
    device: str
    backends: list[str]
    quick: bool
    rounds: int
    # the architectures whose `fastgan train` step bench_archs times (fastgan bench
    # --archs), and whether each also gets its class-conditional row
    archs: tuple[str, ...] = ("dcgan", "resnet", "r3gan")
    conditional_archs: bool = False

    def input(self, *shape: int, scale: float = 1.0, requires_grad: bool = False) -> torch.Tensor:
        x = torch.randn(*shape, device=self.device) * scale
        x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.requires_grad_(requires_grad)

    def fastgan_impls(self) -> list[str]:
        return [b for b in self.backends if b != "reference"]


@dataclasses.dataclass
class Row:
    name: str
    kind: str  # "op", "block", "train step", "sampling"
    impls: dict[str, Callable[[], object]]
    # impl -> bytes saved for backward, or a dict of parts (e.g. {"G": ..., "D": ...}),
    # reported as their sum with the parts beside it
    saved: dict[str, Callable[[], int | dict[str, int]]] = dataclasses.field(default_factory=dict)
    note: str = ""
    rounds: int | None = None  # at most this many timed rounds (a row whose call takes seconds)


def config_main(argv: list[str] | None, doc: str, op: str, configs, make_cases) -> int:
    """The command line of an op's benchmark over named configs (bench_bn_act,
    bench_cbn_act): paired timings of make_cases(config, mode) per config and mode."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--configs", nargs="*", default=list(configs))
    p.add_argument("--modes", nargs="*", default=["train", "eval"])
    p.add_argument("--malloc", choices=["default", "tuned"], default="default",
                   help="see fastgan.bench.common.tune_malloc")
    args = p.parse_args(argv)
    if args.malloc == "tuned" and not tune_malloc():
        raise SystemExit("--malloc tuned needs glibc")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, malloc {args.malloc}")
    for config in args.configs:
        for mode in args.modes:
            samples = paired_timings(make_cases(config, mode), rounds=args.rounds)
            what = "forward+backward" if mode == "train" else "forward (eval, no_grad)"
            print(format_table(f"{op} {config} {what}", samples, ["eager", "torch.compile"]))
    return 0


def pedantic_case(benchmark, op: str, config: str, mode: str, impl: str, make_cases) -> None:
    """One pytest-benchmark case of an op's benchmark over named configs: impl's call of
    make_cases(config, mode), warmed up, then 20 rounds (skipped where impl is absent)."""
    import pytest

    cases = make_cases(config, mode)
    if impl not in cases:
        pytest.skip(f"{impl} not available here")
    benchmark.group = f"{op} {mode} {config}"
    benchmark.extra_info.update(config=config, mode=mode, impl=impl)
    fn = cases[impl]
    for _ in range(3):
        fn()
    benchmark.pedantic(fn, rounds=20, iterations=1, warmup_rounds=2)
