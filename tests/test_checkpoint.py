"""Checkpoint integrity: fingerprints, damaged steps fall back, incompatible configs refused."""
import glob
import json
import os
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax import checkpoint as ckpt_lib
from mmjax import sharding, train
from mmjax.trainer import TrainState
from mmjax.config import UserError


def make_state(seed=0):
    """A small state sharded over the 8 devices, with float, int and 64-bit-free leaves."""
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    rng = np.random.default_rng(seed)
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    return {
        "step": put(np.int32(7), P()),
        "params": {"w": put(rng.normal(size=(64, 256)).astype(np.float32), P("data", "fsdp")),
                   "b": put(rng.normal(size=(256,)).astype(np.float32), P())},
        "count": put(np.arange(16, dtype=np.int32), P("data")),
    }


def test_fingerprint_catches_any_changed_word_and_ignores_sharding():
    state = make_state()
    base = ckpt_lib.fingerprints(state)
    assert set(base) == {"step", "params/w", "params/b", "count"}
    # The same values on one device give the same fingerprints.
    assert ckpt_lib.fingerprints(jax.device_put(state, jax.devices()[0])) == base
    w = np.asarray(state["params"]["w"])
    for index in [(0, 0), (31, 100), (63, 255)]:
        changed = w.copy()
        changed.view(np.uint32)[index] ^= 1 << 7  # one bit of one word
        assert ckpt_lib.fingerprints({**state, "params": {**state["params"], "w": changed}})["params/w"] != base["params/w"]
    swapped = w.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # the same words in another order
    assert ckpt_lib.fingerprints({**state, "params": {**state["params"], "w": swapped}})["params/w"] != base["params/w"]


def save_steps(directory, steps=(1, 2)):
    checkpointer = ckpt_lib.Checkpointer(directory, max_to_keep=5)
    for step in steps:
        checkpointer.save(step, make_state(seed=step), {"next_batch": step}, {"config": {"x": 1}})
    checkpointer.close()


def largest_array_file(step_dir):
    """The biggest file of array chunks. Orbax keeps those in each process's OCDBT folder;
    the top-level d/ holds the merged index, which can outgrow a tiny model's chunk files."""
    files = [f for f in glob.glob(f"{step_dir}/state/ocdbt.process_*/d/*") if os.path.isfile(f)]
    files = files or [f for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def overwrite_middle(step_dir, path=None):
    path = path or largest_array_file(step_dir)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xA5 for b in data[middle:middle + 8])
    open(path, "wb").write(bytes(data))


def overwrite_every_array_file(step_dir):
    """Overwrites bytes in each chunk file. A real run's state spans many files, and a
    file's middle may hold bytes no array still refers to (seen once in CI)."""
    for path in glob.glob(f"{step_dir}/state/ocdbt.process_*/d/*"):
        if os.path.getsize(path) > 1024:  # chunk data, not the small index nodes
            overwrite_middle(step_dir, path)


def delete_array_file(step_dir):
    os.remove(largest_array_file(step_dir))


