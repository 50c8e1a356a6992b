#!/usr/bin/env bash
# Toy task, step 1: record scripted-expert episodes (once) and train a framework on them, on CPU.
#
# usage: examples/toy/train.sh [CONFIG_YAML] [overrides, e.g. --trainer.max_steps=300]
#   CONFIG_YAML defaults to configs/experiments/demo/qwen_oft_toy.yaml (QwenOFT, 600 steps).
#   Run from the repository root.
#   TOY_DATA (default data/toy) and TOY_EPISODES (default 400) pick the dataset.
# The last line printed names the checkpoint directory; pass it to examples/toy/eval.sh.
set -euo pipefail
config=configs/experiments/demo/qwen_oft_toy.yaml
if [ $# -gt 0 ] && [[ $1 != -* && $1 != *=* ]]; then config=$1; shift; fi
data=${TOY_DATA:-data/toy}
VLABLOCKS=${VLABLOCKS:-$(command -v vlablocks || echo .venv/bin/vlablocks)}

[ -f "$data/meta/info.json" ] || "$VLABLOCKS" make-toy-data --out "$data" --episodes "${TOY_EPISODES:-400}"
exec "$(dirname "$0")/../train.sh" "$config" --dataset.root="$data" "$@"
