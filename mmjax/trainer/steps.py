"""The train step, and compiling steps ahead of time for the sharded state.

Compiling ahead of time means the loop never pays for tracing, and a shape mismatch
between pipeline and model fails once, before training, with both shapes in the message.
Evaluators (mmjax/evaluators/) bring their own step functions and compile them here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmjax import objectives, sharding
from mmjax.config import UserError
from mmjax.trainer import balance
from mmjax.trainer.state import TrainState, batch_shapes


@contextlib.contextmanager
def as_user_error(where: str):
    """Turns the ValueErrors that library code raises for bad input into UserErrors."""
    try:
        yield
    except ValueError as e:
        message = str(e)
        raise UserError(message if "config." in message else f"{where}: {message}") from None


# ============================================================================ train step
def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, dropout_rng,
                    *, objective: objectives.Objective | None = None):
    """One optimizer update on a global batch; returns the new state and scalar metrics.

    `objective` (default: classification) says what the loss is; the metrics are
    'train/loss', the objective's own ('train/accuracy', ..., and 'train/accuracy_<m>' of
    per-modality heads), 'train/grad_norm', 'train/learning_rate', 'train/skipped_steps',
    for contrastive runs 'train/contrastive_scale', and with modality balancing
    'train/balance_<m>' (OGM-GE's gradient scale, or the blend weight of each head).

    A step whose loss, gradient or update is not finite keeps the old parameters and
    optimizer state (the step count still advances) and reports train/skipped_steps=1.
    """
    objective = objective or objectives.Objective()
    blending = objective.balance == "gradient_blending" and bool(objective.heads)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(dropout_rng, state.step)
        weights = jnp.ones(jax.tree.leaves(batch)[0].shape[:1], jnp.float32)
        if blending and state.balance is None:
            raise ValueError("fusion.balance='gradient_blending' keeps its weights in the state: build it with "
                             "trainer.sharded_state_shapes(..., objective=objective)")
        blend = state.balance.weights if blending else None

        def loss_fn(params):
            outputs = model.apply(
                {"params": params}, batch, train=True, aux=objective.needs_aux, rngs={"dropout": rng}
            )
            sums = objective.sums(outputs, batch, weights)
            extra = {"train/contrastive_scale": outputs[1]["scale"]} if objective.contrastive != "none" else {}
            return objective.loss(sums, blend), (sums, extra)

        (loss, (sums, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_balance = state.balance
        if objective.balance == "ogm_ge" and objective.heads:
            scores = {m: sums["unimodal"][m]["score"] / jnp.maximum(sums["unimodal"][m]["count"], 1.0)
                      for m in objective.heads}
            coefficients = balance.ogm_coefficients(scores, objective.ogm_alpha)
            noise_rng = jax.random.fold_in(rng, balance.NOISE_STREAM) if objective.ogm_noise else None
            grads = balance.modulate(grads, coefficients, noise_rng)
            extra.update({f"train/balance_{m}": c for m, c in coefficients.items()})
        if blending:
            new_balance = balance.accumulate(state.balance, objective.head_losses(sums))
            extra.update(balance.blend_metrics(objective, state.balance))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(updates))
        keep_if_bad = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = state.replace(
            step=state.step + 1,
            params=keep_if_bad(optax.apply_updates(state.params, updates), state.params),
            opt_state=keep_if_bad(opt_state, state.opt_state),
            balance=keep_if_bad(new_balance, state.balance),
        )
        metrics = {
            **objective.metrics(sums, "train/", blend=blend),
            **extra,
            "train/grad_norm": grad_norm,
            "train/learning_rate": schedule(state.step),
            "train/skipped_steps": 1.0 - finite.astype(jnp.float32),
        }
        return new_state, metrics

    return train_step


# ============================================================================ ahead-of-time compilation
def _abstract_batch(shapes: dict, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    batch_sharding = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(s, dt, sharding=batch_sharding) for k, (s, dt) in shapes.items()}


def compile_train_step(model, tx, schedule, dropout_rng, config: ml_collections.ConfigDict, mesh,
                       abstract_state, state_shardings, *, spec: dict | None = None,
                       objective: objectives.Objective | None = None):
    """The train step compiled for the sharded state (donated) and the batch layout of the
    training data's `spec` (see batch_shapes); `objective` defaults to config.loss's."""
    if objective is None:
        with as_user_error("config.loss"):
            objective = objectives.Objective.from_config(config)
    shapes = batch_shapes(config, config.batch_size, spec=spec)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        step = jax.jit(make_train_step(model, tx, schedule, dropout_rng, objective=objective),
                       out_shardings=(state_shardings, None), donate_argnums=0)
        return step.lower(abstract_state, _abstract_batch(shapes, mesh)).compile()


def compile_eval_step(eval_fn: Callable[[TrainState, dict], dict], config: ml_collections.ConfigDict, mesh,
                      abstract_state, *, spec: dict | None = None):
    """`eval_fn(state, batch) -> sums` compiled for eval batches (with 'weight') of the data
    set whose `spec` is given; the state is not donated (training goes on with it)."""
    shapes = batch_shapes(config, config.batch_size, eval=True, spec=spec)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        return jax.jit(eval_fn).lower(abstract_state, _abstract_batch(shapes, mesh)).compile()
