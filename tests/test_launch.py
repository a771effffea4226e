"""Launch scripts: the TPU pod script's commands (dry run and a fake gcloud), the SLURM script."""
import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD = os.path.join(ROOT, "launch", "tpu_pod.sh")
TRAIN_ARGS = ["--", "--config=configs/base.py", "--workdir=gs://bucket/runs/mm", "--config.total_steps=10"]


def run(cmd, env=None):
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_tpu_pod_dry_run_prints_the_whole_sequence():
    result = run(["bash", POD, "--dry-run", "--name=mm", "--zone=us-west4-a", "--project=proj",
                  "--accelerator=v5litepod-16", "--spot", "--repo=https://example.com/mmjax.git", "--ref=abc123", *TRAIN_ARGS])
    assert result.returncode == 0, result.stderr
    create, install, train = result.stdout.splitlines()[:3]
    assert create == ("gcloud compute tpus queued-resources create mm --node-id=mm --zone=us-west4-a --project=proj "
                      "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot")
    assert install.startswith("gcloud compute tpus tpu-vm ssh mm --zone=us-west4-a --project=proj --worker=all")
    assert "git clone --quiet https://example.com/mmjax.git ~/mmjax" in install and "checkout --quiet abc123" in install
    assert 'pip install --quiet -e "$HOME/mmjax[tpu]"' in install
    assert "--worker=all" in train and "MMJAX_DISTRIBUTED=auto python3 -m mmjax.train --config=configs/base.py" in train
    assert "--workdir=gs://bucket/runs/mm --config.total_steps=10" in train


@pytest.mark.parametrize("accelerator, runtime", [
    ("v5p-32", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v4-8", "tpu-ubuntu2204-base")])
def test_tpu_pod_chooses_the_runtime_and_trains_detached(accelerator, runtime):
    result = run(["bash", POD, "--dry-run", "--name=mm", "--zone=z", f"--accelerator={accelerator}", "--repo=r",
                  "--ref=x", *TRAIN_ARGS])
    assert result.returncode == 0, result.stderr
    create, _, start, poll = result.stdout.splitlines()[:4]
    assert create.endswith(f"--accelerator-type={accelerator} --runtime-version={runtime}")
    assert f"tpu_pod.sh: {accelerator} with runtime {runtime}" in result.stderr
    # nohup + setsid in the background on every worker: a dropped ssh connection does not stop it
    command = shlex.split(start)[-1].removeprefix("--command=")  # the shell line each worker runs
    assert "--worker=all" in start and command == "rm -f ~/mmjax-train.status; nohup setsid bash -c 'cd ~/mmjax && MMJAX_DISTRIBUTED=auto python3 -m mmjax.train " \
        "--config=configs/base.py --workdir=gs://bucket/runs/mm --config.total_steps=10 >> ~/mmjax-train.log 2>&1; " \
        "echo $? > ~/mmjax-train.status.tmp && mv ~/mmjax-train.status.tmp ~/mmjax-train.status' " \
        "> /dev/null 2>&1 < /dev/null & echo $! > ~/mmjax-train.pid"
    assert "| tee" not in start and "--worker=all" in poll and "cat ~/mmjax-train.status" in poll
    assert "follow it with: " in result.stderr and "--action=logs" in result.stderr
    assert "--runtime-version=v2-alpha-tpuv5-lite" not in create or accelerator.startswith("v5litepod")


def test_tpu_pod_attach_follows_the_log_and_unknown_accelerators_need_a_version():
    attach = run(["bash", POD, "--dry-run", "--name=mm", "--zone=z", "--action=train", "--attach", *TRAIN_ARGS])
    assert "--worker=0 '--command=tail -n 200 -F --pid=$(cat ~/mmjax-train.pid) ~/mmjax-train.log'" in attach.stdout
    bad = run(["bash", POD, "--dry-run", "--name=mm", "--zone=z", "--accelerator=v9x-8"])
    assert bad.returncode == 2 and "no known runtime for --accelerator=v9x-8; pass --version=RUNTIME" in bad.stderr
    chosen = run(["bash", POD, "--dry-run", "--name=mm", "--zone=z", "--accelerator=v9x-8", "--version=v2-custom",
                  "--action=create"])
    assert chosen.stdout.strip().endswith("--runtime-version=v2-custom")


def test_tpu_pod_stop_and_delete():
    stop = run(["bash", POD, "--dry-run", "--name=mm", "--zone=z", "--action=stop"])
    assert "--worker=all '--command=pkill -TERM -f mmjax.train || true'" in stop.stdout
    delete = run(["bash", POD, "--dry-run", "--name=mm", "--zone=z", "--action=delete"])
    assert delete.stdout.strip() == "gcloud compute tpus queued-resources delete mm --zone=z --force --quiet"


def test_tpu_pod_bad_options_are_clear():
    assert "--name is required" in run(["bash", POD, "--zone=z"]).stderr
    bad = run(["bash", POD, "--name=mm", "--zone=z", "--frobnicate"])
    assert bad.returncode == 2 and "unknown option '--frobnicate'" in bad.stderr


def fake_gcloud(tmp_path, train_statuses, states, polls=("ok",)):
    """A gcloud stand-in: logs its calls; a started training run reports the given exit
    statuses in turn when polled; a poll in `polls` marked 'drop' fails like a dropped
    connection, 'running' reports a run still going, 'lost' one that vanished from a worker."""
    (tmp_path / "train_statuses").write_text("\n".join(map(str, train_statuses)) + "\n")
    (tmp_path / "states").write_text("\n".join(states) + "\n")
    (tmp_path / "polls").write_text("\n".join(polls) + "\n")
    script = tmp_path / "gcloud"
    script.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {tmp_path}/calls
pop() {{ local v; v=$(head -n 1 "$1"); [ $(wc -l < "$1") -gt 1 ] && sed -i 1d "$1"; echo "$v"; }}
case "$*" in
  *"queued-resources describe"*) pop {tmp_path}/states ;;
  *"mmjax-status="*) case $(pop {tmp_path}/polls) in
      drop) exit 255 ;;
      running) echo "mmjax-status=running"; echo "mmjax-status=0" ;;
      lost) echo "mmjax-status=0"; echo "mmjax-status=lost" ;;
      *) echo "mmjax-status=$(pop {tmp_path}/train_statuses)" ;;
    esac ;;
