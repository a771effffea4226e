"""Multi-host behaviour with real processes: 2 processes x 4 devices against 1 x 8."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from mmjax import distributed
from mmjax.config import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"MMJAX_COORDINATOR_ADDRESS": "h:1", "MMJAX_NUM_PROCESSES": "4", "MMJAX_PROCESS_ID": "2"},
         distributed.Plan("explicit", "h:1", 4, 2)),
        ({"MMJAX_COORDINATOR_ADDRESS": "h:1", "MMJAX_NUM_PROCESSES": "1", "MMJAX_PROCESS_ID": "0"}, None),
        ({"SLURM_NTASKS": "8", "SLURM_PROCID": "3", "CUDA_VISIBLE_DEVICES": ""}, distributed.Plan("slurm", None, 8, 3)),
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),
        ({"MMJAX_DISTRIBUTED": "auto"}, distributed.Plan("tpu")),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, distributed.Plan("tpu")),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1", "MMJAX_DISTRIBUTED": "off"}, None),
    ],
)
def test_detect(env, expected):
    assert distributed.detect(env) == expected


# gpu_slurm.sh: 2 nodes x 1 task x 8 GPUs; SLURM's variables as srun sets them on node 1.
SLURM_ONE_TASK_PER_NODE = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
                           "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_ON_NODE": "8",
                           "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "SLURM_JOB_ID": "77",
                           "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_STEP_NUM_NODES": "2"}
EIGHT = tuple(range(8))


@pytest.mark.parametrize("env, expected", [
    (SLURM_ONE_TASK_PER_NODE, distributed.Plan("slurm", None, 2, 1, EIGHT)),
    ({**SLURM_ONE_TASK_PER_NODE, "CUDA_VISIBLE_DEVICES": None}, distributed.Plan("slurm", None, 2, 1, EIGHT)),
    # one task per GPU sharing the node's 8: each its own (jax's default, made explicit)
    ({**SLURM_ONE_TASK_PER_NODE, "SLURM_NTASKS": "16", "SLURM_PROCID": "13", "SLURM_LOCALID": "5",
      "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}, distributed.Plan("slurm", None, 16, 13, (5,))),
    # 2 tasks per node, 4 GPUs each
    ({**SLURM_ONE_TASK_PER_NODE, "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
      "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}, distributed.Plan("slurm", None, 4, 3, (4, 5, 6, 7))),
    # --gpus-per-task=1: srun gives every task its own GPU, visible as index 0
    ({**SLURM_ONE_TASK_PER_NODE, "SLURM_NTASKS": "16", "SLURM_PROCID": "13", "SLURM_LOCALID": "5",
      "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "5"},
     distributed.Plan("slurm", None, 16, 13, (0,))),
    # Open MPI: mpirun -np 16 over 2 nodes, and one rank per node
    ({"OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "8", "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:4000",
      "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, distributed.Plan("mpi", None, 16, 9, (1,))),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"},
     distributed.Plan("mpi", None, 2, 1, EIGHT)),
    ({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, None),
    # Kubernetes: an indexed Job and a JobSet; a plain pod runs alone
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "3"}, distributed.Plan("kubernetes")),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOBSET_NAME": "mm"}, distributed.Plan("kubernetes")),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOBSET_NAME": "mm", "MMJAX_DISTRIBUTED": "off"}, None),
])
def test_detect_clusters_and_local_gpus(env, expected):
    assert distributed.detect({k: v for k, v in env.items() if v is not None}) == expected


def test_slurm_one_task_per_node_initializes_with_every_local_gpu(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    distributed.initialize(SLURM_ONE_TASK_PER_NODE)
    (kw,) = calls
    assert kw["local_device_ids"] == list(EIGHT)  # jax alone would keep [SLURM_LOCALID] = [0]
    assert kw["num_processes"] == 2 and kw["process_id"] == 1 and kw["coordinator_address"] is None
    assert "process 1 of 2 (slurm) joining the coordinator found by jax's cluster detection with 8 local GPUs " \
           "0,1,2,3,4,5,6,7" in capsys.readouterr().err
    # and what jax makes of it: the coordinator from SLURM's node list, all 8 GPUs kept
    from jax._src.clusters import ClusterEnv

    monkeypatch.setattr(os, "environ", {**os.environ, **SLURM_ONE_TASK_PER_NODE})
    address, count, rank, ids = ClusterEnv.auto_detect_unset_distributed_params(
        None, kw["num_processes"], kw["process_id"], kw["local_device_ids"], None, None)
    assert address.startswith("gpu01:") and (count, rank, list(ids)) == (2, 1, list(EIGHT))


def test_mpi_and_kubernetes_join_through_jax_detection(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    distributed.initialize({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOBSET_NAME": "mm"})
    distributed.initialize({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "CUDA_VISIBLE_DEVICES": ""})
    assert [(c["coordinator_address"], c["num_processes"], c["process_id"]) for c in calls] == [
        (None, None, None), (None, 4, 2)]

    def fail(**kw):
        raise ValueError("coordinator_address should be defined.")
    monkeypatch.setattr(distributed.jax.distributed, "initialize", fail)
    with pytest.raises(UserError, match=r"\(kubernetes\) .* failed: coordinator_address should be defined. "
                                        r"\(Kubernetes: jax's detection needs pip install 'jax\[k8s\]'\)"):
        distributed.initialize({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "0"})


def test_detect_rejects_incomplete_explicit_env():
    with pytest.raises(UserError, match="MMJAX_PROCESS_ID must be set"):
        distributed.detect({"MMJAX_COORDINATOR_ADDRESS": "h:1", "MMJAX_NUM_PROCESSES": "2"})
    with pytest.raises(UserError, match=r"MMJAX_PROCESS_ID=2 must be in 0..1"):
        distributed.detect({"MMJAX_COORDINATOR_ADDRESS": "h:1", "MMJAX_NUM_PROCESSES": "2", "MMJAX_PROCESS_ID": "2"})


def _env(cache, devices=8, **extra):
    # In-process tests set MMJAX_DISTRIBUTED=off in this worker; it must not reach these runs.
    # Nor the session's shared compilation cache (conftest.py): with it, a 2-process run that
    # resumed (one_to_two) aborted once at the coordinator's barrier; cause not yet found.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MMJAX_", "SLURM_", "TPU_WORKER", "JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    return dict(env, MMJAX_CACHE=str(cache), JAX_PLATFORMS="cpu", PYTHON=sys.executable,
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def test_unreachable_coordinator_is_one_clear_error(tmp_path, tiny_args):
    env = _env(tmp_path, MMJAX_INIT_TIMEOUT="2", MMJAX_COORDINATOR_ADDRESS="127.0.0.1:9",
               MMJAX_NUM_PROCESSES="2", MMJAX_PROCESS_ID="1")
    result = subprocess.run([sys.executable, "-m", "mmjax.train", *tiny_args, f"--workdir={tmp_path / 'w'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "process 1 of 2 (explicit) joining 127.0.0.1:9 failed: the coordinator at 127.0.0.1:9 was not reachable" in result.stderr
    assert "Traceback" not in result.stderr


# Per-step losses, checkpoints at 3 and 6, one eval at the end.
TRAIN_ARGS = ["--config.log_every=1", "--config.eval_every=6", "--config.checkpoint_every=3"]


def train_one_process(args, workdir, cache):
    result = subprocess.run([sys.executable, "-m", "mmjax.train", *args, f"--workdir={workdir}"],
                            cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def train_two_processes(args, workdir, cache):
    cmd = ["bash", "launch/local_cluster.sh", "--processes=2", "--devices_per_process=4", "--",
           *args, f"--workdir={workdir}"]
    result = subprocess.run(cmd, cwd=ROOT, env=_env(cache, devices=4), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:] + open(f"{workdir}/logs/process_1.log").read()[-3000:]
    assert "done: 6 steps" in result.stdout  # process 0 reports to the terminal


def losses(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def resume_from_step_3(source_run, workdir):
    shutil.copytree(source_run / "checkpoints" / "3", workdir / "checkpoints" / "3")


def test_two_processes_match_one_and_checkpoints_cross_process_counts(tmp_path, tiny_args):
    cache, args = tmp_path / "cache", tiny_args + TRAIN_ARGS
    train_one_process(args, tmp_path / "one", cache)
    train_two_processes(args, tmp_path / "two", cache)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5, 6]
    assert two == pytest.approx(one, rel=1e-6)
    assert not os.path.exists(tmp_path / "two" / "logs" / "process_1.metrics")  # only process 0 writes
    assert sum(1 for _ in open(tmp_path / "two" / "metrics.jsonl")) == sum(1 for _ in open(tmp_path / "one" / "metrics.jsonl"))

    # saved by 2 processes, resumed by 1 ...
    resume_from_step_3(tmp_path / "two", tmp_path / "two_to_one")
    train_one_process(args, tmp_path / "two_to_one", cache)
    # ... and saved by 1, resumed by 2
    resume_from_step_3(tmp_path / "one", tmp_path / "one_to_two")
    train_two_processes(args, tmp_path / "one_to_two", cache)
    for resumed in ("two_to_one", "one_to_two"):
        got = losses(tmp_path / resumed)
        assert sorted(got) == [4, 5, 6]
        assert got == pytest.approx({s: one[s] for s in (4, 5, 6)}, rel=1e-6), resumed
