"""The CUDA toolkit root and the default GPU architectures (shared by setup.py and
scripts/check_cuda.py)."""

from __future__ import annotations

import glob
import os
import shutil

# Native kernels for the GPUs people train on: T4 (7.5), A100 (8.0), A10/RTX 30xx (8.6),
# L4/RTX 40xx (8.9), H100/H200 (9.0), plus PTX of 9.0 that newer GPUs (Blackwell, 10.x
# and 12.x) JIT-compile. nvcc 13 builds for compute_75 and newer (`nvcc --list-gpu-arch`):
# Volta (7.0) and older are gone from it.
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def sm_list(archs: str) -> list[str]:
    """"7.5;8.0;9.0+PTX" -> ["75", "80", "90"]."""
    return [a.replace("+PTX", "").replace(".", "") for a in archs.split(";") if a.strip()]


def find_cuda_home() -> str | None:
    """The toolkit root whose include/ holds cuda_runtime.h.

    torch guesses CUDA_HOME from `which nvcc`, which lands on the wrong prefix when
    nvcc is a wrapper script (e.g. /usr/local/bin/nvcc exec'ing the real one).
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper script: read the path it execs
            with open(nvcc, "r", errors="ignore") as f:
                for tok in f.read().split():
                    if tok.endswith("/bin/nvcc"):
                        candidates.append(os.path.dirname(os.path.dirname(tok)))
        except OSError:
            pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "include", "cuda_runtime.h")):
            return c
    return None


if __name__ == "__main__":  # exit status 0 (and the path) when a toolkit is found
    import sys

    home = find_cuda_home()
    print(home or "no CUDA toolkit found")
    sys.exit(0 if home else 1)
