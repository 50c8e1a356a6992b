#!/usr/bin/env bash
# ALOHA sim transfer-cube, training: QwenOFT (examples/aloha_sim/qwen_oft_aloha.yaml) on
# lerobot/aloha_sim_transfer_cube_human. Get the data and the base VLM first (README.md).
#
# usage: [NUM_GPUS=N] examples/aloha_sim/train.sh [overrides, e.g. --trainer.batch_size=8]
# Run from the repository root.
exec "$(dirname "$0")/../train.sh" examples/aloha_sim/qwen_oft_aloha.yaml "$@"
