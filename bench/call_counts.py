"""What one training step calls in fastgan's Python code: the number of calls per file and
function (a profiler, not a timer), and the fastgan files on the Python stack each time
the step enters the compiled BatchNorm+activation op. For checking that a decision is
made once per call and that the path to a kernel does not double back
(BENCHMARKS.md, "Issue 22").

    python -m fastgan.bench.call_counts [--batch-size 16] [--impl fastgan]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

import fastgan
from fastgan.data import load_dataset
from fastgan.runs.config import TrainConfig
from fastgan.train.loop import Trainer

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastgan.__file__)))
_ENTRIES = ("bn_act_eager",)  # fastgan._C's way into the op (csrc/fastgan.cpp)


def _ours(filename: str) -> str | None:
    """The repository-relative path of one of fastgan's files, else None."""
    path = os.path.abspath(filename)
    if (filename.startswith("<") or path == os.path.abspath(__file__)
            or not path.startswith(_ROOT + os.sep) or f"{os.sep}site-packages{os.sep}" in path):
        return None
    return os.path.relpath(path, _ROOT)


def profile_step(trainer: Trainer) -> tuple[collections.Counter, list[list[str]]]:
    """(calls per (file, function), the fastgan files on the stack at each op entry) of one
    training step, after a warm-up step."""
    trainer.train_step()
    calls: collections.Counter = collections.Counter()
    stacks: list[list[str]] = []

    def prof(frame, event, arg):
        if event == "call":
            f = _ours(frame.f_code.co_filename)
            if f is not None:
                calls[(f, frame.f_code.co_name)] += 1
        elif event == "c_call" and getattr(arg, "__name__", "") in _ENTRIES:
            files, fr = [], frame
            while fr is not None:
                f = _ours(fr.f_code.co_filename)
                if f is not None and (not files or files[-1] != f):
                    files.append(f)
                fr = fr.f_back
            stacks.append(files[::-1])

    sys.setprofile(prof)
    try:
        trainer.train_step()
    finally:
        sys.setprofile(None)
    return calls, stacks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--impl", default="fastgan")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(steps=2, batch_size=args.batch_size, device="cpu", ema=0,
                          impl=args.impl, out=os.path.join(out, "run"))
        calls, stacks = profile_step(Trainer(cfg, load_dataset(cfg.data, cfg.image_size)))
    per_file: collections.Counter = collections.Counter()
    for (f, _), n in calls.items():
        per_file[f] += n
    print(f"{sum(calls.values())} calls into {len(per_file)} fastgan files in one step")
    for (f, fn), n in sorted(calls.items()):
        print(f"  {n:5d}  {f}: {fn}")
    if stacks:
        longest = max(stacks, key=len)
        twice = sum(len(s) - len(set(s)) for s in stacks)
        print(f"{len(stacks)} entries into the compiled op; deepest: {len(longest)} files "
              f"({' -> '.join(longest)}); files entered twice on one stack: {twice}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