def truncate_array_file(step_dir):
    path = largest_array_file(step_dir)
    os.truncate(path, os.path.getsize(path) // 3)


def delete_metadata(step_dir):
    shutil.rmtree(f"{step_dir}/meta")


@pytest.mark.parametrize("damage, why", [
    (overwrite_middle, "does not match its checksum"),
    (delete_array_file, "cannot read it"),
    (truncate_array_file, "cannot read it"),
    (delete_metadata, "cannot read its metadata"),
])
def test_damaged_latest_falls_back_to_the_newest_intact(tmp_path, damage, why):
    directory = tmp_path / "checkpoints"
    save_steps(directory)
    damage(directory / "2")
    lines = []
    checkpointer = ckpt_lib.Checkpointer(directory, max_to_keep=5)
    step, state, data_state, _ = checkpointer.restore_latest_intact(
        ckpt_lib.abstract_like(make_state()), {"x": 1}, log=lines.append)
    assert step == 1 and data_state == {"next_batch": 1}
    assert ckpt_lib.fingerprints(state) == ckpt_lib.fingerprints(make_state(seed=1))
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint {directory}/2 is damaged (")
    assert why in lines[0] and lines[0].endswith("; falling back to 1")
    # The damaged step is kept aside, out of the way of the next save of step 2.
    assert checkpointer.all_steps() == [1]
    assert os.path.isdir(tmp_path / "damaged_checkpoints" / "2")
    checkpointer.save(2, state, {"next_batch": 2}, {})
    checkpointer.close()


def test_overwritten_bytes_restore_silently_without_the_checksum(tmp_path):
    """Why the fingerprints exist: Orbax restores these damaged arrays without complaint."""
    directory = tmp_path / "checkpoints"
    save_steps(directory, steps=(1,))
    overwrite_middle(directory / "1")
    checkpointer = ckpt_lib.Checkpointer(directory, max_to_keep=5)
    abstract = ckpt_lib.abstract_like(make_state())
    state, _, _ = checkpointer.restore(1, abstract)
    assert not np.array_equal(np.asarray(state["params"]["w"]), np.asarray(make_state(seed=1)["params"]["w"]))
    with pytest.raises(ckpt_lib.CheckpointDamaged, match="array 'params/w' does not match its checksum"):
        checkpointer.restore_verified(1, abstract)
    checkpointer.close()


def test_no_intact_checkpoint_stops_and_says_so(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory)
    truncate_array_file(directory / "2")
    overwrite_middle(directory / "1")
    lines = []
    checkpointer = ckpt_lib.Checkpointer(directory, max_to_keep=5)
    with pytest.raises(UserError, match=r"no intact checkpoint in .*checkpoints: step\(s\) 2, 1 are damaged"):
        checkpointer.restore_latest_intact(ckpt_lib.abstract_like(make_state()), {"x": 1}, log=lines.append)
    assert [line.split(" is damaged")[0] for line in lines] == [f"checkpoint {directory}/2", f"checkpoint {directory}/1"]
    assert checkpointer.all_steps() == [1, 2]  # nothing moved when nothing could be restored
    checkpointer.close()


def test_incompatible_shapes_name_the_differing_config_keys():
    meta = {"state_shapes": ckpt_lib.state_shapes(make_state()),
            "config": {"model": {"width": 64, "depth": 2}, "optim": {"lr": 0.1}}}
    bigger = {**make_state(), "count": jnp.zeros((32,), jnp.int32)}
    with pytest.raises(UserError, match=r"different shapes; config keys that differ: model.width \(64 -> 32\), "
                                        r"optim.lr \(0.1 -> 0.2\)"):
        ckpt_lib.check_compatible(meta, bigger, {"model": {"width": 32, "depth": 2}, "optim": {"lr": 0.2}}, "W/3")
    # Same shapes: other config changes (a new learning rate, more steps) are allowed.
    ckpt_lib.check_compatible(meta, make_state(), {"model": {"width": 64, "depth": 2}, "optim": {"lr": 0.2}}, "W/3")


def test_save_timer_agrees_with_an_injected_clock():
    now = [100.0]
    timer = ckpt_lib.SaveTimer(60, clock=lambda: now[0])
    assert not timer.due()
    now[0] = 159.9
    assert not timer.due()
    now[0] = 160.0
    assert timer.due()
    timer.saved()
    assert not timer.due()
    assert not ckpt_lib.SaveTimer(0, clock=lambda: now[0] + 1e9).due()  # 0: off


def test_time_based_checkpoints_in_the_loop(tiny_config, tmp_path, monkeypatch):
    """checkpoint_every_seconds saves between step checkpoints. The clock is simulated:
    each reading (one per step, one per save) advances it 10 s."""
    ticks = iter(range(0, 10_000, 10))
    monkeypatch.setattr(ckpt_lib, "_now", lambda: float(next(ticks)))
    config = tiny_config(total_steps=7, checkpoint_every=100, eval_every=100, keep_checkpoints=10,
                         checkpoint_every_seconds=25.0)
    train.train(config, str(tmp_path))
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    # Due at the 3rd reading after each save (30 s >= 25 s); the last step always saves.
    assert steps == [3, 6, 7]


def edit_json(path, edit):
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def test_checkpoint_without_checksums_restores_with_a_note(tmp_path):
    """Checkpoints saved before fingerprints existed still resume (and say so). Their
    metadata had none of what came with the fingerprints: the format, the state shapes."""
    directory = tmp_path / "checkpoints"
    save_steps(directory, steps=(1,))
    edit_json(directory / "1" / "meta" / "metadata", lambda meta: {
        k: v for k, v in meta.items() if k not in ("fingerprints", "state_shapes", "format", "data_checksum")})
    lines = []
    checkpointer = ckpt_lib.Checkpointer(directory, max_to_keep=5)
    step, _, _, _ = checkpointer.restore_latest_intact(ckpt_lib.abstract_like(make_state()), {"x": 1}, log=lines.append)
    assert step == 1 and lines == [f"checkpoint {directory}/1 has no checksums (saved by an older mmjax); restored unverified"]
    checkpointer.close()


def test_a_state_saved_before_an_optional_field_existed_restores(tmp_path):
    """TrainState.balance (gradient blending) is None in other runs: their checkpoints, and
    those written before the field existed, have the same tree and restore either way."""
    class OldTrainState(struct.PyTreeNode):  # TrainState as it was before `balance`
        step: jax.Array
        params: dict
        opt_state: dict

    parts = make_state()
    old = OldTrainState(step=parts["step"], params=parts["params"], opt_state={"count": parts["count"]})
    manager = ocp_manager(tmp_path)
    manager.save(3, args=ocp.args.Composite(**{ckpt_lib.STATE: ocp.args.StandardSave(old),
                                               ckpt_lib.DATA: ocp.args.JsonSave({"next_batch": 3}),
                                               ckpt_lib.META: ocp.args.JsonSave({})}))
    manager.wait_until_finished()
    manager.close()

    new = TrainState(step=old.step, params=old.params, opt_state=old.opt_state)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), new)
    checkpointer = ckpt_lib.Checkpointer(tmp_path, max_to_keep=2, async_save=False)
    state, data, _ = checkpointer.restore(3, abstract)
    assert isinstance(state, TrainState) and state.balance is None and data == {"next_batch": 3}
    np.testing.assert_array_equal(state.params["w"], old.params["w"])
    checkpointer.save(4, state, {"next_batch": 4}, {})  # and today's save of it restores too
    checkpointer.wait()
    again, _, _ = checkpointer.restore(4, abstract)
    np.testing.assert_array_equal(again.opt_state["count"], old.opt_state["count"])
    checkpointer.close()


