#!/usr/bin/env bash
# Trains the experiment CONFIG_YAML: `vlablocks train` in one process, or with NUM_GPUS > 1 that many
# data-parallel ranks through `accelerate launch` (configs/accelerate/ddp.yaml). The per-benchmark train.sh
# scripts call this with their config.
#
# usage: [NUM_GPUS=N] examples/train.sh CONFIG_YAML [overrides, e.g. --trainer.max_steps=100]
# Run from the repository root. VLABLOCKS overrides the command (default: vlablocks on PATH, else .venv's).
set -euo pipefail
config=${1:?usage: [NUM_GPUS=N] $0 CONFIG_YAML [overrides]}
shift
gpus=${NUM_GPUS:-1}
if [ "$gpus" -gt 1 ]; then
  exec accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes "$gpus" \
    vlablocks/core/training/train.py --config-yaml "$config" "$@"
fi
VLABLOCKS=${VLABLOCKS:-$(command -v vlablocks || echo .venv/bin/vlablocks)}
exec "$VLABLOCKS" train --config-yaml "$config" "$@"
