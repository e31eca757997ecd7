"""Conditional BatchNorm2d + ReLU / LeakyReLU (class-conditional, as in SNGAN / BigGAN
generators), forward + backward (training) and forward (eval): the eager composite
(F.batch_norm without affine, then weight[labels] / bias[labels] and the activation),
torch.compile of the same module, and fastgan.nn.ConditionalBatchNormAct2d on each usable
backend.

pytest-benchmark (one group per configuration):
    python -m pytest bench/bench_cbn_act.py --benchmark-only
Paired ratios:
    python -m fastgan.bench.bench_cbn_act [--rounds 40]
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan

from fastgan.bench.common import Row, config_main, pedantic_case, saved_tensor_bytes

CLASSES = 10
CONFIGS = {
    # name: (shape, dtype, channels_last, negative_slope)
    "fp32-nchw-64x256x16x16-relu": ((64, 256, 16, 16), torch.float32, False, 0.0),
    "fp32-nhwc-64x256x16x16-relu": ((64, 256, 16, 16), torch.float32, True, 0.0),
    "bf16-nchw-64x256x16x16-relu": ((64, 256, 16, 16), torch.bfloat16, False, 0.0),
    "fp32-nchw-64x128x32x32-lrelu": ((64, 128, 32, 32), torch.float32, False, 0.2),
}


class EagerCBN(nn.Module):
    """The eager composite: BatchNorm2d(affine=False), then the class's affine and the
    activation."""

    def __init__(self, C: int, num_classes: int, negative_slope: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(C, affine=False)
        self.weight = nn.Parameter(torch.ones(num_classes, C))
        self.bias = nn.Parameter(torch.zeros(num_classes, C))
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.bn(x) * self.weight[y][:, :, None, None] + self.bias[y][:, :, None, None]
        return F.leaky_relu(z, self.negative_slope)


def _backend_of(name: str) -> str:
    return name[len("fastgan["):-1] if name.startswith("fastgan[") else "auto"


def _modules(C: int, slope: float, device: str, dtype: torch.dtype,
             backends: list[str]) -> dict[str, nn.Module]:
    eager = EagerCBN(C, CLASSES, slope).to(device)
    mods: dict[str, nn.Module] = {"eager": eager,
                                  "torch.compile": torch.compile(copy.deepcopy(eager),
                                                                 dynamic=False)}
    for b in backends:
        mods[f"fastgan[{b}]"] = fastgan.nn.ConditionalBatchNormAct2d(
            C, CLASSES, negative_slope=slope).to(device)
    return mods


def _cases(mods, x, y, g, mode: str):
    cases = {}
    for name, mod in mods.items():
        mod.train(mode == "train")

        def run(mod=mod, name=name):
            with fastgan.use_backend(_backend_of(name)):
                if mode == "train":
                    mod(x.detach().requires_grad_(), y).backward(g)
                else:
                    with torch.no_grad():
                        mod(x, y)
        cases[name] = run
    return cases


def _cpu_backends() -> list[str]:
    return [b for b in fastgan.available_backends() if b == "cpu"]


def make_cases(config: str, mode: str = "train", device: str = "cpu"):
    """name -> zero-argument callable running one forward(+backward)."""
    shape, dtype, channels_last, slope = CONFIGS[config]
    x = torch.randn(shape, device=device).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (shape[0],), device=device)
    mods = _modules(shape[1], slope, device, dtype, _cpu_backends())
    if dtype != torch.float32:  # parameters in the input's dtype, as .to(dtype) would give
        for m in mods.values():
            m.to(dtype)
    return _cases(mods, x, y, torch.randn_like(x), mode)


def _case_ids():
    return [(config, mode, impl) for config in CONFIGS for mode in ("train", "eval")
            for impl in ("eager", "torch.compile", "fastgan[cpu]")]


@pytest.mark.parametrize("config,mode,impl", _case_ids())
def test_cbn_act(benchmark, config, mode, impl):
    pedantic_case(benchmark, "cbn_act", config, mode, impl, make_cases)


def rows(cfg):
    """`fastgan bench` rows: a BigGAN-style generator's conditional BatchNorm + ReLU at
    (batch, 256, 16, 16), training forward+backward and eval forward."""
    C, S = 256, 16
    x = cfg.input(cfg.batch, C, S, S)
    y = torch.randint(0, CLASSES, (cfg.batch,), device=cfg.device)
    g = torch.randn_like(x)
    mods = _modules(C, 0.0, cfg.device, x.dtype, cfg.fastgan_impls())

    def saved(name):
        m = mods[name].train()

        def count():
            with fastgan.use_backend(_backend_of(name)):
                xi = x.detach().requires_grad_()
                return saved_tensor_bytes(lambda: m(xi, y), exclude=tuple(m.parameters()) + (xi,))
        return count

    shape = f"({cfg.batch},{C},{S},{S})"
    return [
        Row(f"CondBN+ReLU fwd+bwd {shape}", "op", _cases(mods, x, y, g, "train"),
            saved={k: saved(k) for k in mods if k != "torch.compile"},
            note="saved MB excludes the input, which the previous layer keeps anyway"),
        Row(f"CondBN+ReLU eval fwd {shape}", "op", _cases(mods, x, y, g, "eval")),
    ]


def main(argv: list[str] | None = None) -> int:
    return config_main(argv, __doc__, "cbn_act", CONFIGS, make_cases)


if __name__ == "__main__":
    raise SystemExit(main())
