"""The train loop's pieces on 8 fake devices: sharded state, sharded steps, resume."""
import json
import shutil
import threading

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmjax import checkpoint, evaluators, metrics, sharding, train, trainer
from mmjax.data import pipeline, sources
from mmjax.models.multimodal import build_model


def setup(config, devices):
    """Mesh, model, optimizer, initial state and compiled steps, as train.train builds them."""
    mesh = sharding.make_mesh(config.mesh, devices)
    source = sources.open_source(config.data.train, "train", config.data)
    model = build_model(config, source.num_classes)
    tx, schedule = trainer.make_optimizer(config)
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    abstract, shardings, init_fn = trainer.sharded_state_shapes(
        model, tx, trainer.batch_shapes(config, config.batch_size), mesh
    )
    step = trainer.compile_train_step(model, tx, schedule, dropout_rng, config, mesh, abstract, shardings)
    return mesh, source, init_fn(init_rng), step


def run_steps(config, devices, num_steps=3):
    mesh, source, state, step = setup(config, devices)
    it = pipeline.train_batches(source, config, global_batch=config.batch_size)
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, sharding.host_batch_to_global(next(it), mesh))
        losses.append(float(metrics["train/loss"]))
    it.close()
    return losses, state


def test_step_on_2x2x2_mesh_matches_one_device(tiny_config):
    config = tiny_config(model__dropout=0.1)
    one, _ = run_steps(config, jax.devices()[:1])
    config.mesh.update(data=2, fsdp=2, tensor=2)
    eight, _ = run_steps(config, jax.devices())
    assert one[0] > 1.0  # a real loss, not a constant
    np.testing.assert_allclose(eight, one, rtol=2e-5)


def test_parameters_are_sharded_as_the_rules_say(tiny_config):
    config = tiny_config(mesh__data=2, mesh__fsdp=2, mesh__tensor=2)
    _, _, state, _ = setup(config, jax.devices())
    params = state.params
    # (spec, per-device shard shape) expected from LOGICAL_RULES on a 2x2x2 mesh
    expected = {
        ("text", "token_embed", "embedding"): (P("tensor", "fsdp"), (192, 32)),  # (vocab, embed)
        ("fusion", "transformer", "layers", "attn", "query", "kernel"): (P(None, "fsdp", "tensor", None), (1, 32, 2, 16)),
        ("fusion", "transformer", "layers", "attn", "out", "kernel"): (P(None, "tensor", None, "fsdp"), (1, 2, 16, 32)),
        ("image", "transformer", "layers", "mlp", "fc1", "kernel"): (P(None, "fsdp", "tensor"), (1, 32, 64)),
        ("audio", "pos_embed", "embedding"): (P(None, "fsdp"), None),
        ("head", "out", "kernel"): (P("fsdp", None), None),
    }
    for path, (spec, shard_shape) in expected.items():
        leaf = params
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.spec == spec, path
        if shard_shape is not None:
            assert leaf.addressable_shards[0].data.shape == shard_shape, path
    # Adam's moments are sharded like the parameters they track.
    adam = state.opt_state[1][0]
    assert adam.mu["text"]["token_embed"]["embedding"].sharding.spec == P("tensor", "fsdp")


def read_losses(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_resume_from_checkpoint_continues_with_identical_losses(tiny_config, tmp_path):
    config = tiny_config(mesh__data=4, mesh__fsdp=2)
    full = tmp_path / "full"
    train.train(config, str(full))
    # A run that stopped after its step-3 checkpoint: only that checkpoint is left.
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / "3", resumed / "checkpoints" / "3")
    final = train.train(config, str(resumed))
    full_losses, resumed_losses = read_losses(full), read_losses(resumed)
    assert sorted(resumed_losses) == [4, 5, 6]
    assert [resumed_losses[s] for s in (4, 5, 6)] == [full_losses[s] for s in (4, 5, 6)]
    assert final["eval/accuracy"] == read_eval(full)[6]


def read_eval(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}


def test_an_exception_in_an_evaluator_closes_the_prefetcher_checkpointer_and_writers(tiny_config, tmp_path,
                                                                                    monkeypatch):
    """Teardown happens in one place: whatever raises inside the loop, nothing is left open."""
    before = set(threading.enumerate())
    closed = []
    for cls in (checkpoint.Checkpointer, metrics.MetricWriters):
        monkeypatch.setattr(cls, "close", lambda self, close=cls.close: (closed.append(type(self)), close(self)))

    def broken_eval(self, state):
        raise RuntimeError("evaluator broke")

    monkeypatch.setattr(evaluators.TaskEvaluator, "run", broken_eval)
    with pytest.raises(RuntimeError, match="evaluator broke"):
        train.train(tiny_config(), str(tmp_path))  # the first eval is at step 3
    assert not [t for t in set(threading.enumerate()) - before if t.name == "mmjax-prefetch" and t.is_alive()]
    assert sorted(c.__name__ for c in closed) == ["Checkpointer", "MetricWriters"]
