#!/usr/bin/env bash
# Trains mmjax on a Cloud TPU VM slice: create (or reuse) it, install mmjax[tpu] on every
# worker, start the same training command on all workers at once, detached (nohup: a dropped
# ssh connection does not stop it), wait for it, resume after preemption, and stop or delete
# the slice.
#
#   launch/tpu_pod.sh --name=mm --zone=us-west4-a --accelerator=v5litepod-16 --spot -- \
#       --config=configs/base.py --workdir=gs://BUCKET/runs/mm
#
# Options:
#   --name=NAME          queued resource and TPU VM name (required)
#   --zone=ZONE          default: $CLOUDSDK_COMPUTE_ZONE
#   --project=PROJECT    default: gcloud's configured project
#   --accelerator=TYPE   e.g. v5litepod-16, v5litepod-256, v5p-128, v6e-64 (needed to create)
#   --version=RUNTIME    TPU VM software version (default: the one for the accelerator:
#                        v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e/v5litepod
#                        v2-alpha-tpuv5-lite, v4 tpu-ubuntu2204-base)
#   --spot | --reserved  capacity type of the queued resource (default: on-demand)
#   --repo=URL           git repository the workers clone (default: this checkout's origin)
#   --ref=REF            commit, branch or tag to check out (default: this checkout's HEAD)
#   --max_restarts=N     resumes after preemption before giving up (default: 10)
#   --action=A           all (default): create, install, train, retrying on preemption;
#                        or one of create | install | train | logs | stop | delete
#   --attach             follow worker 0's log while training runs (Ctrl-C or a dropped
#                        connection detaches; training goes on); --action=logs attaches later
#   --dry-run            print every command instead of running it
# Training arguments go after --; the workdir and data may be gs:// paths. Every worker
# runs with MMJAX_DISTRIBUTED=auto, so mmjax/distributed.py joins them into one job, under
# nohup with its log in ~/mmjax-train.log and its exit status in ~/mmjax-train.status; this
# script polls the status every $TPU_POD_POLL_S seconds (default 60).
# A run that exits with status 75 was preempted (SIGTERM) and saved a checkpoint: it is
# started again and resumes from that checkpoint, as it does after the slice is recreated.
set -euo pipefail

GCLOUD="${GCLOUD:-gcloud}"
RESUME_STATUS=75
LOST_STATUS=254  # a worker's run ended without an exit status (the worker restarted)
POLL_S="${TPU_POD_POLL_S:-60}"
name="" zone="${CLOUDSDK_COMPUTE_ZONE:-}" project="" accelerator="" version=""
capacity="" repo="" ref="" max_restarts=10 action="all" dry_run=0 attach=0

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --spot) capacity="--spot" ;;
    --reserved) capacity="--reserved" ;;
    --repo=*) repo="${1#*=}" ;;
    --ref=*) ref="${1#*=}" ;;
    --max_restarts=*) max_restarts="${1#*=}" ;;
    --action=*) action="${1#*=}" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    --attach) attach=1 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (training arguments go after --)" ;;
  esac
  shift
done
[[ -n "$name" ]] || die "--name is required"
[[ -n "$zone" ]] || die "--zone is required (or set CLOUDSDK_COMPUTE_ZONE)"
case "$action" in all|create|install|train|logs|stop|delete) ;; *) die "unknown --action=$action" ;; esac
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max_restarts must be a non-negative integer"
train_args=("$@")

# The TPU VM software version for an accelerator type (cloud.google.com/tpu/docs/runtimes).
runtime_for() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v4-*|v3-*|v2-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}
if [[ -z "$version" && -n "$accelerator" ]]; then
  version="$(runtime_for "$accelerator")" || die "no known runtime for --accelerator=$accelerator; pass --version=RUNTIME"
fi

where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

here="$(cd "$(dirname "$0")/.." && pwd)"
[[ -n "$repo" ]] || repo="$(git -C "$here" remote get-url origin 2>/dev/null || true)"
[[ -n "$ref" ]] || ref="$(git -C "$here" rev-parse HEAD 2>/dev/null || true)"
if [[ -z "$repo" && ( "$action" == all || "$action" == install ) ]]; then
  [[ $dry_run -eq 1 ]] && repo="REPO_URL" || die "this checkout has no git remote 'origin'; pass --repo=URL"
fi

# Shell-quotes one word for display: plain words as they are, others in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# Runs a command, or prints it (shell-quoted) under --dry-run.
run() {
  if [[ $dry_run -eq 1 ]]; then
    local word line=""
    for word in "$@"; do line+="$(quote "$word") "; done
    echo "${line% }"
    return 0
  fi
  "$@"
}

# Runs a shell command on every worker of the slice at once.
on_workers() {
  run "$GCLOUD" compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"
}

state() {  # ACTIVE, PROVISIONING, SUSPENDED, FAILED, ... or NONE
  if [[ $dry_run -eq 1 ]]; then echo ACTIVE; return; fi
  "$GCLOUD" compute tpus queued-resources describe "$name" "${where[@]}" --format='value(state.state)' 2>/dev/null || echo NONE
}

