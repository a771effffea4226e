#!/usr/bin/env bash
# Trains mmjax on a SLURM GPU cluster: one process per node, each driving all of its GPUs.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/gpu_slurm.sh \
#       --config=configs/base.py --workdir=/shared/runs/mm
#
# Run it from a checkout on a shared file system with mmjax installed (`pip install -e
# '.[cuda]'`) in the environment that $MMJAX_VENV (default: .venv in the checkout)
# activates. jax reads SLURM's variables (SLURM_NTASKS, SLURM_PROCID, the node list) to
# join the processes; mmjax/distributed.py sees SLURM_NTASKS > 1 and does so, passing every
# GPU of the node as local_device_ids (jax alone would keep only GPU SLURM_LOCALID). A run that
# exits with 75 was preempted (SIGTERM from `scancel` or a time limit) after saving a
# checkpoint and is requeued; on restart it resumes from that checkpoint.
#
#SBATCH --job-name=mmjax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=mmjax-%j.log
set -euo pipefail

checkout="${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$checkout"
venv="${MMJAX_VENV:-$checkout/.venv}"
# shellcheck disable=SC1091
[[ -f "$venv/bin/activate" ]] && source "$venv/bin/activate"

# One process per node sees all local GPUs; XLA may take most of their memory up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

srun_cmd=(srun --ntasks-per-node=1 --kill-on-bad-exit=1 python -m mmjax.train "$@")
if [[ -n "${MMJAX_DRY_RUN:-}" ]]; then
  echo "${srun_cmd[*]}"
  # How each task would join: SLURM's variables as srun sets them on the first node (2 nodes
  # and 8 GPUs unless this runs inside an allocation).
  gpus="${SLURM_GPUS_ON_NODE:-8}"
  env SLURM_NTASKS="${SLURM_NNODES:-2}" SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0 \
      SLURM_STEP_TASKS_PER_NODE="1(x${SLURM_NNODES:-2})" SLURM_GPUS_ON_NODE="$gpus" \
      CUDA_VISIBLE_DEVICES="$(seq -s, 0 $((gpus - 1)))" MMJAX_DISTRIBUTED= MMJAX_COORDINATOR_ADDRESS= \
      python -m mmjax.distributed
  exit 0
fi

# srun in the background so this batch shell can forward SLURM's SIGTERM to the tasks.
"${srun_cmd[@]}" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
set +e
wait "$pid"; status=$?
[[ $status -gt 128 ]] && { wait "$pid"; status=$?; }  # wait again after the trap fired
set -e
if [[ $status -eq 75 ]]; then
  echo "gpu_slurm.sh: preempted after saving a checkpoint; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
