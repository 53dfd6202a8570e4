#!/usr/bin/env bash
# Run one configuration on this machine: mpi_runs/local.sh RANKS CONFIG.toml [--key value ...]
# Uses the mpirun of the project's virtual environment when there is one.
set -euo pipefail
ranks=${1:?usage: local.sh RANKS CONFIG.toml [--key value ...]}
config=${2:?usage: local.sh RANKS CONFIG.toml [--key value ...]}
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCNET_BIN:-$root/.venv/bin}
[ -x "$bin/mpirun" ] || bin=$(dirname "$(command -v mpirun)")
exec "$bin/mpirun" -n "$ranks" "$bin/python" -m ocnet.run --config "$config" "$@"
