"""Loads the compiled extension fastgan._C, once, without ever breaking `import fastgan`.

A missing or broken build warns once (saying why) and leaves the `reference` and
`triton` backends working; `ext_status()` says what happened for `fastgan info`.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import torch  # noqa: F401  (loads libc10 / libtorch before the extension)


class FastganWarning(UserWarning):
    """Warnings about fastgan's build and backends."""


_C: Any = None
_error: str | None = None

if importlib.util.find_spec("fastgan._C") is None:
    _error = ("not installed: fastgan was installed without its compiled extension (no C++ "
              "compiler, or FASTGAN_BUILD_EXT=0)")
else:
    try:
        from fastgan import _C as _C  # noqa: F811  (registers the fastgan:: ops)
    except Exception as e:  # ImportError, OSError (bad .so), undefined symbols, ISA check
        _error = f"{type(e).__name__}: {e}"
if _error is not None:
    warnings.warn(
        f"fastgan: compiled extension fastgan._C is unavailable ({_error}); the 'cpu' and "
        "'cuda' backends are off, 'reference' (and 'triton' on CUDA) still work. Build it "
        "with a C++ compiler: `pip install --no-build-isolation .` (see README).",
        FastganWarning,
        stacklevel=2,
    )


def ext_loaded() -> bool:
    return _C is not None


def ext_error() -> str | None:
    return _error


def fast_path(name: str) -> Any:
    """fastgan._C's eager fast path `name` (csrc/fastgan.cpp: an op called from C++ without
    torch.ops' boxed call), or None when _C is not loaded or has none of that name."""
    return getattr(_C, name, None)


def build_info() -> dict:
    """What _C was built with ({} when it is not loaded)."""
    return dict(_C.build_info()) if _C is not None else {}


def cpu_capability() -> str | None:
    """The instruction set of the CPU kernels in use ("default", "avx2" or "avx512":
    the best this CPU runs, or $FASTGAN_CPU_CAPABILITY), None when _C is not loaded."""
    return _C.cpu_capability() if _C is not None else None


def cuda_arch_support(archs: str, capability: tuple[int, int]) -> tuple[bool, str]:
    """(usable, how) for _C's CUDA kernels, built for `archs` ("7.5;8.0;9.0+PTX"), on a
    GPU of compute `capability`: a cubin of its arch, a cubin of the same major and a
    lower minor (binary compatible), PTX of an arch <= it (JIT-compiled by the driver on
    first use), or nothing (then only the triton backend runs there)."""
    dev = capability[0] * 10 + capability[1]
    entries = [(int(a.replace("+PTX", "").replace(".", "")), a.endswith("+PTX"))
               for a in archs.split(";") if a.strip()]
    cubins = sorted(n for n, _ in entries)
    if dev in cubins:
        return True, f"native kernels (sm_{dev})"
    same_major = [n for n in cubins if n // 10 == dev // 10 and n < dev]
    if same_major:
        return True, f"sm_{same_major[-1]} kernels (binary compatible with sm_{dev})"
    ptx = sorted(n for n, p in entries if p and n <= dev)
    if ptx:
        return True, f"PTX of compute_{ptx[-1]}, JIT-compiled by the driver on first use"
    return False, (f"no kernels for sm_{dev} (built for {archs}); rebuild with "
                   f"TORCH_CUDA_ARCH_LIST including {capability[0]}.{capability[1]}, or use triton")
