#!/usr/bin/env bash
# Serves a checkpoint with `vlablocks serve` and evaluates it closed-loop with `vlablocks eval` over the
# websocket, then stops the server. The per-benchmark eval.sh scripts call this with their env name.
#
# usage: examples/serve_and_eval.sh ENV CHECKPOINT_DIR [vlablocks eval options and env overrides]
#   e.g. examples/serve_and_eval.sh toy runs/qwen_oft_toy/checkpoints/step_600 --episodes 50 --out runs/eval
# Run from the repository root. VLABLOCKS overrides the command (default: vlablocks on PATH, else .venv's).
set -euo pipefail
usage="usage: $0 ENV CHECKPOINT_DIR [vlablocks eval options]"
env_name=${1:?$usage}
checkpoint=${2:?$usage}
shift 2
[ -d "$checkpoint" ] || { echo "checkpoint directory not found: $checkpoint" >&2; exit 2; }
VLABLOCKS=${VLABLOCKS:-$(command -v vlablocks || echo .venv/bin/vlablocks)}

log=$(mktemp -t vlablocks-serve.XXXXXX)
"$VLABLOCKS" serve --ckpt "$checkpoint" --port 0 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT

# `serve --port 0` binds a free port and prints its ws:// address once the model is loaded and listening.
address=""
for _ in $(seq 600); do
  address=$(grep -o -m1 'ws://[0-9.]*:[0-9]*' "$log" || true)
  [ -n "$address" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; echo "the policy server exited before serving" >&2; exit 1; }
  sleep 0.5
done
[ -n "$address" ] || { cat "$log" >&2; echo "the policy server did not start within 300 s" >&2; exit 1; }
echo "policy server on $address (log: $log)"
"$VLABLOCKS" eval --env "$env_name" --policy "$address" "$@"
