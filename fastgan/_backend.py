"""Backend choice: reference, cpu, triton, cuda (see docs/ARCHITECTURE.md, "Backends").

`auto` (the default) picks the fastest backend that has a kernel for the op on the
tensor's device. FASTGAN_BACKEND or `use_backend(name)` force one; forcing an unknown
or unusable backend, or one that has no kernel for the op or device, is an error,
never a silent fallback.

Under torch.compile the choice is made when the graph is traced.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from typing import Iterator

import torch

from fastgan import _ext

BACKENDS = ("reference", "cpu", "triton", "cuda")
_ENV = "FASTGAN_BACKEND"
_stack: list[str] = []  # use_backend() nesting; a plain list so torch.compile can read it


def constant_result(fn):
    """torch.compiler.assume_constant_result, without importing torch._dynamo (and with
    it triton, ~1.5 s) when fastgan is imported: that function only sets the marker below,
    which dynamo reads when it traces. Once dynamo is loaded, the public call is used."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


# os.environ.get costs ~0.4 us (it encodes the key and decodes the value on every call);
# select() and compiled_devices() run once per op call and read the environment each
# time, which at GAN-loss sizes would be a visible share of the op. They read the
# encoded mapping behind os.environ (kept in step by os.environ's setters, as
# monkeypatch.setenv uses) with keys encoded once, and key their caches on the raw
# values: decoding and validating is left to a cache miss.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENCODE = getattr(os.environ, "encodekey", None)
_DECODE = getattr(os.environ, "decodevalue", None)
_RAW_ENV = _ENV_DATA is not None and _ENCODE is not None and _DECODE is not None


def _env_key(name: str):
    return _ENCODE(name) if _RAW_ENV else name


# _raw_env(_env_key(name)): the variable's value, undecoded (a bound C method: no Python
# frame per read)
_raw_env = _ENV_DATA.get if _RAW_ENV else os.environ.get
_BACKEND_KEY = _env_key(_ENV)
_INTERPRET_KEY = _env_key("TRITON_INTERPRET")


def getenv(name: str) -> str | None:
    v = _raw_env(_env_key(name))
    return _DECODE(v) if _RAW_ENV and v is not None else v


def _check_name(name: str, source: str) -> str:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(
            f"{source}: unknown backend {name!r}; expected one of 'auto', "
            + ", ".join(repr(b) for b in BACKENDS))
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside a `with` block (``"auto"`` restores the default choice)."""
    _check_name(name, "use_backend(name)")
    reason = None if name == "auto" else _unusable_reason(name)
    if reason is not None:
        raise RuntimeError(f"use_backend: backend {name!r} is not usable here: {reason}")
    _stack.append(name)
    try:
        yield
    finally:
        _stack.pop()


def _request() -> object:
    """What requested_backend() is made of, as a cache key: the innermost use_backend()
    name, else $FASTGAN_BACKEND's raw value (None when unset), neither validated."""
    return _stack[-1] if _stack else _raw_env(_BACKEND_KEY)


@constant_result
def requested_backend() -> str:
    """The backend asked for: innermost use_backend(), else $FASTGAN_BACKEND, else auto."""
    if _stack:
        return _stack[-1]
    env = getenv(_ENV)
    if not env:
        return "auto"
    return _check_name(env.strip() or "auto", f"${_ENV}")


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_reason() -> str | None:
    if not triton_installed():
        return "triton is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run Triton kernels on CPU tensors)"
    return None


def backend_status() -> dict[str, tuple[bool, str | None]]:
    """Each backend -> (usable here, why not). Not on the hot path: select() caches."""
    ext_reason = None if _ext.ext_loaded() else f"fastgan._C is not loaded ({_ext.ext_error()})"
    cuda_reason = ext_reason
    if cuda_reason is None and not _ext.build_info().get("cuda"):
        cuda_reason = "fastgan._C was built without CUDA kernels (rebuild with FASTGAN_CUDA=1)"
    if cuda_reason is None and not torch.cuda.is_available():
        cuda_reason = "no CUDA device"
    if cuda_reason is None:
        ok, how = _ext.cuda_arch_support(_ext.build_info()["cuda_archs"],
                                         torch.cuda.get_device_capability())
        cuda_reason = None if ok else how
    status = {
        "reference": None,
        "cpu": ext_reason,
        "triton": _triton_reason(),
        "cuda": cuda_reason,
    }
    return {k: (v is None, v) for k, v in status.items()}


