"""config.select_best and config.early_stop_patience (mmjax/best.py): the best evaluation's
checkpoint is kept beside the latest ones and exported by default; a run whose metric stops
improving stops early with a note, and a run killed after the best was recorded resumes to
the same best step and the same stop step as one never interrupted.

Two runs, so that no assertion depends on this CPU's numerics: a trained run whose best
step is read from its own metrics.jsonl, and a run with every parameter frozen, whose
eval/accuracy is the same at every evaluation, so the best is the first evaluation and
patience runs out at a step fixed by the rules alone.
"""
import json
import math
import signal

import pytest
from test_checkpoint import make_state
from test_resume import committed
from test_resume import run as resume_run

from mmjax import best as best_lib
from mmjax import checkpoint as ckpt_lib
from mmjax import export, train
from mmjax.config import UserError
from mmjax.config.schema import parse_select_best

PATIENCE = 3
COMMON = ["--config.eval_every=2", "--config.keep_checkpoints=1", "--config.log_every=2",
          "--config.select_best=eval/accuracy"]
TRAINED = COMMON + ["--config.total_steps=12", "--config.checkpoint_every=6", "--config.optim.lr=3e-3"]
# Frozen: evaluations at 2, 4, 6, 8 tie, so the best is step 2 and patience 3 ends the run at 8.
FROZEN = COMMON + ["--config.total_steps=20", "--config.checkpoint_every=3", f"--config.early_stop_patience={PATIENCE}",
                   "--config.frozen=('image','text','audio','fusion','head')"]
BEST_STEP, STOP_STEP = 2, 8


# ---------------------------------------------------------------- the rules, without training
def test_select_best_direction_and_form():
    assert parse_select_best("eval/accuracy") == ("max", "eval/accuracy", None)
    assert parse_select_best("eval/loss")[:2] == ("min", "eval/loss")
    assert parse_select_best("eval/mae")[:2] == ("min", "eval/mae")
    assert parse_select_best("max:eval/loss")[:2] == ("max", "eval/loss")
    assert parse_select_best("min:eval/x/accuracy")[:2] == ("min", "eval/x/accuracy")
    assert parse_select_best("") == ("", "", None)
    assert "'max' or 'min'" in parse_select_best("best:eval/loss")[2]
    assert "names no metric" in parse_select_best("min:")[2]


def test_select_best_config_errors(tiny_config):
    with pytest.raises(UserError, match=r"config.select_best: 'top:eval/accuracy': the direction"):
        tiny_config(select_best="top:eval/accuracy")
    with pytest.raises(UserError, match=r"config.early_stop_patience: needs config.select_best"):
        tiny_config(early_stop_patience=2)


def test_tracker_counts_strict_improvements_and_resumes_its_count():
    tracker = best_lib.Tracker("eval/accuracy", "max", patience=2)
    seen = [tracker.update(s, v) for s, v in [(2, 0.5), (4, 0.7), (6, 0.7), (8, math.nan)]]
    assert seen == [True, True, False, False]  # a tie and NaN never improve
    assert (tracker.step, tracker.value, tracker.since, tracker.exhausted) == (4, 0.7, 2, True)
    again = best_lib.Tracker("eval/accuracy", "max", patience=3)
    again.resume({"next_batch": 8, best_lib.RECORD: tracker.record()}, log=print)
    assert (again.step, again.value, again.since, again.exhausted) == (4, 0.7, 2, False)
    lines = []
    other = best_lib.Tracker("eval/loss", "min")
    other.resume({best_lib.RECORD: tracker.record()}, log=lines.append)
    assert other.step is None and "tracked afresh" in lines[0]
    assert other.update(2, 3.0) and other.update(4, 2.0) and not other.update(6, 2.5)


def test_best_step_survives_rotation_and_reopening(tmp_path):
    checkpointer = ckpt_lib.Checkpointer(tmp_path, max_to_keep=2, keep_best="min")
    for step, value in [(1, 3.0), (2, None), (3, 2.0), (4, None), (5, None)]:
        checkpointer.save(step, make_state(step), {"next_batch": step}, {}, best_value=value)
    checkpointer.close()
    checkpointer = ckpt_lib.Checkpointer(tmp_path, max_to_keep=2, keep_best="min")
    assert checkpointer.all_steps() == [3, 4, 5]
    checkpointer.save(6, make_state(6), {"next_batch": 6}, {})
    checkpointer.wait()
    assert checkpointer.all_steps() == [3, 5, 6]  # reopened, it still knows step 3 is the best
    checkpointer.save(7, make_state(7), {"next_batch": 7}, {}, best_value=1.0)
    checkpointer.close()
    assert ckpt_lib.Checkpointer(tmp_path, max_to_keep=2).all_steps() == [6, 7]


