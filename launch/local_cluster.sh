#!/usr/bin/env bash
# Runs mmjax.train as a real multi-host job on this machine: N processes, each with M CPU
# devices, joined through jax.distributed (see mmjax/distributed.py).
#
#   launch/local_cluster.sh --processes=2 --devices_per_process=4 -- \
#       --config=configs/base.py --workdir=runs/local2
#
# Process 0's output goes to this terminal; every process's output also goes to
# WORKDIR/logs/process_<i>.log. If one process fails, the others are stopped and the
# script exits with that process's status (75 still means "preempted, run me again").
set -euo pipefail

processes=2
devices=4
port=""
python="${PYTHON:-python}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes=*) processes="${1#*=}" ;;
    --devices_per_process=*) devices="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --) shift; break ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "local_cluster.sh: unknown option '$1' (train arguments go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || { echo "local_cluster.sh: --processes must be a positive integer" >&2; exit 2; }
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || { echo "local_cluster.sh: --devices_per_process must be a positive integer" >&2; exit 2; }

workdir=""
for arg in "$@"; do
  [[ "$arg" == --workdir=* ]] && workdir="${arg#--workdir=}"
done
[[ -n "$workdir" ]] || { echo "local_cluster.sh: pass --workdir=DIR after --" >&2; exit 2; }
mkdir -p "$workdir/logs"

if [[ -z "$port" ]]; then  # a free port, chosen by the OS
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
coordinator="127.0.0.1:$port"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'cleanup; exit 143' TERM INT

for ((i = 0; i < processes; i++)); do
  log="$workdir/logs/process_$i.log"
  : > "$log"  # exists before tail follows it, even if the process has not started yet
  env JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$devices" \
      XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
      MMJAX_COORDINATOR_ADDRESS="$coordinator" MMJAX_NUM_PROCESSES="$processes" MMJAX_PROCESS_ID="$i" \
      "$python" -m mmjax.train "$@" > "$log" 2>&1 &
  pids+=("$!")
done
if [[ "$processes" -gt 0 ]]; then
  tail -n +1 -f "$workdir/logs/process_0.log" --pid="${pids[0]}" &
fi

# Wait for all; on the first failure stop the rest and say which process failed and why.
status=0
declare -A running  # pid -> process index
for ((i = 0; i < processes; i++)); do running[${pids[$i]}]=$i; done
while [[ ${#running[@]} -gt 0 ]]; do
  set +e
  wait -n -p done_pid "${!running[@]}"
  code=$?
  set -e
  failed=${running[$done_pid]}
  unset "running[$done_pid]"
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code
    reason="exit status $code"
    [[ $code -eq 134 ]] && reason="aborted (a peer never joined the coordinator at $coordinator)"
    echo "local_cluster.sh: process $failed of $processes failed: $reason; last lines of $workdir/logs/process_$failed.log:" >&2
    tail -n 5 "$workdir/logs/process_$failed.log" >&2 || true
    cleanup
  fi
done
wait 2>/dev/null || true
exit $status
