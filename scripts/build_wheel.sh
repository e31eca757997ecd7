#!/usr/bin/env bash
# Builds a wheel of fastgan with its compiled extension into dist/ (or $1):
#   - fastgan._C with the C++ CPU kernels (baseline, AVX2 and AVX-512 copies, one chosen
#     at import) and, when a CUDA toolkit is found, the CUDA kernels for the default archs
#     (sm_75, 80, 86, 89, 90 + PTX; TORCH_CUDA_ARCH_LIST to choose);
#   - the Triton kernels, the built-in Fashion-MNIST and the metrics' feature network.
# The wheel is tied to the torch it was built against (torch==2.14.1) and to this
# platform's glibc (linux_x86_64, not manylinux-audited). Sets up .venv like test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
FASTGAN_BUILD_EXT=1 MAX_JOBS="${MAX_JOBS:-2}" \
  python -m pip --disable-pip-version-check wheel -q --no-build-isolation --no-deps -w "$OUT" .
ls -1 "$OUT"/fastgan-*.whl
