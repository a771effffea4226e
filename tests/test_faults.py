"""Non-finite steps are skipped and counted; too many in a row stop the run with a diagnostic."""
import json

import jax
import numpy as np
import pytest
from test_train import setup

from mmjax import faults, sharding, train
from mmjax.data import codec, pipeline, sources, writer


def poisoned_copy(config, directory, bad_batches):
    """The synthetic train set with NaN audio in one example of each of `bad_batches`."""
    source = sources.open_source("synthetic", "train", config.data)
    bad = {int(pipeline.batch_example_indices(source, config, global_batch=config.batch_size, batch=b)[0])
           for b in bad_batches}
    records = []
    for i in range(source.num_examples):
        example = codec.decode(source.records[i])
        if i in bad:
            example = {**example, "audio": np.full_like(example["audio"], np.nan)}
        records.append(codec.encode(example))
    writer.write_dataset(str(directory), records, source.spec)
    return str(directory)


def read_rows(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def test_train_step_skips_a_non_finite_update(tiny_config):
    config = tiny_config()
    mesh, source, state, step = setup(config, jax.devices()[:1])
    batch = next(iter(pipeline.train_batches(source, config, global_batch=config.batch_size)))
    params = jax.device_get(state.params)
    opt_state = jax.device_get(state.opt_state)
    nan_batch = {**batch, "audio": np.full_like(batch["audio"], np.nan)}
    new, metrics = step(state, sharding.host_batch_to_global(nan_batch, mesh))
    assert float(metrics["train/skipped_steps"]) == 1.0 and np.isnan(float(metrics["train/loss"]))
    assert int(new.step) == 1  # the step (schedule, dropout rng, data) still moves on
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.params), params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.opt_state), opt_state)
    new, metrics = step(new, sharding.host_batch_to_global(batch, mesh))
    assert float(metrics["train/skipped_steps"]) == 0.0
    # A finite step updates the optimizer state (the moments, and its own step count: like
    # optax.apply_if_finite, skipped steps do not advance the optimizer's schedule).
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(new.opt_state), opt_state))
    assert any(changed)


def test_bad_batches_are_skipped_counted_and_training_goes_on(tiny_config, tmp_path):
    config = tiny_config(max_bad_steps=3, eval_every=100)
    config.data.train = poisoned_copy(config, tmp_path / "poisoned", bad_batches=(1, 2, 4))
    final = train.train(config, str(tmp_path / "run"))
    rows = [r for r in read_rows(tmp_path / "run") if "train/loss" in r]
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 1, 0, 1, 0]  # steps 2, 3, 5: batches 1, 2, 4
    assert np.isnan([r["train/loss"] for r in rows][1])
    assert np.isfinite(final["eval/loss"])  # the skipped updates never reached the parameters
    assert not (tmp_path / "run" / faults.BAD_STEPS_FILE).exists()


def test_max_bad_steps_in_a_row_stop_with_the_batches_in_a_diagnostic(tmp_path, tiny_args, tiny_config,
                                                                      monkeypatch, capsys):
    """NaN audio in each of the first batches makes every update non-finite: the run stops
    at the third. (An infinite learning rate did the same; it is now a config error.)"""
    monkeypatch.setenv("MMJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "off")
    poisoned = poisoned_copy(tiny_config(), tmp_path / "poisoned", bad_batches=(0, 1, 2, 3))
    workdir = tmp_path / "run"
    status = train.main(["mmjax.train", *tiny_args, f"--config.data.train={poisoned}", "--config.max_bad_steps=3",
                         "--config.log_every=2", f"--workdir={workdir}"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "mmjax.train: error: 3 consecutive steps (1..3) had a non-finite loss or gradient" in err
    assert "config.max_bad_steps=3" in err and str(workdir / "bad_steps.json") in err
    report = json.load(open(workdir / "bad_steps.json"))
    assert [s["step"] for s in report["steps"]] == [1, 2, 3]
    assert [s["batch"] for s in report["steps"]] == [0, 1, 2]
    config = train._parse_command_line(["mmjax.train", *tiny_args, f"--workdir={workdir}"])[0]
    config.data.cache_dir = ""
    source = sources.open_source("synthetic", "train", config.data)
    for s in report["steps"]:
        expected = pipeline.batch_example_indices(source, config, global_batch=16, batch=s["batch"])
        assert s["example_indices"] == expected.tolist()


def test_batch_example_indices_name_the_examples_of_a_batch(tiny_config):
    config = tiny_config()
    source = sources.open_source("synthetic", "train", config.data)
    it = pipeline.train_batches(source, config, global_batch=16)
    for j in range(10):  # past the end of the first epoch (8 batches)
        batch = next(it)
        indices = pipeline.batch_example_indices(source, config, global_batch=16, batch=j)
        stored = [codec.decode(source.records[int(i)]) for i in indices]
        assert batch["label"].tolist() == [e["label"] for e in stored]
        assert np.array_equal(batch["image"], np.stack([e["image"] for e in stored]))
    it.close()


@pytest.mark.parametrize("value", ["kill_after_step", "explode=3", "kill_during_save=x"])
def test_fault_injection_variable_is_checked(monkeypatch, value):
    monkeypatch.setenv(faults.FAULT_ENV, value)
    with pytest.raises(faults.UserError, match="MMJAX_FAULT_INJECT=.*entries are kill_after_step=STEP"):
        faults.injected()


def test_fault_injection_is_read_once_when_the_run_starts(monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "kill_after_step=5,kill_during_save=6")
    injection = faults.Injection.from_env()  # what train() does, once
    monkeypatch.setenv(faults.FAULT_ENV, "not read again")
    killed, settled = [], []
    monkeypatch.setattr(faults, "_die", lambda: killed.append(True))
    injection.kill_after_step(4, lambda: settled.append(4))
    assert not killed and not settled
    injection.kill_after_step(5, lambda: settled.append(5))
    assert killed and settled == [5]  # checkpoints in flight settle first
    assert injection.checkpoint_temporary_path_class() is not None
    assert faults.Injection().checkpoint_temporary_path_class() is None  # unset: Orbax's default
