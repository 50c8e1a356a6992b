#!/usr/bin/env bash
# LIBERO, training: QwenOFT (examples/libero/qwen_oft_libero.yaml) on the LIBERO demos in LeRobot format.
# Get the data and the base VLM first (README.md); evaluate with main.py in a LIBERO install.
#
# usage: [NUM_GPUS=N] examples/libero/train.sh [overrides, e.g. --dataset.root=data/libero_spatial]
# Run from the repository root.
exec "$(dirname "$0")/../train.sh" examples/libero/qwen_oft_libero.yaml "$@"
