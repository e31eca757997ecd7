"""Checkpoints and other run files, written atomically; checkpoint loading with clear errors.

A file is written to a temporary name in its own directory, flushed to disk, then renamed
over the target (rename is atomic on POSIX and Windows): a process killed at any moment
leaves either the old complete file or the new complete file, never a torn one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Callable

import torch

from fastgan.errors import UserError

FORMAT = "fastgan-train/1"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call `write(f)` on a temporary file beside `path`, fsync it, rename it to `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    write_atomic(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def write_json(obj: Any, path: str) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load_checkpoint(path: str, what: str = "CKPT") -> dict[str, Any]:
    """A checkpoint written by `fastgan train`, on the CPU; UserError for anything else."""
    if not os.path.exists(path):
        raise UserError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        last = os.path.join(path, "checkpoints", "last.pt")
        if not os.path.isfile(last):
            raise UserError(f"{what} {path}: a directory without checkpoints/last.pt "
                            "(expected a checkpoint file or a run directory)")
        path = last
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what} {path}: not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{what} {path}: not a fastgan training checkpoint "
                        f"(format {got!r}, expected {FORMAT!r})")
    return state


__all__ = ["write_atomic", "save_checkpoint", "write_json", "load_checkpoint", "FORMAT"]
