#!/usr/bin/env bash
# Builds a wheel of fastgan with its compiled extension into dist/ (or $1):
#   - fastgan._C with the C++ CPU kernels (baseline, AVX2 and AVX-512 copies, one chosen
#     at import) and, when a CUDA toolkit is found, the CUDA kernels for the default archs
#     (sm_75, 80, 86, 89, 90 + PTX; TORCH_CUDA_ARCH_LIST to choose);
#   - the Triton kernels, the built-in Fashion-MNIST and the metrics' feature network.
# The wheel is tied to the torch it was built against (torch==2.14.1) and to this
# platform's glibc (linux_x86_64, not manylinux-audited). Sets up .venv like test.sh.
#   scripts/build_wheel.sh [--cpu-only] [OUT]   --cpu-only: no CUDA kernels in the wheel
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CPU_ONLY=0
if [[ "${1:-}" == "--cpu-only" ]]; then CPU_ONLY=1; shift; fi
OUT="$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)"
WHEEL_CUDA="${FASTGAN_CUDA:-}"  # the caller's choice, before setup_env.sh sets the dev build's
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# The wheel is for other machines: it holds the CUDA kernels whenever a toolkit is here,
# GPU or not (the development build above skips them on a CPU-only machine).
if [[ "$CPU_ONLY" == 1 ]]; then
  WHEEL_CUDA=0
elif [[ -z "$WHEEL_CUDA" ]] && python scripts/cuda_toolkit.py >/dev/null 2>&1; then
  WHEEL_CUDA=1
fi
FASTGAN_CUDA="$WHEEL_CUDA" FASTGAN_BUILD_EXT=1 MAX_JOBS="${MAX_JOBS:-2}" \
  python -m pip --disable-pip-version-check wheel -q --no-build-isolation --no-deps -w "$OUT" .
ls -1 "$OUT"/fastgan-*.whl
