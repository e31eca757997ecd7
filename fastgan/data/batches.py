"""The trainer's batch stream: endless shuffled batches of a uint8 image tensor, with a
state small enough to store in a checkpoint and restore exactly.

Epoch e's order is a permutation drawn from a generator seeded with (seed, e), so it depends
on nothing else (not the global RNG, not how many batches were drawn before a restart):
resuming needs only (seed, epoch, index). With several ranks, each epoch's permutation is
cut into steps of world_size * batch_size images and rank r takes the r-th batch of each
step; the remainder is dropped so that every rank runs the same number of full batches.
"""

from __future__ import annotations

import torch

from fastgan.errors import UserError


class Batches:
    """Endless shuffled batches of `images` (uint8 (N, C, S, S), on any device).

        batches = Batches(images, batch_size=128, seed=0)
        x = to_float(batches.next(), "cuda")           # (128, C, S, S) in [-1, 1]
        x, y = batches.next_labelled()                  # with labels=: the images' labels too
        state = batches.state_dict()                    # {"epoch", "index", "seed"}
        batches.load_state_dict(state)                  # continues exactly from there
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, labels: torch.Tensor | None = None) -> None:
        n = images.shape[0]
        if labels is not None and labels.shape != (n,):
            raise ValueError(f"labels: expected one per image, shape ({n},), got "
                             f"{tuple(labels.shape)}")
        self.labels = labels
        if not 1 <= batch_size <= n // world_size:
            per_rank = f" over {world_size} ranks" if world_size > 1 else ""
            raise UserError(f"--batch-size: got {batch_size}, expected 1 to {n // world_size} "
                            f"(the data has {n} images{per_rank})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = n // (batch_size * world_size)
        self.epoch, self.index = 0, 0
        self._order_epoch, self._order = None, None

    def _epoch_order(self) -> torch.Tensor:
        """This rank's image indices for the current epoch, (batches_per_epoch, batch_size)."""
        if self._order_epoch != self.epoch:
            # (seed, epoch) -> one seed that neighbouring seeds do not share within a
            # million epochs (the CPU generator keeps only 32 bits of its seed)
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**32)
            perm = torch.randperm(self.images.shape[0], generator=g)
            used = self.batches_per_epoch * self.world_size * self.batch_size
            steps = perm[:used].view(self.batches_per_epoch, self.world_size, self.batch_size)
            self._order = steps[:, self.rank].contiguous().to(self.images.device)
            self._order_epoch = self.epoch
        return self._order

    def _next_indices(self) -> torch.Tensor:
        idx = self._epoch_order()[self.index]
        self.index += 1
        if self.index == self.batches_per_epoch:  # so the state always names the next batch
            self.epoch, self.index = self.epoch + 1, 0
        return idx

    def next(self) -> torch.Tensor:
        """The next batch, uint8 (batch_size, C, S, S)."""
        return self.images.index_select(0, self._next_indices())

    def next_labelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch and its labels, int64 (batch_size,) (a stream made with labels)."""
        if self.labels is None:
            raise ValueError("next_labelled: this stream was made without labels")
        idx = self._next_indices()
        return self.images.index_select(0, idx), self.labels.index_select(0, idx.to(
            self.labels.device))

    __next__ = next

    def __iter__(self) -> Batches:
        return self

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: the next batch is batch `index` of epoch `epoch`."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a state_dict() (of a stream over the same data and batch size)."""
        if not 0 <= state["index"] < self.batches_per_epoch:
            raise UserError(f"--batch-size: the saved data position (batch {state['index']} of "
                            f"epoch {state['epoch']}) is past the {self.batches_per_epoch} batches "
                            "an epoch has now; resume with the batch size and data of the saved run")
        self.epoch, self.index, self.seed = int(state["epoch"]), int(state["index"]), int(state["seed"])
        self._order_epoch = None  # the seed may differ: recompute the order


def to_float(batch: torch.Tensor, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [0, 255] -> dtype [-1, 1] (x / 127.5 - 1) on device.

    Moved as uint8 (a quarter of float32's bytes over PCIe) and converted there, in float32
    so that a bfloat16/half result is one rounding of the exact value.
    """
    x = batch.to(device).float().div_(127.5).sub_(1.0)
    return x.to(dtype)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 [0, 255] (round((x + 1) * 127.5), clamped): what a saved PNG holds,
    and the inverse of to_float on the 256 levels."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


__all__ = ["Batches", "to_float", "to_uint8"]
