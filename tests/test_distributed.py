"""Scale-out on torch.distributed, on this machine (gloo over localhost, each test bounded
in time): SyncBatchNormAct2d and fastgan.convert(sync_bn=True) on 2 processes against one
process on the concatenated batch; `fastgan train` under torchrun (1 vs 2 processes,
2 "nodes", a killed rank)."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastgan
from fastgan.nn import SyncBatchNormAct2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is missing")


# ---------------------------------------------------------------------------------------
# Running a function on 2 spawned processes

def _init(rank: int, world: int, store_path: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))


def _entry(rank: int, fn, world: int, store_path: str, out_dir: str) -> None:
    _init(rank, world, store_path)
    try:
        result = fn(rank, world)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(fn, tmp_path, world: int = 2, timeout: float = 120.0) -> list:
    """fn(rank, world) on `world` processes in a gloo group; their results, by rank. A
    worker's exception fails the test with its traceback; past `timeout`, all are killed."""
    ctx = mp.start_processes(_entry, args=(fn, world, str(tmp_path / "store"), str(tmp_path)),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers still running after {timeout} s")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


# ---------------------------------------------------------------------------------------
# SyncBatchNormAct2d against one process on the whole batch

SLOPE = 0.2


def _reference(C: int, dtype) -> tuple[nn.Module, nn.Module]:
    """(fastgan BatchNormAct2d, nn.BatchNorm2d + LeakyReLU) with the same parameters."""
    g = torch.Generator().manual_seed(1)
    fused = fastgan.nn.BatchNormAct2d(C, negative_slope=SLOPE, dtype=dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.rand(C, generator=g, dtype=dtype) + 0.5)
        fused.bias.copy_(torch.randn(C, generator=g, dtype=dtype))
    eager = nn.Sequential(nn.BatchNorm2d(C, dtype=dtype), nn.LeakyReLU(SLOPE))
    eager[0].load_state_dict(fused.state_dict())
    return fused, eager


def _run_layer(m: nn.Module, x: torch.Tensor, gy: torch.Tensor, double: bool):
    """Output, input and parameter gradients of sum(m(x) * gy) (with `double`: of the
    squared norm of that loss's input gradient, a gradient penalty), after 2 forwards."""
    x = x.detach().requires_grad_(True)
    m(x.detach())  # a first step: running statistics move twice
    y = m(x)
    loss = (y * gy).sum()
    if double:
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        loss = gx.square().sum()
    params = [p for p in m.parameters()]
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)  # (double: bias unused)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [x, *params])]
    bn = m if isinstance(m, nn.modules.batchnorm._BatchNorm) else m[0]
    return {"y": y.detach(), "gx": grads[0], "gw": grads[1], "gb": grads[2],
            "rm": bn.running_mean.clone(), "rv": bn.running_var.clone(),
            "nbt": bn.num_batches_tracked.clone()}


CASES = {  # name: (dtype, samples per rank, mean offset, double backward)
    "even_fp64": (torch.float64, (4, 4), 0.0, False),
    "uneven_fp32_offset": (torch.float32, (5, 2), 50.0, False),
    "empty_rank_fp32": (torch.float32, (6, 0), 0.0, False),
    "double_backward_fp64": (torch.float64, (3, 5), 0.0, True),
}
C, H, W = 3, 5, 4


def _case_data(name: str):
    dtype, split, offset, double = CASES[name]
    g = torch.Generator().manual_seed(list(CASES).index(name))
    n = sum(split)
    x = (torch.randn(n, C, H, W, generator=g, dtype=torch.float64) * 2 + offset).to(dtype)
    gy = torch.randn(n, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    return x, gy, split, double


def _sync_bn_worker(rank: int, world: int) -> dict:
    out = {}
    for name, (dtype, _, _, _) in CASES.items():
        x, gy, split, double = _case_data(name)
        lo = sum(split[:rank])
        sl = slice(lo, lo + split[rank])
        fused, _ = _reference(C, dtype)
        m = SyncBatchNormAct2d(C, negative_slope=SLOPE, dtype=dtype)
        m.load_state_dict(fused.state_dict())
        r = _run_layer(m, x[sl], gy[sl], double)
        for k in ("gw", "gb"):  # each rank holds its own share of the parameter gradients
            dist.all_reduce(r[k])
        r["slice"] = (sl.start, sl.stop)
        out[name] = r
    return out


@pytest.fixture(scope="module")
def sync_bn_results(tmp_path_factory):
    return spawn(_sync_bn_worker, tmp_path_factory.mktemp("syncbn"))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("oracle", ["BatchNormAct2d", "BatchNorm2d+LeakyReLU"])
def test_sync_bn_act_matches_whole_batch(sync_bn_results, name, oracle):
    dtype = CASES[name][0]
    x, gy, split, double = _case_data(name)
    fused, eager = _reference(C, dtype)
    ref = _run_layer(fused if oracle == "BatchNormAct2d" else eager, x, gy, double)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for rank, res in enumerate(sync_bn_results):
        r = res[name]
        sl = slice(*r["slice"])
        for k in ("y", "gx"):
            torch.testing.assert_close(r[k], ref[k][sl], rtol=tol, atol=tol,
                                       msg=lambda m: f"rank {rank} {k}: {m}")
        for k in ("gw", "gb", "rm", "rv", "nbt"):
            torch.testing.assert_close(r[k], ref[k], rtol=tol, atol=tol,
                                       msg=lambda m: f"rank {rank} {k}: {m}")
    for k in ("rm", "rv"):  # identical on every rank, bit for bit
        assert torch.equal(sync_bn_results[0][name][k], sync_bn_results[1][name][k])