esac
exit 0
""")
    script.chmod(0o755)
    return str(script)


def test_tpu_pod_resumes_after_preemption(tmp_path):
    # status 75: the run saved a checkpoint on SIGTERM; then the slice itself is preempted
    # (SUSPENDED) and must be recreated and reinstalled; the third run finishes.
    gcloud = fake_gcloud(tmp_path, [75, 1, 0], ["ACTIVE", "SUSPENDED", "SUSPENDED", "ACTIVE"])
    result = run(["bash", POD, "--name=mm", "--zone=z", "--accelerator=v5litepod-16", "--repo=r", "--ref=x", *TRAIN_ARGS],
                 env={"GCLOUD": gcloud, "TPU_POD_POLL_S": "0"})
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    trains = [c for c in calls if "-m mmjax.train" in c]
    assert len(trains) == 3
    assert sum("queued-resources delete" in c for c in calls) == 1
    assert sum("queued-resources create" in c for c in calls) == 1
    assert sum("git clone" in c for c in calls) == 2  # installed at the start and on the new slice
    assert "resuming (restart 1/10)" in result.stdout and "recreating it and resuming (restart 2/10)" in result.stdout


def test_tpu_pod_gives_up_on_a_failure_of_a_healthy_slice(tmp_path):
    gcloud = fake_gcloud(tmp_path, [1], ["ACTIVE"])
    result = run(["bash", POD, "--name=mm", "--zone=z", "--action=train", *TRAIN_ARGS],
                 env={"GCLOUD": gcloud, "TPU_POD_POLL_S": "0"})
    assert result.returncode == 2
    assert "training failed with status 1 on a healthy slice" in result.stderr


def test_tpu_pod_a_dropped_connection_does_not_restart_training(tmp_path):
    # the first poll's ssh fails (slice still ACTIVE), the next finds a worker still running
    gcloud = fake_gcloud(tmp_path, [0], ["ACTIVE"], polls=["drop", "running", "ok"])
    result = run(["bash", POD, "--name=mm", "--zone=z", "--action=train", *TRAIN_ARGS],
                 env={"GCLOUD": gcloud, "TPU_POD_POLL_S": "0"})
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert sum("-m mmjax.train" in c for c in calls) == 1 and sum("mmjax-status=" in c for c in calls) == 3
    assert "training finished" in result.stdout


def test_tpu_pod_a_run_gone_from_a_restarted_worker_is_started_again(tmp_path):
    gcloud = fake_gcloud(tmp_path, [0], ["ACTIVE"], polls=["lost", "ok"])
    result = run(["bash", POD, "--name=mm", "--zone=z", "--action=train", *TRAIN_ARGS],
                 env={"GCLOUD": gcloud, "TPU_POD_POLL_S": "0"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gone from a worker without an exit status (worker restarted?); resuming (restart 1/10)" in result.stdout
    assert sum("-m mmjax.train" in c for c in (tmp_path / "calls").read_text().splitlines()) == 2


def test_gpu_slurm_starts_one_process_per_node():
    result = run(["bash", "launch/gpu_slurm.sh", "--config=configs/base.py", "--workdir=/shared/x"],
                 env={"MMJAX_DRY_RUN": "1", "SLURM_SUBMIT_DIR": ROOT})
    assert result.returncode == 0, result.stderr
    srun, plan = result.stdout.strip().splitlines()
    assert srun == ("srun --ntasks-per-node=1 --kill-on-bad-exit=1 python -m mmjax.train "
                    "--config=configs/base.py --workdir=/shared/x")
    # each node's one process drives all 8 of its GPUs
    assert plan == ("mmjax: process 0 of 2 (slurm) joining the coordinator found by jax's cluster detection "
                    "with 8 local GPUs 0,1,2,3,4,5,6,7")
