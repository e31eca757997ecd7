"""Helpers shared by the test files (imported as a plain module: pytest puts tests/ on
sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from typing import Callable

import pytest
import torch

_RESULTS_MARKER = "@@RESULTS@@"


def randomise_bn(bn: torch.nn.BatchNorm2d) -> None:
    """Non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        if bn.track_running_stats:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)


def assert_close_scaled(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """max |a - b| <= tol * max(1, max |b|), compared in fp64 on the CPU."""
    a, b = a.double().cpu(), b.double().cpu()
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= tol * scale, f"max error {err:.3e} > {tol:.1e} * {scale:.3g}"


def round_bf16_like_the_gpu() -> None:
    """Triton 3.8's interpreter truncates fp32 -> bf16 casts; GPUs round to nearest even
    (cvt.rn.bf16.f32). Make the interpreter round like the hardware, so that bf16 results
    are held to the same tolerance as on a GPU."""
    import numpy as np
    from triton import language as tl
    from triton.runtime import interpreter

    cast = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
            data = bits.view(torch.int16).numpy().view(np.uint16)
            return interpreter.TensorHandle(data, dst_type.scalar)
        return cast(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_impl


# ---------------------------------------------------------------------------
# Triton interpreter workers. A test file with interpreter checks runs itself as a
# subprocess (`python <file> --worker`) under TRITON_INTERPRET=1 with the triton backend
# forced; the worker runs every check and prints {check name: list of failures} as JSON,
# which the file's module-scoped fixture reads and its tests assert on, one per check.

def interpreter_worker() -> tuple[dict[str, list[str]], Callable[..., None]]:
    """Worker side: (results, run), where run(name, fn, *args) records fn(*args)'s
    failures (or its traceback) under `name`. Print them with report_worker_results."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    round_bf16_like_the_gpu()
    torch.set_num_threads(1)
    results: dict[str, list[str]] = {}

    def run(name: str, fn: Callable[..., list[str]], *args) -> None:
        try:
            results[name] = fn(*args)
        except Exception:
            results[name] = ["raised:\n" + traceback.format_exc()[-3000:]]

    return results, run


def report_worker_results(results: dict[str, list[str]]) -> None:
    print(_RESULTS_MARKER + json.dumps(results))


def run_interpreter_worker(test_file: str) -> dict[str, list[str]]:
    """Main-process side: runs `test_file --worker` under the interpreter, returns its
    results (fails the calling test with the worker's output if it did not finish)."""
    pytest.importorskip("triton")
    import fastgan

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastgan.__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1", FASTGAN_BACKEND="triton")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, os.path.abspath(test_file), "--worker"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or _RESULTS_MARKER not in proc.stdout:
        pytest.fail(f"interpreter worker failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.split(_RESULTS_MARKER, 1)[1])


def interpreter_tests(test_file: str, ids: list[str]):
    """A file's main-process side of its interpreter checks, to assign at module level:
    `interp_results, test_interpreter = interpreter_tests(__file__, IDS)`: the module-scoped
    fixture that runs the worker once, and one test per check id asserting no failures."""

    @pytest.fixture(scope="module")
    def interp_results():
        return run_interpreter_worker(test_file)

    @pytest.mark.parametrize("name", ids)
    def test_interpreter(interp_results, name):
        fails = interp_results.get(name, ["not run"])
        assert not fails, "\n".join(fails)

    return interp_results, test_interpreter