# ---------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("best-cache")


def rows(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def outcome(workdir):
    """The per-step losses, the evaluations and the note (timings and compile rows left out)."""
    keep = lambda k: k == "train/loss" or k.startswith("eval/") or k == "note"  # noqa: E731
    return [{k: v for k, v in r.items() if k == "step" or keep(k)} for r in rows(workdir)
            if any(keep(k) for k in r)]


def first_best(workdir):
    """The step of the first evaluation with the highest logged eval/accuracy."""
    evals = [(r["step"], r["eval/accuracy"]) for r in rows(workdir) if "eval/accuracy" in r]
    return max(evals, key=lambda e: (e[1], -e[0]))[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("best-trained")
    result = resume_run(workdir, cache, args=TRAINED)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("best-stopped")
    result = resume_run(workdir, cache, args=FROZEN)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result.stdout


def test_the_best_logged_step_is_kept_and_exported(trained, tmp_path):
    best_step = first_best(trained)
    assert committed(trained) == sorted({best_step, 12})  # keep_checkpoints=1, and the best beside it
    data = ckpt_lib.Checkpointer(trained / "checkpoints", max_to_keep=9).read_data(12)
    assert data[best_lib.RECORD]["step"] == best_step
    lines = []
    spec = export.export(str(trained), str(tmp_path / "E"), platforms=("cpu",), log=lines.append)
    assert spec["source"]["step"] == best_step
    assert lines[0].startswith(f"exporting step {best_step} ")
    checkpointer = ckpt_lib.Checkpointer(trained / "checkpoints", max_to_keep=9)
    assert export.choose_step(checkpointer, str(trained), "latest") == (12, "the latest")
    assert export.choose_step(checkpointer, str(trained), str(best_step))[0] == best_step
    with pytest.raises(UserError, match="--step=soon: use best, latest or a step number"):
        export.choose_step(checkpointer, str(trained), "soon")


def test_early_stop_stops_when_patience_runs_out_and_notes_why(stopped, cache):
    workdir, stdout = stopped
    logged = rows(workdir)
    assert len({r["eval/accuracy"] for r in logged if "eval/accuracy" in r}) == 1  # frozen: all tie
    assert max(r["step"] for r in logged) == STOP_STEP  # nothing ran after the stop
    note = logged[-1]
    assert note["step"] == STOP_STEP and note["note"].startswith("stopped early: eval/accuracy has not improved")
    assert f"(step {BEST_STEP}) for {PATIENCE} evaluations" in note["note"]
    assert committed(workdir) == [BEST_STEP, STOP_STEP]
    data = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=9).read_data(STOP_STEP)
    assert data[best_lib.RECORD]["step"] == BEST_STEP and data[best_lib.RECORD]["since"] == PATIENCE
    assert f"done: {STOP_STEP} steps (stopped early)" in stdout

    again = resume_run(workdir, cache, args=FROZEN)  # the same command again: the run is over
    assert again.returncode == 0 and "training already stopped early" in again.stdout, again.stderr[-2000:]


def test_killed_after_the_best_resumes_to_the_same_best_and_stop(stopped, cache, tmp_path):
    ref_dir, _ = stopped
    workdir = tmp_path / "run"
    killed = resume_run(workdir, cache, fault=f"kill_after_step={STOP_STEP - 1}", args=FROZEN)
    assert killed.returncode == -signal.SIGKILL
    assert committed(workdir) == [BEST_STEP, 6]  # the patience count so far (2) must come from step 6

    resumed = resume_run(workdir, cache, args=FROZEN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {workdir}/checkpoints/6" in resumed.stdout
    assert outcome(workdir) == outcome(ref_dir)  # every loss, eval and the note, bitwise
    assert committed(workdir) == [BEST_STEP, STOP_STEP]


def test_select_best_must_name_a_reported_metric(tiny_config, tmp_path):
    config = tiny_config(select_best="eval/acc")
    with pytest.raises(UserError, match=r"config.select_best='eval/acc': no evaluator in config.evals reports "
                                        r"it; they report eval/accuracy, eval/loss$"):
        train.train(config, str(tmp_path / "run"))
