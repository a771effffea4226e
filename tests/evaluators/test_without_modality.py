"""kind 'without_modality' (config.eval_without): today's metric names, and values equal to
the eval set run through the model with the modality masked out by hand."""
import jax
import numpy as np
import optax

from mmjax import evaluators, sharding, trainer
from mmjax.data import pipeline, sources
from mmjax.models.multimodal import build_model
from mmjax.objectives import Objective


def test_eval_without_gives_todays_names_and_the_masked_values(tiny_config):
    config = tiny_config(eval_without="audio")
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    source = sources.open_source(config.data.eval, "eval", config.data)
    model = build_model(config, source.num_classes)
    tx, _ = trainer.make_optimizer(config)
    abstract, _, init_fn = trainer.sharded_state_shapes(model, tx, trainer.batch_shapes(config, config.batch_size), mesh)
    state = init_fn(jax.random.key(0))
    context = evaluators.Context(config, model, Objective.from_config(config), mesh, abstract,
                                 {config.data.eval: source})
    metrics = {k: v for e in evaluators.build(config, context) for k, v in e.run(state).items()}
    assert set(metrics) == {"eval/loss", "eval/accuracy", "eval/loss_without_audio", "eval/accuracy_without_audio"}

    # By hand: every eval batch with present_audio=False, padding rows (weight 0) left out.
    apply = jax.jit(lambda params, batch: model.apply({"params": params}, batch, train=False))
    loss = correct = count = full_correct = 0.0
    for batch in pipeline.eval_batches(source, config, global_batch=config.batch_size):
        weight, labels = batch.pop("weight"), batch["label"]
        logits = np.asarray(apply(state.params, {**batch, "present_audio": np.zeros(len(weight), bool)}))
        loss += np.sum(np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels)) * weight)
        correct += np.sum((logits.argmax(-1) == labels) * weight)
        count += np.sum(weight)
        full_correct += np.sum((np.asarray(apply(state.params, batch)).argmax(-1) == labels) * weight)
    assert count == source.num_examples  # the padding rows of the last batch count for nothing
    np.testing.assert_allclose(metrics["eval/loss_without_audio"], loss / count, rtol=1e-5)
    np.testing.assert_allclose(metrics["eval/accuracy_without_audio"], correct / count, rtol=1e-6)
    np.testing.assert_allclose(metrics["eval/accuracy"], full_correct / count, rtol=1e-6)
    assert metrics["eval/loss_without_audio"] != metrics["eval/loss"]  # the mask reached the model