create() {
  local current; current="$(state)"
  if [[ $dry_run -eq 0 && "$current" == ACTIVE ]]; then echo "tpu_pod.sh: reusing $name (ACTIVE)"; return; fi
  if [[ "$current" != NONE && "$current" != ACTIVE ]]; then  # preempted/failed: start over
    run "$GCLOUD" compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  fi
  [[ -n "$accelerator" ]] || die "--accelerator is required to create $name"
  echo "tpu_pod.sh: $accelerator with runtime $version" >&2
  run "$GCLOUD" compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" ${capacity:+"$capacity"}
  if [[ $dry_run -eq 0 ]]; then
    echo "tpu_pod.sh: waiting for $name to become ACTIVE"
    local now
    until now="$(state)"; [[ "$now" == ACTIVE ]]; do
      case "$now" in FAILED|SUSPENDED) die "queued resource $name is $now";; esac
      sleep 30
    done
  fi
}

install() {
  # A clone, not a wheel: training reads configs/ from the checkout.
  on_workers "rm -rf ~/mmjax && git clone --quiet $(printf '%q' "$repo") ~/mmjax && git -C ~/mmjax checkout --quiet $(printf '%q' "${ref:-main}") && python3 -m pip install --quiet -e \"\$HOME/mmjax[tpu]\""
}

LOG='~/mmjax-train.log' STATUS='~/mmjax-train.status'
logs_command=("$GCLOUD" compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=0
              --command="tail -n 200 -F --pid=\$(cat ~/mmjax-train.pid) $LOG")

# Starts training on every worker, detached: nohup + setsid, so it outlives this ssh session;
# the exit status lands in ~/mmjax-train.status when it ends.
start_training() {
  local word quoted=""
  for word in "${train_args[@]}"; do quoted+="$(quote "$word") "; done
  local job="cd ~/mmjax && MMJAX_DISTRIBUTED=auto python3 -m mmjax.train ${quoted% } >> $LOG 2>&1; echo \$? > $STATUS.tmp && mv $STATUS.tmp $STATUS"
  on_workers "rm -f $STATUS; nohup setsid bash -c $(quote "$job") > /dev/null 2>&1 < /dev/null & echo \$! > ~/mmjax-train.pid"
}

# Polls the workers until every one has an exit status; returns the first non-zero one (0 if
# all finished), 255 when the slice is gone, LOST_STATUS when a worker's run vanished. A
# failed poll (dropped connection) is retried. Each worker says running (its run's process is
# alive), its exit status, or lost.
wait_for_training() {
  local alive="grep -qs mmjax.train /proc/\$(cat ~/mmjax-train.pid 2>/dev/null)/cmdline"
  local poll=(--command="echo mmjax-status=\$($alive && echo running || cat $STATUS 2>/dev/null || echo lost)")
  if [[ $dry_run -eq 1 ]]; then on_workers "${poll[0]#--command=}"; return 0; fi
  local out statuses s
  while true; do
    sleep "$POLL_S"
    if ! out="$("$GCLOUD" compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all "${poll[@]}" 2>/dev/null)"; then
      [[ "$(state)" == ACTIVE ]] || return 255
      continue
    fi
    statuses="$(grep -o 'mmjax-status=[a-z0-9]*' <<<"$out" | cut -d= -f2)"
    [[ -z "$statuses" ]] || grep -q running <<<"$statuses" && continue
    for s in $statuses; do
      [[ "$s" == lost ]] && return $LOST_STATUS
      [[ "$s" != 0 ]] && return "$s"
    done
    return 0
  done
}

train() {
  start_training || return 255
  if [[ $attach -eq 1 ]]; then
    run "${logs_command[@]}" || true  # a dropped connection only detaches
  else
    echo "tpu_pod.sh: training runs detached on the workers; follow it with: $0 --name=$name --zone=$zone --action=logs" >&2
  fi
  wait_for_training
}

train_until_done() {
  local attempt=0 status current
  while true; do
    set +e; train; status=$?; set -e
    [[ $status -eq 0 ]] && { echo "tpu_pod.sh: training finished"; return 0; }
    attempt=$((attempt + 1))
    [[ $attempt -gt $max_restarts ]] && die "training failed with status $status after $max_restarts restarts"
    if [[ $status -eq $RESUME_STATUS ]]; then
      echo "tpu_pod.sh: run was preempted and saved a checkpoint; resuming (restart $attempt/$max_restarts)"
    elif [[ $status -eq $LOST_STATUS ]] && current="$(state)" && [[ "$current" == ACTIVE ]]; then
      echo "tpu_pod.sh: the run is gone from a worker without an exit status (worker restarted?); resuming (restart $attempt/$max_restarts)"
    elif current="$(state)"; [[ "$current" != ACTIVE ]]; then
      echo "tpu_pod.sh: slice $name is $current; recreating it and resuming (restart $attempt/$max_restarts)"
      create; install
    else
      die "training failed with status $status on a healthy slice; see ~/mmjax-train.log on the workers ($0 --name=$name --zone=$zone --action=logs)"
    fi
  done
}

case "$action" in
  all) create; install; train_until_done ;;
  create) create ;;
  install) install ;;
  train) train_until_done ;;
  logs) run "${logs_command[@]}" ;;
  stop) on_workers "pkill -TERM -f mmjax.train || true" ;;  # SIGTERM: each worker saves, exits 75
  delete) run "$GCLOUD" compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet ;;
esac