_reasons: dict[tuple, str | None] = {}


def _unusable_reason(name: str) -> str | None:
    """backend_status()[name][1], cached like select() (use_backend is on hot paths:
    a training loop may enter it at every step; backend_status() costs ~4 us)."""
    key = (name, _raw_env(_INTERPRET_KEY))
    if key not in _reasons:
        _reasons[key] = backend_status()[name][1]
    return _reasons[key]


def available_backends() -> list[str]:
    """Backends usable on this machine, in the order auto prefers them."""
    st = backend_status()
    return [b for b in ("cuda", "triton", "cpu", "reference") if st[b][0]]


def _runs_on(backend: str, device: torch.device) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        return device.type == "cpu"
    if backend == "cuda":
        return device.type == "cuda"
    # triton: CUDA tensors, or CPU tensors under the interpreter
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


# select() results. What select() reads that can change while the process runs is in
# the key: the requested backend, and TRITON_INTERPRET where the op has a Triton kernel
# (without one the choice does not depend on it); the rest (whether fastgan._C loaded
# and with what, CUDA present, triton installed) is fixed once torch is up. Uncached, a
# call costs ~5 us, as much as a small fused op itself.
_selected: dict[tuple, str] = {}


@constant_result
def select(op: str, device: torch.device, kernels: tuple[str, ...]) -> str:
    """The backend to run `op` on `device`; `kernels` lists the backends that have a kernel for it."""
    interpret = _raw_env(_INTERPRET_KEY) if "triton" in kernels else None
    key = (op, device, kernels, _request(), interpret)
    backend = _selected.get(key)
    if backend is None:
        backend = _selected[key] = _select(op, device, kernels, requested_backend())
    return backend


# compiled_devices() results, keyed as select()'s, less the device and TRITON_INTERPRET:
# select() picks a compiled backend (auto's first choice, or cpu / cuda forced) whatever
# the interpreter setting.
_compiled: dict[tuple, int] = {}
_DEVICE_BITS = (("cpu", 1), ("cuda", 2))


def compiled_devices(op: str, kernels: tuple[str, ...]) -> int:
    """The device types on which select() now runs `op` on fastgan._C's kernels (the cpu
    and cuda backends), as a mask: 1 the CPU, 2 CUDA; a device where select() picks
    another backend, or raises, is left out. For the eager fast paths in C++
    (fastgan._C.gan_loss_eager), which so apply the choice made here without making one;
    ~0.35 us a call, half of reading a tensor's device and calling select()."""
    key = (op, kernels, _stack[-1] if _stack else _raw_env(_BACKEND_KEY))  # _request(), inlined
    mask = _compiled.get(key)
    if mask is None:
        mask = 0
        for device, bit in _DEVICE_BITS:
            try:
                if select(op, torch.device(device), kernels) == device:
                    mask |= bit
            except (RuntimeError, ValueError):  # a forced backend that is unknown or cannot
                pass  # run there: the Python path raises that, after its argument checks
        _compiled[key] = mask
    return mask


def _select(op: str, device: torch.device, kernels: tuple[str, ...], name: str) -> str:
    st = backend_status()
    if name == "auto":
        order = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpu", "reference")
        for b in order:
            if (b == "reference" or b in kernels) and st[b][0] and _runs_on(b, device):
                return b
        return "reference"
    if not st[name][0]:
        raise RuntimeError(f"fastgan.{op}: backend {name!r} was forced but is not usable: {st[name][1]}")
    if name != "reference" and name not in kernels:
        raise RuntimeError(f"fastgan.{op}: backend {name!r} has no kernel for this op yet "
                           f"(kernels: {', '.join(kernels) or 'none'}; 'reference' always works)")
    if not _runs_on(name, device):
        raise RuntimeError(f"fastgan.{op}: backend {name!r} cannot run on {device.type} tensors")
    return name
