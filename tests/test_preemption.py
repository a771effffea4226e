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


SHORT = ["--config.total_steps=6", "--config.batch_size=8", "--config.eval_every=1000", "--config.checkpoint_every=3",
         "--config.data.synthetic.num_train=64", "--config.data.synthetic.num_eval=16"]


def test_signals_before_and_in_the_loop_stop_cleanly(tmp_path, tiny_args):
    """Real processes, signals sent at deterministic points (MMJAX_FAULT_INJECT): SIGTERM
    while compiling or restoring exits 75 with one line (launch scripts retry), Ctrl-C in
    the loop saves the finished step and exits 130 with one line, and nothing is lost."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mmjax.train", *tiny_args, *SHORT, f"--workdir={workdir}"]

    def run(fault=""):
        env = dict(os.environ, MMJAX_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu", MMJAX_DISTRIBUTED="off",
                   XLA_FLAGS="--xla_force_host_platform_device_count=1", MMJAX_FAULT_INJECT=fault)
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    def one_line(result, status, text):
        assert result.returncode == status, result.stderr[-3000:]
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.startswith(f"mmjax.train: {text}"), result.stderr

    def saved():
        return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())

    one_line(run("sigterm_during_compile=0"), 75, "preempted before training started (nothing new to save)")
    assert saved() == []
    one_line(run("sigint_after_step=4"), 130, "interrupted (Ctrl-C): saved a checkpoint at step 4; run the same")
    assert saved() == [3, 4]  # the save of step 3 in flight was finished, and the finished step 4 saved
    one_line(run("sigterm_during_restore=4"), 75, "preempted before training started")
    assert saved() == [3, 4] and not (workdir / "damaged_checkpoints").exists()  # not mistaken for damage
    resumed = run()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {workdir}/checkpoints/4" in resumed.stdout
    steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl") if "train/loss" in line]
    assert steps == list(range(1, 7))
