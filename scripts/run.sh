#!/usr/bin/env bash
# Sets everything up, then runs the main job on its built-in default.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
fastgan info
fastgan bench "$@"
