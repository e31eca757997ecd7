"""GPU benchmark of the triton backend of bn_act against eager and torch.compile.

    python bench/bench_bn_act_triton.py            # table on stdout
    python -m pytest bench/bench_bn_act_triton.py  # the same, as (skipped-without-CUDA) tests

The DCGAN generator's BatchNorm layers at batch 128, fp32 and bf16, NCHW and
channels_last; training forward, and forward + backward. Timed with
triton.testing.do_bench (median, L2 flushed between runs). Each row also shows the
DRAM roofline of the fused kernels on this GPU's bandwidth from the bytes they move per
element (3 fwd, 5 bwd; eager moves 5 and 8, see BENCHMARKS.md).
"""

from __future__ import annotations

import pytest
import torch

import fastgan

SHAPES = [(128, 512, 4, 4), (128, 256, 8, 8), (128, 128, 16, 16), (128, 64, 32, 32)]
DTYPES = [torch.float32, torch.bfloat16]
# Bytes moved per element, in units of the element size (kernels/bn_act.py docstring).
TRAFFIC = {"fwd": {"fastgan": 3, "eager": 5}, "fwd+bwd": {"fastgan": 8, "eager": 13}}
H100_BANDWIDTH = 3.35e12  # bytes/s, H100 SXM HBM3


def _modules(C: int):
    eager = torch.nn.Sequential(torch.nn.BatchNorm2d(C), torch.nn.LeakyReLU(0.2)).cuda()
    fused = fastgan.nn.BatchNormAct2d(C, negative_slope=0.2, device="cuda")
    fused.load_state_dict(eager[0].state_dict())
    # fp32 parameters with fp32 or bf16 activations (as under autocast).
    compiled = torch.compile(torch.nn.Sequential(torch.nn.BatchNorm2d(C),
                                                 torch.nn.LeakyReLU(0.2)).cuda(), dynamic=False)
    return {"eager": eager, "torch.compile": compiled, "fastgan-triton": fused}


def _bench(module, x, g, mode: str) -> float:
    from triton.testing import do_bench

    if mode == "fwd":
        def fn():
            module(x)
    else:
        xr = x.detach().requires_grad_()

        def fn():
            module(xr).backward(g)
    fn()  # compile / autotune outside the timing
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def run(shape, dtype, channels_last: bool, mode: str) -> dict[str, float]:
    """Median ms per implementation for one configuration."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    g = torch.randn_like(x)
    out = {}
    with fastgan.use_backend("triton"):
        for name, module in _modules(shape[1]).items():
            out[name] = _bench(module, x, g, mode)
    return out


def _roofline_us(shape, dtype, mode: str, who: str) -> float:
    numel = torch.Size(shape).numel()
    size = torch.finfo(dtype).bits // 8
    return numel * size * TRAFFIC[mode][who] / H100_BANDWIDTH * 1e6


CONFIGS = [(s, dt, cl, mode) for mode in ("fwd", "fwd+bwd") for dt in DTYPES
           for cl in (False, True) for s in SHAPES]


def _id(c) -> str:
    s, dt, cl, mode = c
    return f"{mode}-{str(dt).split('.')[-1]}-{'cl' if cl else 'nchw'}-{'x'.join(map(str, s))}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("config", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_bench_bn_act_triton(config):
    pytest.importorskip("triton")
    shape, dtype, cl, mode = config
    ms = run(shape, dtype, cl, mode)
    assert all(v > 0 for v in ms.values())
    print(_row(config, ms))


def _row(config, ms: dict[str, float]) -> str:
    shape, dtype, _cl, mode = config
    roof = _roofline_us(shape, dtype, mode, "fastgan")
    cells = "  ".join(f"{name} {v * 1e3:8.1f}us" for name, v in ms.items())
    return f"{_id(config):<36} {cells}  roofline(H100) {roof:6.1f}us"


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench_bn_act_triton: needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name()}")
    for config in CONFIGS:
        print(_row(config, run(*config)))


if __name__ == "__main__":
    main()
