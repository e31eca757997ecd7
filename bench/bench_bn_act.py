"""BatchNorm2d + LeakyReLU, forward + backward (training) and forward (eval):
eager nn.BatchNorm2d + nn.LeakyReLU, torch.compile of the same two modules, and
fastgan.nn.BatchNormAct2d on each usable backend.

pytest-benchmark (one group per configuration, so --benchmark-compare lines up):
    python -m pytest bench/bench_bn_act.py --benchmark-only
Paired ratios (what BENCHMARKS.md quotes):
    python -m fastgan.bench.bench_bn_act [--rounds 40]
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastgan

from fastgan.bench.common import Row, config_main, pedantic_case, saved_tensor_bytes

CONFIGS = {
    # name: (shape, dtype, channels_last)
    "fp32-nchw-64x64x32x32": ((64, 64, 32, 32), torch.float32, False),
    "fp32-nhwc-64x64x32x32": ((64, 64, 32, 32), torch.float32, True),
    "bf16-nchw-64x64x32x32": ((64, 64, 32, 32), torch.bfloat16, False),
    "fp32-nchw-128x128x16x16": ((128, 128, 16, 16), torch.float32, False),
}


def _impls(C: int, dtype: torch.dtype, device: str) -> dict[str, tuple[nn.Module, str | None]]:
    eager = nn.Sequential(nn.BatchNorm2d(C), nn.LeakyReLU(0.2)).to(device)
    impls: dict[str, tuple[nn.Module, str | None]] = {
        "eager": (eager, None),
        "torch.compile": (torch.compile(copy.deepcopy(eager), dynamic=False), None),
    }
    for backend in fastgan.available_backends():
        if backend == "reference" or (backend == "cpu") != (device == "cpu"):
            continue
        if backend == "triton" and device == "cpu":
            continue
        impls[f"fastgan[{backend}]"] = (fastgan.nn.BatchNormAct2d(C).to(device), backend)
    return impls


def make_cases(config: str, mode: str = "train", device: str = "cpu"):
    """name -> zero-argument callable running one forward(+backward)."""
    shape, dtype, channels_last = CONFIGS[config]
    x = torch.randn(shape, device=device).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    cases = {}
    for name, (mod, backend) in _impls(shape[1], dtype, device).items():
        mod.train(mode == "train")

        def run(mod=mod, backend=backend):
            ctx = fastgan.use_backend(backend) if backend else fastgan.use_backend("auto")
            with ctx:
                if mode == "train":
                    xi = x.detach().requires_grad_()
                    mod(xi).backward(g)
                else:
                    with torch.no_grad():
                        mod(x)

        cases[name] = run
    return cases


def _case_ids():
    out = []
    for config in CONFIGS:
        for mode in ("train", "eval"):
            for impl in ("eager", "torch.compile", "fastgan[cpu]"):
                out.append((config, mode, impl))
    return out


@pytest.mark.parametrize("config,mode,impl", _case_ids())
def test_bn_act(benchmark, config, mode, impl):
    pedantic_case(benchmark, "bn_act", config, mode, impl, make_cases)


def rows(cfg):
    """`fastgan bench` rows: the DCGAN generator's 32x32 BatchNorm+LeakyReLU layer
    (batch, 64, 32, 32), training forward+backward and eval forward."""
    C, S = 64, 32
    x = cfg.input(cfg.batch, C, S, S)
    g = torch.randn_like(x)
    mods = {"eager": nn.Sequential(nn.BatchNorm2d(C), nn.LeakyReLU(0.2)).to(cfg.device)}
    mods["torch.compile"] = torch.compile(copy.deepcopy(mods["eager"]), dynamic=False)
    for b in cfg.fastgan_impls():
        mods[f"fastgan[{b}]"] = fastgan.nn.BatchNormAct2d(C).to(cfg.device)
    def backend_of(name):
        return name[len("fastgan["):-1] if name.startswith("fastgan[") else "auto"

    def train_step(name):
        m = mods[name].train()

        def run():
            with fastgan.use_backend(backend_of(name)):
                xi = x.detach().requires_grad_()
                m(xi).backward(g)
        return run

    def eval_fwd(name):
        m = mods[name]

        def run():
            m.eval()
            with fastgan.use_backend(backend_of(name)), torch.no_grad():
                m(x)
        return run

    def saved(name):
        m = mods[name].train()

        def count():
            with fastgan.use_backend(backend_of(name)):
                xi = x.detach().requires_grad_()
                return saved_tensor_bytes(lambda: m(xi), exclude=tuple(m.parameters()) + (xi,))
        return count

    shape = f"({cfg.batch},{C},{S},{S})"
    return [
        Row(f"BN+LeakyReLU fwd+bwd {shape}", "op", {k: train_step(k) for k in mods},
            saved={k: saved(k) for k in mods if k != "torch.compile"},
            note="saved MB excludes the input, which the previous layer keeps anyway"),
        Row(f"BN+LeakyReLU eval fwd {shape}", "op", {k: eval_fwd(k) for k in mods}),
    ]


def main(argv: list[str] | None = None) -> int:
    return config_main(argv, __doc__, "bn_act", CONFIGS, make_cases)


if __name__ == "__main__":
    raise SystemExit(main())
