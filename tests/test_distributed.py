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
    os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels on CPU tensors, when forced
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


CASES = {  # name: (dtype, samples per rank, mean offset, double backward, backend)
    "even_fp64": (torch.float64, (4, 4), 0.0, False, "auto"),
    "uneven_fp32_offset": (torch.float32, (5, 2), 50.0, False, "auto"),
    "empty_rank_fp32": (torch.float32, (6, 0), 0.0, False, "auto"),
    "double_backward_fp64": (torch.float64, (3, 5), 0.0, True, "auto"),
    "uneven_fp32_reference": (torch.float32, (2, 6), 3.0, False, "reference"),
    "uneven_fp32_triton": (torch.float32, (5, 3), 3.0, False, "triton"),  # interpreted
}
C, H, W = 3, 5, 4


def _case_data(name: str):
    dtype, split, offset, double, _ = CASES[name]
    g = torch.Generator().manual_seed(list(CASES).index(name))
    n = sum(split)
    x = (torch.randn(n, C, H, W, generator=g, dtype=torch.float64) * 2 + offset).to(dtype)
    gy = torch.randn(n, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    return x, gy, split, double


def _sync_bn_worker(rank: int, world: int) -> dict:
    out = {}
    for name, (dtype, _, _, _, backend) in CASES.items():
        if backend == "triton" and not _triton_usable():
            continue
        x, gy, split, double = _case_data(name)
        lo = sum(split[:rank])
        sl = slice(lo, lo + split[rank])
        fused, _ = _reference(C, dtype)
        m = SyncBatchNormAct2d(C, negative_slope=SLOPE, dtype=dtype)
        m.load_state_dict(fused.state_dict())
        with fastgan.use_backend(backend):
            r = _run_layer(m, x[sl], gy[sl], double)
        for k in ("gw", "gb"):  # each rank holds its own share of the parameter gradients
            dist.all_reduce(r[k])
        r["slice"] = (sl.start, sl.stop)
        out[name] = r
    return out


def _helpers_worker(rank: int, world: int) -> dict:
    """fastgan.train.distributed.Dist's collectives."""
    from fastgan.errors import UserError
    from fastgan.train.distributed import Dist

    d = Dist(rank, world)
    out = {"value": d.from_main(lambda: f"made by rank {rank}")}

    def fail():
        raise UserError("--out x: exists")
    try:
        d.from_main(fail)
    except UserError as e:
        out["error"] = str(e)
    out["mean"] = d.mean(torch.tensor([float(rank), 10.0]))
    out["any"] = (d.any(rank == 1, "cpu"), d.any(False, "cpu"))
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0 + rank)  # different until broadcast
    d.broadcast_module(lin)
    lin(torch.full((1, 2), float(rank + 1))).sum().backward()
    d.average_gradients(lin)
    out["weight"], out["grad"] = lin.weight.detach().clone(), lin.weight.grad.clone()
    return out


def _compile_worker(rank: int, world: int) -> dict:
    """torch.compile(fullgraph=True) of a SyncBatchNormAct2d: traced without graph breaks
    (the all-reduce is a functional collective), same output and input gradient as eager.
    aot_eager: dynamo + AOTAutograd, what fullgraph tracing is about, without inductor's
    code generation time (inductor was checked by hand: same result, ~19 s here)."""
    torch.manual_seed(rank)
    m = SyncBatchNormAct2d(4)
    x = torch.randn(3 + rank, 4, 5, 5, requires_grad=True)
    out = {}
    for name, f in (("eager", m), ("compiled", torch.compile(m, fullgraph=True,
                                                              backend="aot_eager"))):
        y = f(x)
        (gx,) = torch.autograd.grad((y * y).sum(), x)
        out[name] = (y.detach(), gx)
    return out


def _worker(rank: int, world: int) -> dict:
    """Everything the 2-process tests below check, in one spawn (starting processes that
    import torch is most of the time these tests take)."""
    return {"sync_bn": _sync_bn_worker(rank, world), "convert": _convert_worker(rank, world),
            "helpers": _helpers_worker(rank, world), "compile": _compile_worker(rank, world)}


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    return spawn(_worker, tmp_path_factory.mktemp("workers"))


