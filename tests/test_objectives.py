"""Tests for mmjax/objectives.py: task sums, contrastive losses against plain numpy,
weights, recall@1 (the config errors are tested with the schema, tests/test_config.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import objectives
from mmjax.objectives import Objective

RNG = np.random.default_rng(0)


def log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def log_softmax(z, axis):
    return z - np.log(np.sum(np.exp(z - z.max(axis, keepdims=True)), axis, keepdims=True)) - z.max(axis, keepdims=True)


def test_classification_sums():
    logits = RNG.normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0])
    weights = np.array([1, 1, 1, 0, 1], np.float32)
    sums = objectives.classification_sums(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    ce = -log_softmax(logits.astype(np.float64), 1)[np.arange(5), labels]
    np.testing.assert_allclose(sums["loss"], np.sum(ce * weights), rtol=1e-5)
    assert float(sums["correct"]) == np.sum((logits.argmax(1) == labels) * weights)
    assert float(sums["count"]) == 4


def test_multilabel_sums_and_metrics():
    logits = jnp.array([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.5], [1.0, 1.0, 1.0]])
    targets = jnp.array([[1, 0, 0], [0, 1, 1], [1, 1, 1]])
    weights = jnp.array([1.0, 1.0, 0.0])
    sums = objectives.multilabel_sums(logits, targets, weights)
    z, t = np.asarray(logits[:2], np.float64), np.asarray(targets[:2], np.float64)
    bce = -(t * log_sigmoid(z) + (1 - t) * log_sigmoid(-z)).mean(1)
    np.testing.assert_allclose(sums["loss"], bce.sum(), rtol=1e-5)
    # Row 0 predicts {0, 2} for {0}: 2/3 right; row 1 predicts {1} for {1, 2}: 2/3 right.
    metrics = objectives.task_metrics("multilabel", jax.device_get(sums))
    np.testing.assert_allclose(metrics["label_accuracy"], 2 / 3, rtol=1e-6)
    assert float(metrics["exact_match"]) == 0.0
    np.testing.assert_allclose(metrics["f1"], 2 * 2 / (2 * 2 + 1 + 1), rtol=1e-6)  # tp 2, fp 1, fn 1


def test_regression_sums_and_metrics():
    predictions = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    targets = jnp.array([[0.0, 4.0], [1.0, 1.0]])
    sums = objectives.regression_sums(predictions, targets, jnp.array([1.0, 1.0]))
    metrics = objectives.task_metrics("regression", sums)
    np.testing.assert_allclose(metrics["mse"], ((1 + 4) / 2 + 1) / 2)
    np.testing.assert_allclose(metrics["mae"], ((1 + 2) / 2 + 1) / 2)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_contrastive_losses_match_numpy(kind):
    n, scale, bias = 6, 5.0, -2.0
    a, b = _unit(RNG.normal(size=(n, 4))), _unit(RNG.normal(size=(n, 4)))
    weights = np.array([1, 1, 0, 1, 1, 1], np.float32)  # row 2 is padding
    sums = objectives.contrastive_sums(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                                       jnp.float32(scale), jnp.float32(bias if kind == "sigmoid" else 0.0),
                                       jnp.asarray(weights), kind)
    keep = weights > 0
    logits = scale * a[keep] @ b[keep].T + (bias if kind == "sigmoid" else 0.0)
    m = keep.sum()
    if kind == "softmax":
        rows = -0.5 * (np.diag(log_softmax(logits, 1)) + np.diag(log_softmax(logits, 0)))
    else:
        signs = 2 * np.eye(m) - 1
        rows = -np.sum(log_sigmoid(signs * logits), axis=1)
    np.testing.assert_allclose(sums["loss"], rows.sum(), rtol=1e-5)
    assert float(sums["count"]) == m
    assert float(sums["hits_a_to_b"]) == np.sum(logits.argmax(1) == np.arange(m))
    assert float(sums["hits_b_to_a"]) == np.sum(logits.argmax(0) == np.arange(m))


def test_recall_is_perfect_for_matching_embeddings():
    a = jnp.asarray(_unit(RNG.normal(size=(8, 16))), jnp.float32)
    sums = objectives.contrastive_sums(a, a, jnp.float32(10.0), jnp.float32(0.0), jnp.ones(8), "softmax")
    assert float(sums["hits_a_to_b"]) == float(sums["hits_b_to_a"]) == 8.0


def config(**loss):
    values = dict(task="classification", contrastive="none", contrastive_pair=("image", "audio"),
                  contrastive_weight=1.0, contrastive_dim=8)
    values.update(loss)
    config = config_lib.defaults()
    config.update(dict(modalities=("image", "audio"), loss=values))
    return config


def test_objective_combines_and_names_metrics():
    objective = Objective.from_config(config(contrastive="sigmoid", contrastive_weight=0.5))
    n = 4
    emb = jnp.asarray(_unit(RNG.normal(size=(n, 8))), jnp.float32)
    aux = {"present": {"image": jnp.ones(n, bool), "audio": jnp.array([True, True, False, True])},
           "embeddings": {"image": emb, "audio": emb}, "scale": jnp.float32(10.0), "bias": jnp.float32(-10.0)}
    batch = {"label": jnp.array([0, 1, 2, 0])}
    logits = jnp.asarray(RNG.normal(size=(n, 3)), jnp.float32)
    sums = objective.sums((logits, aux), batch, jnp.ones(n))
    pair = sums["contrastive"]["image_to_audio"]
    assert float(pair["count"]) == 3  # the example without audio is left out
    loss = objective.loss(sums)
    expected = sums["task"]["loss"] / 4 + 0.5 * pair["loss"] / 3
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    metrics = objective.metrics(sums, "eval/")
    assert set(metrics) == {"eval/loss", "eval/task_loss", "eval/accuracy", "eval/contrastive_loss",
                            "eval/image_to_audio/contrastive_loss", "eval/image_to_audio/recall@1",
                            "eval/audio_to_image/recall@1"}
    assert float(metrics["eval/image_to_audio/recall@1"]) == 1.0
    plain = Objective.from_config(config())
    assert set(plain.metrics({"task": sums["task"]}, "train/")) == {"train/loss", "train/accuracy"}


def test_train_and_eval_steps_with_contrastive_modality_dropout_and_eval_without(tiny_config):
    """train.py's compiled step and evaluators on the redundant task: task + SigLIP loss,
    modality dropout, and an eval that also reports accuracy with the text removed."""
    from mmjax import evaluators, sharding, trainer
    from mmjax.data import pipeline, sources
    from mmjax.models.multimodal import build_model

    config = tiny_config(
        modalities="image,text", data__synthetic__task="redundant", loss__contrastive="sigmoid",
        loss__contrastive_pair="image,text", modality_dropout=0.5, eval_without="text",
    )
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    source = sources.open_source(config.data.train, "train", config.data)
    model = build_model(config, source.num_classes)
    tx, schedule = trainer.make_optimizer(config)
    abstract, shardings, init_fn = trainer.sharded_state_shapes(
        model, tx, trainer.batch_shapes(config, config.batch_size), mesh)
    train_step = trainer.compile_train_step(
        model, tx, schedule, jax.random.key(1), config, mesh, abstract, shardings)
    batches = pipeline.train_batches(source, config, global_batch=config.batch_size)
    state, metrics = train_step(init_fn(jax.random.key(0)), sharding.host_batch_to_global(next(batches), mesh))
    batches.close()
    assert {"train/loss", "train/accuracy", "train/contrastive_loss", "train/contrastive_scale"} <= set(metrics)
    np.testing.assert_allclose(metrics["train/contrastive_scale"], 10.0, rtol=1e-3)  # SigLIP's start
    context = evaluators.Context(config, model, Objective.from_config(config), mesh, abstract,
                                 {config.data.eval: source})
    final = {k: v for e in evaluators.build(config, context) for k, v in e.run(state).items()}
    assert {"eval/accuracy", "eval/accuracy_without_text", "eval/loss_without_text", "eval/contrastive_loss",
            "eval/image_to_text/recall@1", "eval/text_to_image/recall@1"} <= set(final)
    assert all(np.isfinite(float(v)) for v in final.values())
