#!/usr/bin/env bash
# One node's part of a multi-node run: reads the node count, this node's rank and the rank-0 host from the
# SLURM environment, then starts this node's ranks (one per GPU) with `accelerate launch`. Every node runs it
# (slurm_train.sbatch does so with `srun`); the ranks find each other at MAIN_PROCESS_IP:MAIN_PROCESS_PORT.
#
# usage: examples/cluster/launch_node.sh SCRIPT [script args]
#   e.g. examples/cluster/launch_node.sh vlablocks/core/training/train.py --config-yaml F --trainer.max_steps 20000
# Run from the repository root (accelerate configs and SCRIPT are relative paths).
#
# From SLURM (srun sets them):   SLURM_NNODES, SLURM_NODEID, SLURM_JOB_NODELIST, SLURM_JOB_ID, SLURM_GPUS_ON_NODE
# Overrides (optional):          ACCELERATE_CONFIG   configs/accelerate/zero2.yaml (zero3.yaml, ddp.yaml)
#                                GPUS_PER_NODE       ranks on this node (default SLURM_GPUS_ON_NODE, else nvidia-smi)
#                                MAIN_PROCESS_IP     host of rank 0 (default: first host of SLURM_JOB_NODELIST)
#                                MAIN_PROCESS_PORT   rendezvous port (default 20000 + SLURM_JOB_ID % 20000)
#                                ACCELERATE          the accelerate executable (default: accelerate on PATH)
set -euo pipefail
script=${1:?usage: $0 SCRIPT [script args] (e.g. vlablocks/core/training/train.py --config-yaml F)}
shift

fail() { echo "launch_node.sh: $*" >&2; exit 2; }
[ -n "${SLURM_NNODES:-}" ] || fail "SLURM_NNODES is not set: run this under srun (slurm_train.sbatch), or export SLURM_NNODES and SLURM_NODEID"
[ -n "${SLURM_NODEID:-}" ] || fail "SLURM_NODEID is not set: run this under srun, one task per node (--ntasks-per-node=1)"
num_nodes=$SLURM_NNODES
node_rank=$SLURM_NODEID

gpus=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}
if [ -z "$gpus" ] && command -v nvidia-smi > /dev/null; then
  gpus=$(nvidia-smi -L | wc -l)
fi
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || fail "cannot tell the GPUs per node (got '${gpus}'): request --gpus-per-node=N or export GPUS_PER_NODE"

main_ip=${MAIN_PROCESS_IP:-}
if [ -z "$main_ip" ]; then
  [ -n "${SLURM_JOB_NODELIST:-}" ] || fail "SLURM_JOB_NODELIST is not set: export MAIN_PROCESS_IP (the host of node 0)"
  # No `| head -n 1`: under pipefail, head closing the pipe early kills scontrol with SIGPIPE (exit 141).
  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
  main_ip=${hosts%%$'\n'*}
  [ -n "$main_ip" ] || fail "scontrol listed no hosts for SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST: export MAIN_PROCESS_IP"
fi
main_port=${MAIN_PROCESS_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
config=${ACCELERATE_CONFIG:-configs/accelerate/zero2.yaml}
[ -f "$config" ] || fail "accelerate config $config not found: run from the repository root or set ACCELERATE_CONFIG"

echo "launch_node.sh: node $node_rank of $num_nodes, $gpus rank(s) here, $((num_nodes * gpus)) in all, rendezvous $main_ip:$main_port, $config" >&2
exec "${ACCELERATE:-accelerate}" launch --config_file "$config" \
  --num_machines "$num_nodes" --machine_rank "$node_rank" --num_processes $((num_nodes * gpus)) \
  --main_process_ip "$main_ip" --main_process_port "$main_port" --rdzv_backend static --same_network \
  "$script" "$@"
