"""SIGTERM makes a run save at the next step boundary and exit 75; rerunning resumes there."""
import json
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Long enough to be interrupted; only the preemption saves a checkpoint.
ARGS = ["--config.total_steps=200", "--config.batch_size=8", "--config.eval_every=1000",
        "--config.checkpoint_every=1000", "--config.data.synthetic.num_train=64",
        "--config.data.synthetic.num_eval=16"]


def test_sigterm_saves_and_exits_75_then_resumes(tmp_path, tiny_args):
    env = dict(os.environ, MMJAX_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-u", "-m", "mmjax.train", *tiny_args, *ARGS, f"--workdir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("step      3/200"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert "preempted: saved a checkpoint at step" in err
    saved = [int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < 200

    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {tmp_path / 'run'}/checkpoints/{saved[0]}" in result.stdout
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl") if "train/loss" in line]
    assert steps == list(range(1, 201))  # every step logged exactly once across the two runs
