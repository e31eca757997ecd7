"""`fastgan bench`: eager vs torch.compile vs fastgan (per backend), one table.

Each bench module contributes rows through a `rows(cfg)` function; a row is one
workload (an op, a block, a training step, sampling) with a callable per
implementation. Every row is timed with interleaved rounds (fastgan.bench.common.paired_timings)
and reported as medians with the median of paired ratios against eager and against
torch.compile (static shapes: `dynamic=False`, as for a fixed batch size; otherwise
dynamo's automatic dynamic shapes kick in when one process compiles the same module class
at several shapes). Training rows also report the bytes autograd saves for backward.
A training step of every `fastgan train --arch` (bench_archs; --archs, --conditional-archs)
is a row too, and the last section is each architecture's time to first step in a fresh
process (bench_train.cold_start; --no-first-step skips it).
Results go to stdout, to JSON and to a PNG bar chart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

import fastgan

from fastgan.bench import (bench_archs, bench_blocks, bench_bn_act, bench_cbn_act,
                           bench_gan_loss, bench_stylegan)
from fastgan.bench.common import (Config, Row, first_calls, median, paired_ratio,
                                  paired_timings, spread, tune_malloc)
from fastgan.runs.config import ARCHS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


PROVIDERS = (bench_bn_act.rows, bench_cbn_act.rows, bench_gan_loss.rows, bench_blocks.rows,
             bench_stylegan.rows, bench_archs.rows)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _usable_backends(device: str) -> list[str]:
    out = []
    for b in fastgan.available_backends():
        if b == "cpu" and device != "cpu":
            continue
        if b in ("cuda", "triton") and device != "cuda":
            continue
        out.append(b)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastgan bench", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--channels-last", action="store_true", help="channels_last inputs/models")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--backends", nargs="*", default=None,
                   help="fastgan backends to time (default: every usable one)")
    p.add_argument("--quick", action="store_true", help="small batch, few rounds (< 1 min)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per row")
    p.add_argument("--out", default="bench_out", help="folder for results.json and chart.png")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--archs", nargs="*", choices=ARCHS, default=list(ARCHS),
                   help="architectures whose fastgan train step gets a row and a time to "
                        "first step (default: all; none: --archs with no name)")
    p.add_argument("--conditional-archs", action="store_true",
                   help="also a class-conditional row for each of --archs")
    p.add_argument("--no-first-step", action="store_true",
                   help="skip the time-to-first-training-step section (fresh processes; "
                        "torch.compile's cold compile takes ~20-60 s per architecture on a "
                        "2-core CPU; --quick skips it too)")
    p.add_argument("--malloc", choices=["default", "tuned"], default="default",
                   help="'tuned' keeps freed large blocks in glibc's heap (no page faults "
                        "on every fresh activation); applies to all implementations")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    device = _default_device() if args.device == "auto" else args.device
    if device not in ("cpu", "cuda"):
        raise SystemExit(f"fastgan bench: --device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fastgan bench: --device cuda but no CUDA device is available")
    usable = _usable_backends(device)
    backends = usable if args.backends is None else args.backends
    for b in backends:
        if b not in usable:
            raise SystemExit(f"fastgan bench: backend {b!r} is not usable on {device} here "
                             f"(usable: {', '.join(usable)}); see `fastgan info`")
    batch = min(args.batch, 16) if args.quick else args.batch
    rounds = args.rounds or (5 if args.quick else 25)
    return Config(batch=batch, dtype=DTYPES[args.dtype], channels_last=args.channels_last,
                  device=device, backends=backends, quick=args.quick, rounds=rounds,
                  archs=tuple(args.archs), conditional_archs=args.conditional_archs)


def run_row(row: Row, cfg: Config) -> dict:
    impls, failed = first_calls(row.impls)
    rounds = min(cfg.rounds, row.rounds) if row.rounds else cfg.rounds
    samples = paired_timings(impls, rounds=rounds, warmup=1, device=cfg.device)
    res = {"name": row.name, "kind": row.kind, "note": row.note, "rounds": rounds, "impls": {},
           "failed": failed}
    for impl, xs in samples.items():
        q1, q3 = spread(xs) if len(xs) >= 2 else (xs[0], xs[0])
        entry = {"median_ms": median(xs) * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3}
        if "eager" in samples:
            entry["vs_eager"] = paired_ratio(samples, "eager", impl)
        if "torch.compile" in samples:
            entry["vs_compile"] = paired_ratio(samples, "torch.compile", impl)
        res["impls"][impl] = entry
    for impl, fn in row.saved.items():
        if impl in impls:
            saved, entry = fn(), res["impls"].setdefault(impl, {})
            if isinstance(saved, dict):  # parts (G, D, ...): their sum, and each
                entry["saved_parts_mb"] = {k: v / 2**20 for k, v in saved.items()}
                saved = sum(saved.values())
            entry["saved_mb"] = saved / 2**20
    if cfg.device == "cuda":  # peak device memory of one call, each implementation alone
        for impl, fn in impls.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            res["impls"][impl]["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return res


def format_results(results: list[dict], cfg: Config) -> str:
    fg = [f"fastgan[{b}]" for b in cfg.fastgan_impls()]
    cols = ["eager", "torch.compile"] + fg
    head = f"{'row':<44}" + "".join(f"{c + ' ms':>18}" for c in cols)
    for c in fg:
        head += f"{c[8:-1] + ' vs eager':>16}{c[8:-1] + ' vs comp.':>16}"
    head += f"{'saved MB eager/fg':>20}"
    cuda = any("peak_mb" in e for r in results for e in r["impls"].values())
    if cuda:
        head += f"{'peak MB eager/fg':>20}"
    lines = [head, "-" * len(head)]
    for r in results:
        line = f"{r['name'][:44]:<44}"
        for c in cols:
            m = r["impls"].get(c, {}).get("median_ms")
            text = f"{m:.3f}" if m is not None else ("failed" if c in r["failed"] else "-")
            line += f"{text:>18}"
        for c in fg:
            e = r["impls"].get(c, {})
            line += (f"{e['vs_eager']:>15.2f}x" if "vs_eager" in e else f"{'-':>16}")
            line += (f"{e['vs_compile']:>15.2f}x" if "vs_compile" in e else f"{'-':>16}")
        se = r["impls"].get("eager", {}).get("saved_mb")
        sf = r["impls"].get(fg[0], {}).get("saved_mb") if fg else None
        line += f"{(f'{se:.1f}/{sf:.1f}' if se is not None and sf is not None else '-'):>20}"
        if cuda:
            pe = r["impls"].get("eager", {}).get("peak_mb")
            pf = r["impls"].get(fg[0], {}).get("peak_mb") if fg else None
            line += f"{(f'{pe:.1f}/{pf:.1f}' if pe is not None and pf is not None else '-'):>20}"
        lines.append(line)
    for r in results:
        if r["note"] and r["kind"] == "train step":  # what each column of a step covers
            lines.append(f"  {r['name']}: {r['note']}")
        for impl, why in r["failed"].items():
            lines.append(f"  note: {impl} failed on '{r['name']}': {why}")
    return "\n".join(lines)


def write_chart(results: list[dict], cfg: Config, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("fastgan bench: matplotlib not installed, no chart (pip install matplotlib)")
        return False
    fg = [f"fastgan[{b}]" for b in cfg.fastgan_impls()]
    names = [r["name"] for r in results]
    series = []
    for c in fg:
        series.append((f"{c} vs eager", [r["impls"].get(c, {}).get("vs_eager", 0) for r in results]))
        series.append((f"{c} vs torch.compile",
                       [r["impls"].get(c, {}).get("vs_compile", 0) for r in results]))
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(names) * max(1, len(series)) + 1.5))
    h = 0.8 / max(1, len(series))
    for k, (label, vals) in enumerate(series):
        ys = [i + k * h for i in range(len(names))]
        ax.barh(ys, vals, height=h, label=label)
        for y, v in zip(ys, vals):
            ax.text(v, y, f" {v:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + h * (len(series) - 1) / 2 for i in range(len(names))])
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup (median of paired ratios; > 1 is faster)")
    dt = [k for k, v in DTYPES.items() if v == cfg.dtype][0]
    ax.set_title(f"fastgan on {cfg.device}, batch {cfg.batch}, {dt}"
                 f"{', channels_last' if cfg.channels_last else ''}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine_info(cfg: Config) -> dict:
    from fastgan import _ext

    info = {
        "fastgan": fastgan.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "processor": platform.processor(), "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fastgan_cpu_capability": _ext.cpu_capability(),
        "build": _ext.build_info(), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv[1:],
    }
    if cfg.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def first_steps(cfg: Config, archs: tuple[str, ...] = ("dcgan",)) -> dict[str, dict[str, float]]:
    """`fastgan train --arch ARCH`'s time to first step (trainer construction + step 1 of
    the run at 32x32, its preset, this batch) with --impl eager, compile and fastgan, each
    in a fresh process with empty compile caches (fastgan.bench.bench_train.cold_start);
    arch -> impl -> seconds. dcgan is the default run."""
    from fastgan.bench.bench_train import IMPL_ORDER, cold_start, train_config

    print(f"\ntime to first training step (fastgan train --arch ..., 32x32, batch {cfg.batch}, "
          "fresh process, empty compile caches):", flush=True)
    out: dict[str, dict[str, float]] = {}
    for arch in archs:
        loss = train_config("fastgan", cfg.batch, 32, cfg.device, arch).loss
        out[arch] = {}
        for impl in IMPL_ORDER:
            try:
                r = cold_start(impl, 1, cfg.batch, 32, cfg.device, arch=arch)
                out[arch][impl] = r["first_step_s"]
                print(f"  --arch {arch:<7} ({loss:<6}) --impl {impl:<8} {r['first_step_s']:7.2f} s",
                      flush=True)
            except RuntimeError as e:
                print(f"  --arch {arch:<7} --impl {impl:<8} failed: "
                      f"{str(e).splitlines()[-1][:160]}", flush=True)
    return out


def main(argv: list[str] | None = None, providers=PROVIDERS) -> int:
    """`fastgan bench` (every provider's rows; a bench module may pass its own)."""
    args = parse_args(argv)
    cfg = make_config(args)
    if args.malloc == "tuned" and not tune_malloc():
        raise SystemExit("fastgan bench: --malloc tuned needs glibc (mallopt)")
    torch.manual_seed(0)
    dt = [k for k, v in DTYPES.items() if v == cfg.dtype][0]
    capped = (f" (whole train steps at most {bench_archs.MAX_ROUNDS})"
              if cfg.device == "cpu" and cfg.rounds > bench_archs.MAX_ROUNDS else "")
    print(f"fastgan bench: device {cfg.device}, batch {cfg.batch}, {dt}, "
          f"{'channels_last' if cfg.channels_last else 'contiguous'}, backends "
          f"{', '.join(cfg.fastgan_impls()) or 'none'}, {cfg.rounds} rounds per row{capped}, "
          f"malloc {args.malloc}")
    rows = [r for provider in providers for r in provider(cfg)]
    results = []
    t_start = time.perf_counter()
    for i, row in enumerate(rows, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(rows)}] {row.name} ...", end="", flush=True)
        results.append(run_row(row, cfg))
        print(f" {time.perf_counter() - t0:.1f} s", flush=True)
    print()
    print(format_results(results, cfg))
    print(f"\n(total {time.perf_counter() - t_start:.0f} s; ratios are medians of paired "
          "per-round ratios, > 1 means fastgan is faster; saved MB = bytes autograd keeps "
          "for backward, weights excluded; on CUDA, peak MB = torch.cuda.max_memory_allocated "
          "above the baseline during one call)")
    # the default run (dcgan) first, whether or not --archs names it: the recorded row
    first_archs = ("dcgan",) + tuple(a for a in cfg.archs if a != "dcgan")
    first = None if args.no_first_step or cfg.quick else first_steps(cfg, first_archs)
    os.makedirs(args.out, exist_ok=True)
    out = {"first_step": first and first["dcgan"], "first_step_archs": first,
           "config": {"batch": cfg.batch, "dtype": dt, "channels_last": cfg.channels_last,
                      "device": cfg.device, "backends": cfg.backends, "rounds": cfg.rounds,
                      "quick": cfg.quick, "malloc": args.malloc, "archs": list(cfg.archs),
                      "conditional_archs": cfg.conditional_archs},
           "machine": machine_info(cfg), "rows": results}
    jpath = os.path.join(args.out, "results.json")
    with open(jpath, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {jpath}")
    if not args.no_chart:
        cpath = os.path.join(args.out, "chart.png")
        if write_chart(results, cfg, cpath):
            print(f"wrote {cpath}")
    return 0
