#!/usr/bin/env bash
# Sets everything up, then runs the main job on its built-in default:
#   fastgan info;  a 2000-step DCGAN run on the built-in Fashion-MNIST (~3 min on a 2-core
#   CPU; samples, plots and checkpoints in runs/run-<date>-<time>/);  fastgan bench.
# Extra arguments go to `fastgan bench`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
fastgan info
fastgan train --steps 2000
fastgan bench "$@"