@pytest.fixture(scope="module")
def sync_bn_results(worker_results):
    return [r["sync_bn"] for r in worker_results]


def _triton_usable() -> bool:
    import importlib.util
    return (fastgan.backend_status()["triton"][0]
            and importlib.util.find_spec("fastgan.kernels") is not None)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("oracle", ["BatchNormAct2d", "BatchNorm2d+LeakyReLU"])
def test_sync_bn_act_matches_whole_batch(sync_bn_results, name, oracle):
    if name not in sync_bn_results[0]:
        pytest.skip("the triton backend is not usable here (triton or the installed "
                    "fastgan.kernels package is missing)")
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
# fastgan.convert(sync_bn=True): both conversion styles, and models holding nn.SyncBatchNorm

class Explicit(nn.Module):
    """Layers called from forward(): converted by tracing (fastgan.nn.traced)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        x = torch.nn.functional.leaky_relu(self.bn1(self.conv1(x)), 0.2)
        return torch.relu(self.bn2(self.conv2(x)))


def _plain_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                        nn.LeakyReLU(0.2), nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False),
                        nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1),
                        nn.BatchNorm2d(2))
    explicit = Explicit()
    for m in (seq, explicit):
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                with torch.no_grad():
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-0.5, 0.5)
    import copy
    return {"sequential": seq, "explicit": explicit,
            "torch_syncbn": nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(seq))}


def _model_data(n: int = 6):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, 6, 6, generator=g) + 1.0, torch.randn(n, 4, 12, 12, generator=g)


def _run_model(m: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> dict:
    m.train()
    x = x.detach().requires_grad_(True)
    m(x.detach())
    y = m(x)
    gy = gy[:, :y.shape[1]]
    params = list(m.parameters())
    grads = torch.autograd.grad((y * gy).sum(), [x, *params])
    bufs = {k: v.clone() for k, v in m.state_dict().items()}
    return {"y": y.detach(), "gx": grads[0], "grads": list(grads[1:]), "state": bufs}


def _count_all_reduces(fn) -> list[int]:
    """numel of every all-reduce dispatched while fn() runs (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops._c10d_functional.all_reduce.default:
                seen.append(args[0].numel())
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return seen


def _convert_worker(rank: int, world: int) -> dict:
    out = {}
    x, gy = _model_data()
    sl = slice(rank * 3, rank * 3 + 3)
    for name, model in _plain_models().items():
        m, rep = fastgan.convert(model, sync_bn=True, report=True)
        r = _run_model(m, x[sl], gy[sl])
        for g in r["grads"]:
            dist.all_reduce(g)
        r["fused"], r["synchronized"] = len(rep.fused), len(rep.synchronized)
        out[name] = r
    # one all-reduce of 2C + 1 values forward and one backward, per layer
    layer = SyncBatchNormAct2d(5)
    xs = torch.randn(2, 5, 3, 3, requires_grad=True)
    fwd = _count_all_reduces(lambda: out.__setitem__("y", layer(xs)))
    bwd = _count_all_reduces(lambda: out["y"].sum().backward())
    out["counts"] = (fwd, bwd)
    # eval mode: no collective (rank 1 alone would wait forever otherwise)
    layer.eval()
    out["eval_counts"] = _count_all_reduces(lambda: layer(xs))
    return out


@pytest.fixture(scope="module")
def convert_results(worker_results):
    return [r["convert"] for r in worker_results]


@pytest.mark.parametrize("name", ["sequential", "explicit", "torch_syncbn"])
def test_convert_sync_bn_matches_whole_batch(convert_results, name):
    x, gy = _model_data()
    ref = _run_model(_plain_models()[name], x, gy)  # eager, one process, all 6 samples
    for rank, res in enumerate(convert_results):
        r = res[name]
        n_bn = 2 if name == "explicit" else 3
        assert r["fused"] == n_bn and r["synchronized"] == n_bn
        sl = slice(rank * 3, rank * 3 + 3)
        torch.testing.assert_close(r["y"], ref["y"][sl], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r["gx"], ref["gx"][sl], rtol=1e-4, atol=1e-4)
        for g, g_ref in zip(r["grads"], ref["grads"]):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)
        assert r["state"].keys() == ref["state"].keys()
        for k, v in ref["state"].items():
            torch.testing.assert_close(r["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_one_collective_each_way(convert_results):
    for res in convert_results:
        assert res["counts"] == ([2 * 5 + 1], [2 * 5 + 1])
        assert res["eval_counts"] == []


def test_convert_sync_bn_structure():
    """Without torch.distributed: every 2-D BatchNorm becomes SyncBatchNormAct2d in place,
    state_dict unchanged, and it computes what the eager model does."""
    for name, model in _plain_models().items():
        m, rep = fastgan.convert(model, sync_bn=True, report=True)
        bns = [k for k in m.modules() if isinstance(k, nn.modules.batchnorm._BatchNorm)]
        assert bns and all(type(k) is SyncBatchNormAct2d for k in bns), name
        assert len(rep.synchronized) == len(bns)
        assert m.state_dict().keys() == model.state_dict().keys()
        x, gy = _model_data()
        a, b = _run_model(m, x, gy), _run_model(model, x, gy)
        torch.testing.assert_close(a["y"], b["y"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a["gx"], b["gx"], rtol=1e-4, atol=1e-4)
    one_d = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    _, rep = fastgan.convert(one_d, sync_bn=True, report=True)
    assert not rep.synchronized and "BatchNorm1d is not a 2-D BatchNorm" in rep.skipped[0]


def test_sync_bn_act_without_a_group_is_batch_norm_act():
    fused, _ = _reference(C, torch.float64)
    m = SyncBatchNormAct2d(C, negative_slope=SLOPE, dtype=torch.float64)
    m.load_state_dict(fused.state_dict())
    x, gy, _, _ = _case_data("even_fp64")
    a, b = _run_layer(m, x, gy, True), _run_layer(fused, x, gy, True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-12)
    assert isinstance(m, nn.SyncBatchNorm)
    assert m.state_dict().keys() == nn.SyncBatchNorm(C).state_dict().keys()
    with pytest.raises(ValueError, match="expected 4-D input"):
        m(torch.zeros(2, C))


def test_dist_helpers(worker_results):
    for r in (w["helpers"] for w in worker_results):
        assert r["value"] == "made by rank 0"
        assert r["error"] == "--out x: exists"  # rank 0's error, raised on every rank
        assert r["mean"].tolist() == [0.5, 10.0]
        assert r["any"] == (True, False)
        assert r["weight"].tolist() == [[1.0, 1.0]]  # rank 0's
        assert r["grad"].tolist() == [[1.5, 1.5]]  # the mean of 1 and 2


def test_compile_fullgraph(worker_results):
    for r in (w["compile"] for w in worker_results):
        for a, b in zip(r["compiled"], r["eager"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_batch_must_split_evenly():
    from fastgan.errors import UserError
    from fastgan.train.distributed import Dist

    assert Dist(1, 4).shard(64) == 16
    with pytest.raises(UserError, match="--batch-size 10: the global batch must split evenly "
                                        "over the 4 processes"):
        Dist(1, 4).shard(10)


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


def test_torchrun_conditional_matches_one(tmp_path):
    """A class-conditional ResNet (conditional BatchNorm statistics merged across the two
    processes, labels sharded with their images, fake classes drawn as the noise is)
    trains as one process does."""
    import numpy as np
    g = np.random.default_rng(0)
    path = tmp_path / "labelled.npz"
    np.savez(path, images=g.integers(0, 256, (64, 16, 16), dtype=np.uint8),
             labels=np.arange(64) % 3)
    flags = ["--arch", "resnet", "--conditional", *TRAIN_FLAGS]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    from fastgan.cli import main
    assert main(["train", "--data", str(path), "--out", one, "--steps", "3", *flags]) == 0
    cmd = torchrun("--data", str(path), "--out", two, "--steps", "3", *flags,
                   extra=("--master_port", str(_free_port())))
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    _assert_same_losses(_metrics(two), _metrics(one))
