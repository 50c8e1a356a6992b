#!/usr/bin/env bash
# ALOHA sim transfer-cube, evaluation: serve a checkpoint and run gym-aloha episodes against it (the `sim`
# extra; MUJOCO_GL=osmesa renders on CPU, MUJOCO_GL=egl on a GPU machine is much faster).
#
# usage: examples/aloha_sim/eval.sh CHECKPOINT_DIR [vlablocks eval options and env overrides]
#   e.g. examples/aloha_sim/eval.sh runs/qwen_oft_aloha/checkpoints/step_30000 --episodes 50 --out runs/aloha_eval
#   env options as overrides: --max_steps=400 (default), --instruction='...'
[ $# -ge 1 ] || { echo "usage: $0 CHECKPOINT_DIR [vlablocks eval options]" >&2; exit 2; }
exec "$(dirname "$0")/../serve_and_eval.sh" aloha_transfer_cube "$@"
