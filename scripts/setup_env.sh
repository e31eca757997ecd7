#!/usr/bin/env bash
# Sets up a development environment: a virtualenv in .venv (unless one is already
# active), torch==2.14.1, and fastgan installed editable with its compiled
# extension and dev extras. Safe to run again: it only redoes what is missing or stale.
# Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
PIP="python -m pip --disable-pip-version-check"
if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.14.1') else 1)" 2>/dev/null; then
  # torch 2.14.1 with its CUDA libraries takes ~5.6 GB: say so plainly on a full disk
  free_kb=$(df -Pk "$(python -c 'import sys; print(sys.prefix)')" | awk 'NR==2 {print $4}')
  if [[ -n "$free_kb" && "$free_kb" -lt 6000000 ]]; then
    echo "[setup] error: torch==2.14.1 needs ~6 GB free for its virtualenv (5.6 GB);" \
         "only $((free_kb / 1024)) MB free at $(python -c 'import sys; print(sys.prefix)')" >&2
    exit 1
  fi
  echo "[setup] installing torch==2.14.1"
  $PIP install -q "torch==2.14.1"
fi
if ! python -c "import setuptools, ninja, pytest, pytest_benchmark, expecttest, importlinter, numpy, matplotlib, PIL, tqdm" 2>/dev/null; then
  echo "[setup] installing build and test tools, and fastgan's dependencies"
  $PIP install -q "setuptools>=64" wheel ninja numpy "pytest>=8" "pytest-benchmark>=4" expecttest "import-linter>=2.3" \
    matplotlib pillow tqdm
fi
# The metrics tests check fastgan's FID against pytorch-fid's (plain code; its weights are
# not needed). pytorch-fid imports torchvision, pinned to the torchvision of torch 2.14.
if ! python -c "import scipy, torchvision, pytorch_fid" 2>/dev/null; then
  echo "[setup] installing the metrics tests' cross-checks (scipy, torchvision, pytorch-fid)"
  $PIP install -q "scipy<1.18" "torchvision==0.29.*"  # pytorch-fid passes sqrtm(disp=), gone in 1.18
  $PIP install -q --no-deps "pytorch-fid==0.3.0"
fi
# The CUDA kernels are most of the build's time: build them where they can run (a GPU is
# visible), in CI (CI=true: it keeps proving they compile) or when asked (FASTGAN_CUDA=1);
# skip them on a CPU-only machine, or when FASTGAN_CUDA=0. The choice is exported (the
# build stamp below includes it; scripts/build_wheel.sh makes its own for the wheel).
if [[ -z "${FASTGAN_CUDA:-}" ]]; then
  if nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    cuda_why="a GPU is visible"
  elif ci="${CI:-}"; [[ "${ci,,}" =~ ^(true|1|yes)$ ]]; then
    cuda_why="CI (CI=true)"
  else
    cuda_why=""
  fi
  if [[ -z "$cuda_why" ]]; then
    export FASTGAN_CUDA=0
    echo "[setup] no GPU: skipping the CUDA kernels (FASTGAN_CUDA=1 builds them)"
  elif python scripts/cuda_toolkit.py >/dev/null 2>&1; then
    export FASTGAN_CUDA=1
    echo "[setup] $cuda_why: building the CUDA kernels too (FASTGAN_CUDA=0 skips them)"
  else
    export FASTGAN_CUDA=0
    echo "[setup] $cuda_why, but no CUDA toolkit (nvcc, CUDA_HOME): skipping the CUDA kernels"
  fi
fi
# The editable install picks up Python changes by itself; rebuild only when what the
# build reads changed: the C++/CUDA sources, setup.py, pyproject.toml, the build knobs,
# torch, or the checkout the venv points at.
STAMP_FILE="$(python -c 'import sys; print(sys.prefix)')/.fastgan-build-stamp"
STAMP="$( { cat setup.py pyproject.toml; find csrc -type f | LC_ALL=C sort | xargs cat;
            echo "${FASTGAN_CUDA:-} ${TORCH_CUDA_ARCH_LIST:-} ${CUDA_HOME:-}";
            python -c 'import torch; print(torch.__version__)'; echo "$ROOT"; } | sha256sum)"
if [[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$STAMP" ]] \
    && python -c "import fastgan._C" 2>/dev/null; then
  echo "[setup] fastgan's build is up to date (no source or build setting changed)"
else
  echo "[setup] building and installing fastgan (editable; FASTGAN_CUDA=${FASTGAN_CUDA:-auto})"
  rm -f "$STAMP_FILE"
  MAX_JOBS="${MAX_JOBS:-2}" $PIP install -q --no-build-isolation --no-deps -e ".[dev]"
  echo "$STAMP" > "$STAMP_FILE"
fi
