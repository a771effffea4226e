"""Multi-host start-up: join the job's other processes before JAX touches a device.

How the job is found, first match wins:
  1. explicit environment (any cluster, and launch/local_cluster.sh):
       MMJAX_COORDINATOR_ADDRESS=host:port MMJAX_NUM_PROCESSES=N MMJAX_PROCESS_ID=i
  2. SLURM with more than one task (launch/gpu_slurm.sh): SLURM_NTASKS > 1;
  3. Open MPI (mpirun: OMPI_COMM_WORLD_SIZE > 1) and Kubernetes Jobs/JobSets
     (KUBERNETES_SERVICE_HOST with JOB_COMPLETION_INDEX or JOBSET_NAME; needs the
     `kubernetes` package, jax[k8s]): jax's own cluster detection finds the coordinator;
  4. a Cloud TPU VM slice (launch/tpu_pod.sh sets MMJAX_DISTRIBUTED=auto; a multi-host
     TPU VM also lists several TPU_WORKER_HOSTNAMES): jax's own cluster detection.
Otherwise the process runs alone. MMJAX_DISTRIBUTED=off forces a single process.

GPUs: left alone, jax gives a process under SLURM or MPI only the GPU whose index is its
local rank (one process per GPU). With one process per node (gpu_slurm.sh) that would be
one GPU of eight, so local_device_ids then lists every GPU the node's processes share out.

Call `initialize()` only from an entry point's `if __name__ == '__main__'` path: grain's
worker processes re-import the main module and must not join the job.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time

import jax

from mmjax.config import UserError

# Generous: a peer may still be compiling or installing when the first process is ready,
# and the heartbeat must survive long compiles of pod-scale programs.
INIT_TIMEOUT_S = int(os.environ.get("MMJAX_INIT_TIMEOUT", "300"))
HEARTBEAT_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins the job; None fields are left to jax's cluster detection."""

    how: str  # 'explicit' | 'slurm' | 'mpi' | 'kubernetes' | 'tpu'
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None  # None: jax's choice

    def describe(self) -> str:
        who = "this process" if self.process_id is None else f"process {self.process_id} of {self.num_processes}"
        where = self.coordinator or "the coordinator found by jax's cluster detection"
        gpus = "" if self.local_device_ids is None else f" with {len(self.local_device_ids)} local GPU" + \
            "s" * (len(self.local_device_ids) != 1) + f" {','.join(map(str, self.local_device_ids))}"
        return f"{who} ({self.how}) joining {where}{gpus}"


def _int_env(env, name: str) -> int:
    value = env.get(name)
    if value is None or not value.isdigit():
        raise UserError(f"{name} must be set to a non-negative integer (got {value!r}) when MMJAX_COORDINATOR_ADDRESS is set")
    return int(value)


def _visible_gpus(env) -> int:
    """How many GPUs this process can see, from the environment (jax is not started yet)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if (on_node := env.get("SLURM_GPUS_ON_NODE", "")).isdigit():
        return int(on_node)
    try:
        return len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()])
    except OSError:
        return 0


def _slurm_tasks_on_node(env) -> int:
    """Tasks of this step on this node: SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE are
    '8(x2),4' lists over the nodes, in node order (SLURM_NODEID)."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    counts = []
    for part in filter(None, spec.split(",")):
        count, _, times = part.partition("(x")
        counts += [int(count)] * int(times.rstrip(")") or 1) if count.isdigit() else []
    node = int(env.get("SLURM_NODEID", "0") or 0)
    if node < len(counts):
        return counts[node]
    return int(env.get("SLURM_NTASKS_PER_NODE", "1") or 1)


def local_gpus(env, tasks_on_node: int, local_rank: int, *, own_gpus: bool = False) -> tuple[int, ...] | None:
    """The GPU indices this process drives: all it sees when it is the node's only process
    or the launcher gave each process its own GPUs (own_gpus); else its share of the node's.
    None where no GPU is visible (jax's choice)."""
    visible = _visible_gpus(env)
    if visible == 0:
        return None
    if tasks_on_node <= 1 or own_gpus or visible < tasks_on_node:
        return tuple(range(visible))
    share = visible // tasks_on_node
    return tuple(range(local_rank * share, (local_rank + 1) * share))


