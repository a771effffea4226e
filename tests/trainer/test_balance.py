"""Per-modality heads and modality balancing (config.fusion.aux_weight / balance):
switched off they change nothing; OGM-GE scales only the leading encoder's gradients;
gradient blending's weights follow G/O^2, live in the state and resume exactly."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import config as config_lib
from mmjax import export, objectives, predict, sharding, train, trainer
from mmjax.config import UserError
from mmjax.data import codec, pipeline, sources
from mmjax.models.multimodal import build_model
from mmjax.trainer import balance


# ---------------------------------------------------------------------------- OGM-GE
def test_ogm_scales_only_the_leading_encoders_gradients():
    ones = lambda *shape: jnp.ones(shape, jnp.float32)  # noqa: E731
    grads = {"image": {"a": ones(3, 2), "b": {"c": ones(4)}}, "audio": {"a": ones(2)},
             "fusion": {"k": ones(2, 2)}, "head": {"out": ones(3)}, "unimodal": {"image": {"out": ones(3)}}}
    c = balance.ogm_coefficients({"image": jnp.float32(0.9), "audio": jnp.float32(0.3)}, alpha=0.5)
    np.testing.assert_allclose(c["image"], 1 - np.tanh(0.5 * (0.9 / 0.3 - 1)), rtol=1e-6)
    assert float(c["audio"]) == 1.0  # behind: never scaled (and never scaled up)
    out = balance.modulate(grads, c)
    for leaf in jax.tree.leaves(out["image"]):
        np.testing.assert_allclose(leaf, float(c["image"]), rtol=1e-6)
    for name in ("audio", "fusion", "head", "unimodal"):  # the unimodal heads are not the encoder
        for new, old in zip(jax.tree.leaves(out[name]), jax.tree.leaves(grads[name])):
            assert np.array_equal(new, old), name
    # GE: noise on the scaled encoder only, from the rng (same rng, same noise).
    grads["image"]["a"] = jnp.arange(6.0).reshape(3, 2)
    noisy = balance.modulate(grads, c, jax.random.key(3))
    again = balance.modulate(grads, c, jax.random.key(3))
    assert np.array_equal(noisy["image"]["a"], again["image"]["a"])
    assert not np.allclose(noisy["image"]["a"], grads["image"]["a"] * c["image"])
    assert np.array_equal(noisy["audio"]["a"], grads["audio"]["a"])
    # One modality alone, or equal scores: nothing is scaled.
    assert float(balance.ogm_coefficients({"image": jnp.float32(0.9)}, 0.5)["image"]) == 1.0
    even = balance.ogm_coefficients({"image": jnp.float32(0.4), "audio": jnp.float32(0.4)}, 0.5)
    assert all(float(v) == 1.0 for v in even.values())


# ---------------------------------------------------------------------------- gradient blending
def test_blend_weights_follow_generalisation_over_overfitting_squared():
    blend = balance.initial_blend(3)
    np.testing.assert_allclose(blend.weights, [1 / 3] * 3)
    # First evaluation: only the reference point; train losses are means since the start.
    blend = blend.replace(train_sum=np.array([4.0, 6.0, 8.0], np.float32), train_steps=np.float32(2))
    first = balance.reestimate(blend, [2.5, 3.5, 4.5])
    np.testing.assert_allclose(first.weights, [1 / 3] * 3)
    np.testing.assert_allclose(first.prev_train, [2.0, 3.0, 4.0])
    assert float(first.train_steps) == 0 and float(first.train_sum.sum()) == 0 and int(first.points) == 1
    # Second: train now (1.0, 2.0, 3.0), eval now (2.0, 3.4, 4.6).
    second = balance.reestimate(first.replace(train_sum=np.array([3.0, 6.0, 9.0], np.float32),
                                              train_steps=np.float32(3)), [2.0, 3.4, 4.6])
    gain = np.array([2.5 - 2.0, 3.5 - 3.4, 4.5 - 4.6])  # the third head got worse: weight 0
    overfit = (np.array([2.0, 3.4, 4.6]) - [1.0, 2.0, 3.0]) - (np.array([2.5, 3.5, 4.5]) - [2.0, 3.0, 4.0])
    expected = np.maximum(gain, 0) / overfit**2
    np.testing.assert_allclose(second.weights, expected / expected.sum(), rtol=1e-5)
    assert second.weights[2] == 0 and abs(float(second.weights.sum()) - 1) < 1e-6
    # No head gained: the weights stay.
    third = balance.reestimate(second.replace(train_sum=np.array([1.0, 2.0, 3.0], np.float32),
                                              train_steps=np.float32(1)), [3.0, 4.0, 5.0])
    np.testing.assert_allclose(third.weights, second.weights)


def read_rows(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_gradient_blending_reports_per_head_metrics_and_resumes_exactly(tiny_config, tmp_path):
    config = tiny_config(modalities="image,text", fusion__aux_weight=1.0, fusion__balance="gradient_blending",
                         eval_every=2, checkpoint_every=4)
    full = str(tmp_path / "full")
    train.train(config, full)
    rows = read_rows(full)
    train_rows = {r["step"]: r for r in rows if "train/loss" in r}
    eval_rows = {r["step"]: r for r in rows if "eval/loss" in r}
    for m in ("image", "text"):
        assert {f"train/accuracy_{m}", f"train/loss_{m}", f"train/balance_{m}"} <= set(train_rows[1])
        assert {f"eval/accuracy_{m}_only", f"eval/loss_{m}_only"} <= set(eval_rows[2])
    weights = lambda r: [r[f"train/balance_{h}"] for h in ("fused", "image", "text")]  # noqa: E731
    assert weights(train_rows[1]) == weights(train_rows[4]) == pytest.approx([1 / 3] * 3)  # until step 4's eval
    assert weights(train_rows[5]) != pytest.approx([1 / 3] * 3) and sum(weights(train_rows[5])) == pytest.approx(1)

    # Killed after the step-4 checkpoint: the re-estimated weights come back with the state.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(os.path.join(full, "checkpoints", "4"), os.path.join(resumed, "checkpoints", "4"))
    train.train(config, resumed)
    again = {r["step"]: r for r in read_rows(resumed) if "train/loss" in r}
    assert sorted(again) == [5, 6]
    for step in (5, 6):
        assert {k: v for k, v in again[step].items() if "balance" in k or "loss" in k} == \
               {k: v for k, v in train_rows[step].items() if "balance" in k or "loss" in k}

    # The export keeps the heads' parameters; its function (and the predictor) gives the fused head's.
    out = str(tmp_path / "E")
    export.export(full, out, platforms=("cpu",), log=lambda *a, **k: None)  # test_export covers the others
    tensors, _ = predict.read_safetensors(os.path.join(out, "params.safetensors"))
    assert any(name.startswith("unimodal/image/") for name in tensors)
    predictor = predict.Predictor(out)
    example = codec.decode(sources.open_source(config.data.eval, "eval", config.data).records[0])
    row = predictor.example(image=np.asarray(example["image"]), text=example["text"])
    run_config, params, _, meta = export.restore_params(full)
    fused = jax.nn.softmax(build_model(run_config, meta["num_classes"]).apply(
        {"params": params}, predictor._batch([row]), train=False)[0])
    np.testing.assert_allclose(predictor.probabilities([row])[0], fused, atol=1e-5)


# ---------------------------------------------------------------------------- off: nothing changes
def compiled(config) -> dict:
    """The pieces train.train builds for `config`, on one device: model, optimizer, initial
    state, the compiled step, and batches(n), the first n global training batches."""
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    source = sources.open_source(config.data.train, "train", config.data)
    model = build_model(config, source.num_classes)
    tx, schedule = trainer.make_optimizer(config)
    objective = objectives.Objective.from_config(config)
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    abstract, shardings, init_fn = trainer.sharded_state_shapes(
        model, tx, trainer.batch_shapes(config, config.batch_size), mesh, objective=objective)
    step = trainer.compile_train_step(model, tx, schedule, dropout_rng, config, mesh, abstract, shardings,
                                      objective=objective)

    def batches(n):
        it = pipeline.train_batches(source, config, global_batch=config.batch_size)
        out = [sharding.host_batch_to_global(next(it), mesh) for _ in range(n)]
        it.close()
        return out

    return dict(mesh=mesh, model=model, tx=tx, abstract=abstract, init_fn=init_fn, init_rng=init_rng,
                dropout_rng=dropout_rng, state=init_fn(init_rng), step=step, batches=batches)


def test_heads_and_balancing_off_give_the_plain_steps_losses(tiny_config):
    """aux_weight=0 and balance='none' (the defaults): the compiled step's losses are those of
    a plain cross-entropy + optimizer step written here, and the state has no new leaf."""
    config = tiny_config(fusion__aux_weight=0.0, fusion__balance="none")
    run = compiled(config)
    model, tx, dropout_rng, mesh = run["model"], run["tx"], run["dropout_rng"], run["mesh"]
    assert run["abstract"].balance is None and "unimodal" not in run["abstract"].params

    @jax.jit
    def plain_step(state, batch):
        rng = jax.random.fold_in(dropout_rng, state.step)

        def loss_fn(params):
            logits = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["label"])
            return jnp.sum(ce) / ce.shape[0]

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state), loss

    with jax.set_mesh(mesh):
        ours, plain = run["state"], run["init_fn"](run["init_rng"])
        for batch in run["batches"](3):
            plain, plain_loss = plain_step(plain, batch)
            ours, metrics = run["step"](ours, batch)
            np.testing.assert_allclose(float(metrics["train/loss"]), float(plain_loss), rtol=1e-6)
    assert not any("balance" in k or k.startswith("train/accuracy_") for k in metrics)


# ---------------------------------------------------------------------------- OGM-GE in the step
def test_ogm_ge_step_logs_each_modalitys_gradient_scale(tiny_config):
    run = compiled(tiny_config(modalities="image,text", fusion__aux_weight=0.5, fusion__balance="ogm_ge"))
    (batch,) = run["batches"](1)
    _, metrics = run["step"](run["state"], batch)
    scales = [float(metrics[f"train/balance_{m}"]) for m in ("image", "text")]
    assert all(0 < s <= 1 for s in scales) and max(scales) == 1.0  # the one behind is never scaled
    assert np.isfinite(float(metrics["train/loss"])) and float(metrics["train/skipped_steps"]) == 0


# ---------------------------------------------------------------------------- bad combinations
@pytest.mark.parametrize("overrides, message", [
    ({"fusion.balance": "ogm_ge"}, r"config.fusion.balance: 'ogm_ge' reads the per-modality heads: set config.fusion.aux_weight > 0"),
    ({"fusion.aux_weight": "1.0", "loss.task": "none", "loss.contrastive": "sigmoid"},
     r"config.fusion.aux_weight: per-modality heads need a task loss"),
    ({"fusion.aux_weight": "1.0", "fusion.balance": "ogm_ge", "loss.task": "regression"},
     r"config.fusion.balance: 'ogm_ge' scores each head by its probability of the true target"),
    ({"fusion.aux_weight": "1.0", "fusion.balance": "gradient_blending", "modalities": "('image',)"},
     r"config.fusion.balance: 'gradient_blending' balances two or more modalities"),
    ({"fusion.aux_weight": "1.0", "fusion.balance": "gradient_blending", "evals.eval.prefix": "eval/main/"},
     r"re-estimates its weights from the 'task' evaluator with prefix 'eval/'"),
    ({"fusion.aux_weight": "-1.0"}, r"config.fusion.aux_weight: must be >= 0"),
    ({"fusion.balance": "ogm"}, r"config.fusion.balance: 'ogm' is not one of none, ogm_ge, gradient_blending"),
])
def test_bad_combinations_are_one_line_user_errors(overrides, message):
    config = config_lib.defaults()
    config_lib.apply_overrides(config, overrides)
    with pytest.raises(UserError, match=message) as error:
        config_lib.validate(config)
    assert "\n" not in str(error.value)
