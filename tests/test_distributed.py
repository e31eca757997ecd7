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


# ---------------------------------------------------------------------------------------
# fastgan train under torchrun

TRAIN_FLAGS = ["--image-size", "16", "--ngf", "8", "--ndf", "8", "--nz", "16",
               "--batch-size", "8", "--log-every", "1", "--sample-every", "0",
               "--ckpt-every", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory) -> str:
    """64 grey 16x16 images: random blobs (training data that loads in no time)."""
    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(64, 16, 16, generator=g) * 255).to(torch.uint8).numpy()
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    import numpy as np
    np.savez(path, images=imgs)
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def torchrun(*args: str, nproc: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    """The command line: torchrun ... -m fastgan train ARGS."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            *extra, "-m", "fastgan", "train", *args]


def _metrics(run_dir: str) -> list[dict]:
    import json
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _one_process(data: str, out: str, steps: int, resume: bool = False) -> None:
    from fastgan.cli import main
    args = ["--resume", out, "--steps", str(steps)] if resume else \
        ["--data", data, "--out", out, "--steps", str(steps), *TRAIN_FLAGS]
    assert main(["train", *args]) == 0


LOSS_KEYS = ("d_loss", "g_loss", "d_real", "d_fake")


def _assert_same_losses(a: list[dict], b: list[dict], rtol: float = 1e-4) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in LOSS_KEYS:
            assert ra[k] == pytest.approx(rb[k], rel=rtol, abs=1e-6), (ra["step"], k, ra, rb)


def test_torchrun_two_processes_match_one(tmp_path, npz_data):
    """2 processes x 4 samples = 1 process x 8, step for step (synchronized BatchNorm,
    averaged gradients, sharded data and noise); only rank 0 writes; the 2-process
    checkpoint resumes in 1 process and continues as the 1-process run does."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _one_process(npz_data, one, steps=5)
    cmd = torchrun("--data", npz_data, "--out", two, "--steps", "3", *TRAIN_FLAGS,
                   extra=("--master_port", str(_free_port())))
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = _metrics(one)
    _assert_same_losses(_metrics(two), ref[:3])
    assert sorted(os.listdir(two)) == ["checkpoints", "config.json", "losses.png",
                                       "metrics.jsonl", "samples"]
    assert os.listdir(os.path.join(two, "checkpoints")) == ["last.pt"]
    # another world size: the 2-process run's checkpoint, continued in one process
    _one_process(npz_data, two, steps=5, resume=True)
    _assert_same_losses(_metrics(two), ref)


def test_torchrun_batch_must_split_evenly(tmp_path, npz_data):
    flags = [f if f != "8" or i != TRAIN_FLAGS.index("--batch-size") + 1 else "7"
             for i, f in enumerate(TRAIN_FLAGS)]
    cmd = torchrun("--data", npz_data, "--out", str(tmp_path / "r"), "--steps", "1", *flags,
                   extra=("--master_port", str(_free_port())))
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "--batch-size 7: the global batch must split evenly over the 2 processes" in p.stderr


def test_two_nodes_on_localhost(tmp_path, npz_data):
    """Two torchrun invocations, one process each, meeting through the c10d rendezvous."""
    port = _free_port()
    out = str(tmp_path / "r")
    procs = []
    for node in (0, 1):
        cmd = torchrun("--data", npz_data, "--out", out, "--steps", "2", *TRAIN_FLAGS, nproc=1,
                       extra=("--nnodes", "2", "--node_rank", str(node), "--rdzv_backend",
                              "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id",
                              "fastgan-test", "--rdzv_conf", f"is_host={int(node == 0)}"))
        procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert [r["step"] for r in _metrics(out)] == [1, 2]


def _worker_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if b"RANK" in env:
            found[int(env[b"RANK"])] = int(pid)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_rank_ends_the_job(tmp_path, npz_data):
    """SIGKILL one of 2 training processes: the job ends with an error, soon, no hang."""
    import signal

    out = str(tmp_path / "r")
    cmd = torchrun("--data", npz_data, "--out", out, "--steps", "100000", *TRAIN_FLAGS,
                   extra=("--master_port", str(_free_port())))
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 90
        metrics = os.path.join(out, "metrics.jsonl")
        while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        workers = _worker_pids(p.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], signal.SIGKILL)
        t0 = time.monotonic()
        _, err = p.communicate(timeout=60)
        assert time.monotonic() - t0 < 60
    finally:
        p.kill()
    assert p.returncode != 0
    assert "exitcode  : -9" in err or "Signal 9" in err, err[-3000:]
