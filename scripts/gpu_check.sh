#!/usr/bin/env bash
# The one prepared GPU check of issue 38 (docs/benchmarks.md, "GPU rows"). On the lent H200, from the repo root,
# after scripts/gpu_wheels.sh here:  device run  command="bash scripts/gpu_check.sh"  carry=[".whl", "vlablocks.egg-info"]
# Prints every figure, in under 10 minutes: the compiled and inference rows at 3B, the time to the first optimizer
# step, the training row (samples/s, MFU). Each step has its own time limit, so one slow row cannot eat the others'.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out" /tmp/site
if [ -d .whl ]; then
    python3 -m pip install -q --no-deps --no-index --no-build-isolation --target /tmp/site .whl/* 2>&1 | tail -2
fi
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
bench() { timeout "$1" python3 -m vlablocks.cli.main bench --quick --device cuda --arch 3b --only "${@:2}" --out "$out/bench_$2" 2>&1 | tail -40; }
bench 180 compiled
bench 100 inference
timeout 100 python3 -m vlablocks.tools.bench.first_step --arch 3b 2>&1 | tail -3
bench 200 training