def detect(env=os.environ) -> Plan | None:
    """The multi-host plan from the environment, or None for a single process."""
    mode = env.get("MMJAX_DISTRIBUTED", "").lower()
    if mode == "off":
        return None
    if env.get("MMJAX_COORDINATOR_ADDRESS"):
        plan = Plan("explicit", env["MMJAX_COORDINATOR_ADDRESS"],
                    _int_env(env, "MMJAX_NUM_PROCESSES"), _int_env(env, "MMJAX_PROCESS_ID"))
        if not 0 <= plan.process_id < plan.num_processes:
            raise UserError(f"MMJAX_PROCESS_ID={plan.process_id} must be in 0..{plan.num_processes - 1}")
        return plan if plan.num_processes > 1 else None
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        gpus = local_gpus(env, _slurm_tasks_on_node(env), int(env.get("SLURM_LOCALID", "0") or 0),
                          own_gpus="SLURM_GPUS_PER_TASK" in env)
        return Plan("slurm", None, int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"]), gpus)
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        gpus = local_gpus(env, int(env.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1") or 1),
                          int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0") or 0))
        return Plan("mpi", None, int(env["OMPI_COMM_WORLD_SIZE"]), int(env.get("OMPI_COMM_WORLD_RANK", "0")), gpus)
    if env.get("KUBERNETES_SERVICE_HOST") and (env.get("JOB_COMPLETION_INDEX") or env.get("JOBSET_NAME")):
        return Plan("kubernetes")
    if mode == "auto" or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return Plan("tpu")
    return None


def _wait_for_coordinator(plan: Plan) -> None:
    """Raises a clear UserError if the coordinator's port never opens.

    jax would abort the process (SIGABRT, no Python exception) after its timeout instead.
    """
    host, _, port = plan.coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"MMJAX_COORDINATOR_ADDRESS={plan.coordinator!r} must be host:port")
    deadline, error = time.monotonic() + INIT_TIMEOUT_S, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                return
        except OSError as e:
            error = e
            time.sleep(1.0)
    raise UserError(
        f"{plan.describe()} failed: the coordinator at {plan.coordinator} was not reachable "
        f"within {INIT_TIMEOUT_S} s ({error}). Start process 0 on that host, or fix the address."
    )


def initialize(env=os.environ) -> None:
    """Joins the multi-host job if there is one; a failure names the coordinator and process."""
    plan = detect(env)
    if plan is None:
        return
    # Printed first: if a peer never joins, jax aborts this process after the timeout
    # without a Python exception, and this line is what the log then shows.
    print(f"mmjax: {plan.describe()} (waiting up to {INIT_TIMEOUT_S} s for all processes)",
          file=sys.stderr, flush=True)
    if plan.coordinator and plan.process_id:
        _wait_for_coordinator(plan)
    try:
        jax.distributed.initialize(
            coordinator_address=plan.coordinator,
            num_processes=plan.num_processes,
            process_id=plan.process_id,
            local_device_ids=None if plan.local_device_ids is None else list(plan.local_device_ids),
            initialization_timeout=INIT_TIMEOUT_S,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        )
    except Exception as e:  # jax raises several types (RuntimeError, XlaRuntimeError, ValueError)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (Kubernetes: jax's detection needs pip install 'jax[k8s]')" if plan.how == "kubernetes" else ""
        raise UserError(
            f"{plan.describe()} failed: {first_line}{hint}. Check that every process was started "
            f"with the same coordinator address and process count, and that the coordinator "
            f"host is reachable on that port."
        ) from None


if __name__ == "__main__":  # launch/gpu_slurm.sh's dry run: how this environment would join
    print(f"mmjax: {detect().describe()}" if detect() else "mmjax: a single process (no cluster detected)")
