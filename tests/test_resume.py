"""A run killed with SIGKILL at any point and restarted with the same command ends with
exactly the per-step losses of a run that was never interrupted (bitwise, on CPU).

Kills are deterministic, not timed: MMJAX_FAULT_INJECT (mmjax/faults.py) makes the run
kill itself after a given step, or while a given step's checkpoint is being saved.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import TINY_OVERRIDES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 8 steps, checkpoints at 3 and 6 (and 8), every step logged, eval only at the end.
ARGS = ["--config.total_steps=8", "--config.checkpoint_every=3", "--config.eval_every=1000",
        "--config.log_every=1", "--config.batch_size=8", "--config.data.synthetic.num_train=64",
        "--config.data.synthetic.num_eval=16"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("resume-cache")


TINY_ARGS = ["--config=configs/base.py", *(f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items())]


def run(workdir, cache, fault="", args=ARGS):
    """The tiny run plus `args` in a fresh process (MMJAX_FAULT_INJECT=fault, if given)."""
    env = dict(os.environ, MMJAX_CACHE=str(cache), JAX_PLATFORMS="cpu", MMJAX_DISTRIBUTED="off",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("MMJAX_FAULT_INJECT", None)
    if fault:
        env["MMJAX_FAULT_INJECT"] = fault
    cmd = [sys.executable, "-m", "mmjax.train", *TINY_ARGS, *args, f"--workdir={workdir}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def metrics(workdir):
    """{step: row} for the train rows and the eval rows of metrics.jsonl; each step once."""
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = [r for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    assert len({r["step"] for r in train}) == len(train), "a step was logged twice"
    return {r["step"]: r["train/loss"] for r in train}, {r["step"]: r["eval/loss"] for r in evals}


def committed(workdir):
    return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("reference")
    result = run(workdir, cache)
    assert result.returncode == 0, result.stderr[-3000:]
    losses, evals = metrics(workdir)
    assert sorted(losses) == list(range(1, 9)) and sorted(evals) == [8]
    return losses, evals


def test_killed_between_checkpoints_resumes_bitwise(tmp_path, cache, reference):
    workdir = tmp_path / "run"
    killed = run(workdir, cache, fault="kill_after_step=5")
    assert killed.returncode == -signal.SIGKILL
    assert committed(workdir) == [3]
    assert max(metrics(workdir)[0]) == 5  # steps 4 and 5 ran and were logged, then lost

    resumed = run(workdir, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {workdir}/checkpoints/3" in resumed.stdout
    assert metrics(workdir) == reference  # every step's loss and the final eval, bitwise


def test_killed_during_checkpoint_saves_resumes_bitwise(tmp_path, cache, reference):
    workdir = tmp_path / "run"
    # First crash: while the first checkpoint (step 3) is written, so none is committed.
    killed = run(workdir, cache, fault="kill_during_save=3")
    assert killed.returncode == -signal.SIGKILL
    assert committed(workdir) == []
    assert any("orbax-checkpoint-tmp" in d for d in os.listdir(workdir / "checkpoints"))  # written, not committed

    # Second crash, after a restart from scratch: while step 6's checkpoint is written.
    killed = run(workdir, cache, fault="kill_during_save=6")
    assert killed.returncode == -signal.SIGKILL
    assert "resuming" not in killed.stdout
    assert committed(workdir) == [3]

    resumed = run(workdir, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {workdir}/checkpoints/3" in resumed.stdout
    assert metrics(workdir) == reference
    assert committed(workdir) == [3, 6, 8]
    assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]  # leftovers cleaned up


# The text decoders (config.loss.task='generate') on the describe task, with the generate
# evaluator decoding at the end: a kill between checkpoints changes no loss and no decoded text.
GENERATE_ARGS = ["--config.loss.task=generate", "--config.data.synthetic.task=describe",
                 "--config.data.target_length=18", "--config.decoder.depth=1", "--config.decoder.width=32",
                 "--config.evals.gen.kind=generate"]


def generate_rows(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    evals = {r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")} for r in rows if "eval/gen/bleu" in r}
    return train, evals


@pytest.mark.parametrize("kind", ["prefix", "cross"])
def test_generate_killed_between_checkpoints_resumes_bitwise(tmp_path, cache, kind):
    args = [*ARGS, *GENERATE_ARGS, f"--config.decoder.kind={kind}"]
    reference = run(tmp_path / "reference", cache, args=args)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = generate_rows(tmp_path / "reference")
    assert sorted(expected[0]) == list(range(1, 9)) and sorted(expected[1]) == [8]
    assert {"eval/gen/exact_match", "eval/gen/wer", "eval/gen/token_accuracy"} <= set(expected[1][8])

    workdir = tmp_path / "run"
    killed = run(workdir, cache, fault="kill_after_step=5", args=args)
    assert killed.returncode == -signal.SIGKILL and committed(workdir) == [3]
    resumed = run(workdir, cache, args=args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {workdir}/checkpoints/3" in resumed.stdout
    assert generate_rows(workdir) == expected
