"""`fastgan train` on several processes: torch.distributed as torchrun sets it up.

    torchrun --nproc_per_node N [--nnodes M --node_rank K --rdzv_backend c10d
             --rdzv_endpoint HOST:PORT] -m fastgan train ...

torchrun starts the processes and gives each RANK, WORLD_SIZE and LOCAL_RANK;
`Dist.from_env` joins them into one process group (gloo for CPU tensors, NCCL for CUDA,
one GPU per process: cuda:LOCAL_RANK). Without those variables, or with WORLD_SIZE=1,
training is the single-process loop and nothing here talks to anyone.

How the trainer uses the group (fastgan/train/loop.py):
- the global --batch-size is split evenly; rank r takes the r-th slice of every global
  batch (fastgan.data.Batches with rank / world_size) and the same slice of the global
  noise batch, which every rank draws from the run's seed. So the processes together
  compute exactly what one process computes on the whole batch, whatever their number,
  and a run resumes on another number of processes;
- BatchNorm statistics are merged across ranks (fastgan.convert(sync_bn=True));
- gradients are averaged by one explicit all-reduce per network per update (`average`),
  not by DistributedDataParallel. A GAN step runs D two or three times (real, fake, and
  fake again for G's update) and G's update leaves D's parameters without gradients;
  DDP's per-forward buffer broadcast then overwrites BatchNorm statistics between those
  calls (broadcast_buffers=True, pytorch issue 175024), it needs find_unused_parameters
  for the frozen network, and its reducer does not follow torch.autograd.grad with
  create_graph=True (the R1 and WGAN-GP penalties). One all-reduce after backward has
  none of these traps; it gives up DDP's overlap of communication with backward, which
  at DCGAN sizes is a few MB per update (BENCHMARKS.md, "Scale-out");
- rank 0 alone writes the run directory; metrics are averaged over ranks; a stop
  request (SIGINT / SIGTERM) on any rank stops all of them at the same step.

A process that dies ends the job: torchrun stops the others, and a peer blocked in a
collective gets an error from gloo / NCCL (connection closed), or at worst the process
group's timeout (FASTGAN_DIST_TIMEOUT seconds, default 600). The error is one line per
process (`DistributedError`), not a hang.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from fastgan.errors import UserError

TIMEOUT_ENV = "FASTGAN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600


class DistributedError(RuntimeError):
    """Another process of the job failed or stopped answering."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r}: expected an integer (set by torchrun)") from None


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return datetime.timedelta(seconds=seconds)


class Dist:
    """This process's place in the job: rank, world size, and the collectives the trainer
    needs. `Dist()` is a job of one process (every method is then local)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> "Dist":
        """Join the job torchrun started (RANK / WORLD_SIZE / LOCAL_RANK), or a job of one
        process when there is none. `device` is --device: cpu -> gloo, cuda -> NCCL on
        cuda:LOCAL_RANK."""
        world = _env_int("WORLD_SIZE")
        if world is None or world <= 1:
            return cls()
        rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK") or 0
        if rank is None:
            raise UserError("WORLD_SIZE is set but RANK is not: start several processes with "
                            "torchrun (torchrun --nproc_per_node N -m fastgan train ...)")
        cuda = device.startswith("cuda")
        if cuda:
            if local_rank >= torch.cuda.device_count():
                raise UserError(f"--device cuda: process {rank} is local rank {local_rank} but "
                                f"this machine has {torch.cuda.device_count()} CUDA device(s); "
                                "start at most one process per GPU (--nproc_per_node)")
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=_timeout(),
                                    device_id=torch.device("cuda", local_rank) if cuda else None)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    def device(self, device: str) -> str:
        """The device this process trains on: --device, with cuda meaning its own GPU."""
        if self.enabled and device.split(":")[0] == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def shard(self, global_batch: int) -> int:
        """This process's share of the global batch (UserError unless it divides evenly)."""
        if global_batch % self.world_size:
            raise UserError(f"--batch-size {global_batch}: the global batch must split evenly "
                            f"over the {self.world_size} processes (a multiple of "
                            f"{self.world_size})")
        return global_batch // self.world_size

    def mine(self, t: Tensor) -> Tensor:
        """This rank's slice (along dim 0) of a tensor every rank holds in full."""
        n = t.shape[0] // self.world_size
        return t[self.rank * n:(self.rank + 1) * n]

    # collectives ----------------------------------------------------------------------

    def average_gradients(self, module: nn.Module) -> None:
        """Every trainable parameter's gradient replaced by its mean over the processes:
        one all-reduce of all of them, flattened. A parameter without a gradient on this
        rank takes part with zeros (none does in the trainer: every rank runs the same
        graph), so that all ranks reduce buffers of one size."""
        if not self.enabled:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = _flatten_dense_tensors(grads)
        self._call(dist.all_reduce, flat)
        flat.div_(self.world_size)
        for g, new in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(new)

    def mean(self, t: Tensor) -> Tensor:
        """The mean over processes of a tensor each holds (a new tensor)."""
        if not self.enabled:
            return t
        t = t.clone()
        self._call(dist.all_reduce, t)
        return t.div_(self.world_size)

    def any(self, flag: bool, device: torch.device | str) -> bool:
        """True on every process when it is True on one (a stop request)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        self._call(dist.all_reduce, t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (they are equal already when built
        from one seed; this makes it so whatever the build did)."""
        if not self.enabled:
            return
        for t in [*module.parameters(), *module.buffers()]:
            with torch.no_grad():
                self._call(dist.broadcast, t.data, src=0)

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """fn() run on rank 0 only (creating the run directory, say), its result given to
        every rank; a UserError it raises is raised on every rank, so that all of them
        stop with the same message instead of waiting for rank 0."""
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except UserError as e:
                box[0] = ("error", str(e))
        self._call(dist.broadcast_object_list, box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise UserError(value)
        return value

    def _call(self, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except dist.DistError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise DistributedError(f"process {self.rank} of {self.world_size}: another process "
                                   f"of the job failed or stopped answering ({first})") from None

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["Dist", "DistributedError", "TIMEOUT_ENV"]
