#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (it has torch, accelerate, numpy, safetensors, msgpack; no network), into .whl/
# (git-ignored). Carry `.whl` and `vlablocks.egg-info` (the plugin entry points) to the device; scripts/gpu_check.sh
# installs them there. Versions: this checkout's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
.venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    transformers==5.24.0 tokenizers==0.23.3 huggingface_hub==1.33.0 omegaconf==2.4.0 diffusers==0.42.1 \
    websockets==17.4 qwen-vl-utils==0.0.14 typer
.venv/bin/pip download --no-deps -d .whl antlr4-python3-runtime==4.9.3  # omegaconf's parser: an sdist only
du -sh .whl