def ocp_manager(directory):
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True))


def drop_fingerprints(step_dir):
    edit_json(step_dir / "meta" / "metadata", lambda meta: {k: v for k, v in meta.items() if k != "fingerprints"})


def data_garbage(step_dir):
    (step_dir / "data" / "metadata").write_text("{not json")


def data_wrong_type(step_dir):
    (step_dir / "data" / "metadata").write_text('{"next_batch": "seven"}')


def data_changed(step_dir):
    edit_json(step_dir / "data" / "metadata", lambda data: {**data, "next_batch": 5})


@pytest.mark.parametrize("damage, why", [
    (drop_fingerprints, "its metadata has lost the array checksums"),
    (data_garbage, "cannot read it"),
    (data_wrong_type, "its data position (the 'data' item) does not match its checksum"),
    (data_changed, "its data position (the 'data' item) does not match its checksum"),
])
def test_lost_checksums_and_a_damaged_data_position_fall_back(tmp_path, damage, why):
    """Metadata of today's mmjax without fingerprints lost them (it is not an older
    checkpoint), and the data position is verified like the arrays."""
    directory = tmp_path / "checkpoints"
    save_steps(directory)
    damage(directory / "2")
    lines = []
    checkpointer = ckpt_lib.Checkpointer(directory, max_to_keep=5)
    step, _, data_state, _ = checkpointer.restore_latest_intact(
        ckpt_lib.abstract_like(make_state()), {"x": 1}, log=lines.append)
    checkpointer.close()
    assert step == 1 and data_state == {"next_batch": 1}
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint {directory}/2 is damaged ({why}")
    assert lines[0].endswith("; falling back to 1")


def test_an_old_checkpoint_without_a_data_checksum_still_checks_the_position():
    with pytest.raises(ckpt_lib.CheckpointDamaged, match=r"next_batch='x'"):
        ckpt_lib.check_data_state({"next_batch": "x"}, {"fingerprints": {}})
    ckpt_lib.check_data_state({"next_batch": 3}, {"fingerprints": {}})  # format 1: no checksum to compare


def test_reads_left_on_a_closed_event_loop_after_a_failed_restore_are_silent(tmp_path, capfd, caplog, monkeypatch):
    """A truncated chunk file fails one array's read; the others finish later on Orbax's
    closed event loop and tensorstore reports each ("RuntimeError: Event loop is closed",
    ~260 for the base model). The same situation, made deterministic with a tensorstore
    promise completed after its loop closed, prints nothing once a restore has failed."""
    import asyncio
    import tensorstore as ts

    def read_left_in_flight():
        promise, future = ts.Promise.new()

        async def failing_restore():
            asyncio.ensure_future(future)
            await asyncio.sleep(0)
            raise ValueError("one array failed")

        loop = asyncio.new_event_loop()
        with pytest.raises(ValueError):
            loop.run_until_complete(failing_restore())
        loop.close()
        promise.set_result(0)  # the read completes after its loop closed
        import gc
        gc.collect()

    reported = []  # what reaches the hook in place before the restore (Python's prints it)
    monkeypatch.setattr(sys, "unraisablehook", lambda args: reported.append(args.exc_value))
    directory = tmp_path / "checkpoints"
    save_steps(directory)
    truncate_array_file(directory / "2")
    capfd.readouterr()
    checkpointer = ckpt_lib.Checkpointer(directory, max_to_keep=5)
    lines = []
    step, _, _, _ = checkpointer.restore_latest_intact(ckpt_lib.abstract_like(make_state()), {"x": 1},
                                                       log=lines.append)
    checkpointer.close()
    assert step == 1 and len(lines) == 1
    read_left_in_flight()
    err = capfd.readouterr().err
    assert "Event loop is closed" not in err and "Traceback" not in err, err[-2000:]
    assert not reported and not [r for r in caplog.records if "Task was destroyed" in r.getMessage()]
    sys.unraisablehook(types.SimpleNamespace(exc_value=OSError("something else")))
    assert [str(e) for e in reported] == ["something else"]  # other unraisable errors still show
