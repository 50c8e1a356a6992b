#!/usr/bin/env bash
# Toy task, step 2: serve a checkpoint and run closed-loop toy episodes against it over the websocket:
# success rate with a 95% CI, runs/eval/summary.json (or --out DIR) and GIFs of the first episodes.
#
# usage: examples/toy/eval.sh CHECKPOINT_DIR [vlablocks eval options and env overrides]
#   e.g. examples/toy/eval.sh runs/qwen_oft_toy/checkpoints/step_600 --episodes 50 --out runs/qwen_oft_toy/eval
#   controls: add --wrong-instruction (success must drop); a two-view checkpoint needs --cameras='[top,wrist]'
[ $# -ge 1 ] || { echo "usage: $0 CHECKPOINT_DIR [vlablocks eval options]" >&2; exit 2; }
exec "$(dirname "$0")/../serve_and_eval.sh" toy "$@"
