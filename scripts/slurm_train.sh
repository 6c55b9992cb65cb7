#!/usr/bin/env bash
# facetrip on a Slurm cluster: one torchrun per node, one process per GPU, global mining over
# every GPU of every node. Submit with:  sbatch --nodes=2 scripts/slurm_train.sh CONFIG OUT
#
#SBATCH --job-name=facetrip
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun launcher per node
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32           # DataLoader workers (data.workers) for 8 processes
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@120          # SIGTERM 2 min before the limit: checkpoint, exit 143
#SBATCH --requeue                    # a pre-empted job comes back and resumes (below)
set -euo pipefail

config=${1:?usage: sbatch scripts/slurm_train.sh CONFIG OUT [--set key=value ...]}
out=${2:?usage: sbatch scripts/slurm_train.sh CONFIG OUT [--set key=value ...]}
shift 2

gpus_per_node=${SLURM_GPUS_ON_NODE:-8}
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
resume=()
[ -e "$out/last.pt" ] && resume=(--resume)   # a requeued job continues where it stopped

# sampler.p is the global number of identities per batch: a multiple of the process count
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_JOB_NUM_NODES" --nproc_per_node "$gpus_per_node" \
    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:29500" \
    -m facetrip train --config "$config" --out "$out" "${resume[@]}" "$@"
