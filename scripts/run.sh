#!/usr/bin/env bash
# Sets everything up, then runs the main job on its built-in default:
#   fastgan info;  an 800-step DCGAN run on the built-in Fashion-MNIST (samples, plots and
#   checkpoints in runs/run-<date>-<time>/; ~4.5 min on the slowest 2-core CPU we know, one
#   that trains at ~190 img/s: README.md, "The two commands");  fastgan bench.
# Extra arguments go to `fastgan bench`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
fastgan info
fastgan train --steps 800   # fastgan train's own default is 2000 steps
fastgan bench "$@"
