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


# ============================================================================ loss and gradients
def _split(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...]; micro-batch j is rows j, j+k, j+2k, ..., so every device's
    rows split evenly between the micro-batches and nothing moves between devices."""
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def _merge(x: jax.Array) -> jax.Array:
    """The inverse of _split: [k, B/k, ...] -> [B, ...] in the batch's own row order."""
    return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _with_counts(sums: dict, totals: dict) -> dict:
    """`sums` of one micro-batch with every 'count' replaced by the whole batch's, so that
    objective.loss of it is that micro-batch's share of the whole batch's loss (the loss is
    linear in the sums once the counts are fixed)."""
    if "count" in sums:
        return {**sums, "count": totals["count"]}
    return {name: _with_counts(part, totals[name]) for name, part in sums.items()}


def make_loss_and_grads(model: nn.Module, objective: objectives.Objective, accum_steps: int = 1):
    """fn(params, batch, rng, blend) -> (loss, grads, sums, extra) of the whole global batch.

    accum_steps=k > 1 computes the same in k micro-batches (_split) under jax.lax.scan, so
    compile time does not grow with k and activation memory is that of one micro-batch.
    The loss is linear in each part's sums once the part's count is known, so each
    micro-batch adds the gradient of its share: sums / the whole batch's counts. With a
    contrastive loss (GradCache) every negative stays in: a first pass embeds all
    micro-batches without gradients (and gives the counts); the contrastive loss of the
    whole batch and its gradient w.r.t. the embeddings, scale and bias follow; a second
    pass backpropagates each micro-batch's share of the task loss plus its embeddings
    dotted with their cached gradients. Per-modality heads also take the first pass,
    for their counts. Micro-batch j draws dropout from fold_in(rng, j): k changes the
    dropout draws, nothing else.
    """
    k = int(accum_steps)
    contrastive = objective.contrastive != "none"

    def apply(params, batch, rng):
        return model.apply({"params": params}, batch, train=True, aux=objective.needs_aux, rngs={"dropout": rng})

    def extra_of(scale) -> dict:
        return {"train/contrastive_scale": scale} if contrastive else {}

    def whole(params, batch, rng, blend):
        weights = jnp.ones(jax.tree.leaves(batch)[0].shape[:1], jnp.float32)

        def loss_fn(p):
            outputs = apply(p, batch, rng)
            sums = objective.sums(outputs, batch, weights)
            return objective.loss(sums, blend), (sums, extra_of(outputs[1]["scale"]) if contrastive else {})

        (loss, (sums, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, sums, extra

    def accumulated(params, batch, rng, blend):
        size = jax.tree.leaves(batch)[0].shape[0]
        if size % k:
            raise ValueError(f"config.grad_accum_steps={k} must divide the batch of {size} rows")
        weights = jnp.ones((size,), jnp.float32)
        micro = jax.tree.map(lambda x: _split(x, k), batch)
        micro_weights = _split(weights, k)
        rngs = jax.vmap(lambda j: jax.random.fold_in(rng, j))(jnp.arange(k))
        first_pass = contrastive or bool(objective.heads)
        cotangents = jax.tree.map(jnp.zeros_like, micro_weights)  # a placeholder without a contrastive loss
        scale_grad = bias_grad = jnp.zeros((), jnp.float32)
        sums, extra = {}, {}
        if first_pass:
            def embed(_, xs):
                mb, w, r = xs
                outputs = apply(jax.lax.stop_gradient(params), mb, r)
                part = objective.sums(outputs, mb, w, with_contrastive=False)
                aux = outputs[1]
                kept = {"embeddings": aux["embeddings"], "present": aux["present"],
                        "scale": aux["scale"], "bias": aux["bias"]} if contrastive else {}
                return None, (part, kept)

            _, (parts, kept) = jax.lax.scan(embed, None, (micro, micro_weights, rngs))
            sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), parts)
            if contrastive:
                embeddings = jax.tree.map(_merge, kept["embeddings"])
                present = jax.tree.map(_merge, kept["present"])
                scale, bias = kept["scale"][0], kept["bias"][0]  # the same in every micro-batch

                def contrastive_loss(emb, s, b):
                    c = objective.contrastive_sums({"embeddings": emb, "present": present, "scale": s, "bias": b},
                                                   weights)
                    return objective.contrastive_loss(c), c

                (_, c_sums), (emb_grads, scale_grad, bias_grad) = jax.value_and_grad(
                    contrastive_loss, argnums=(0, 1, 2), has_aux=True)(embeddings, scale, bias)
                cotangents = jax.tree.map(lambda g: _split(g, k), emb_grads)
                sums["contrastive"] = c_sums
                extra = extra_of(scale)
        totals = sums if first_pass else {"task": {"count": jnp.sum(weights)}} if objective.task != "none" else {}

        def backprop(grads, xs):
            mb, w, r, cot = xs

            def share(p):
                outputs = apply(p, mb, r)
                part = objective.sums(outputs, mb, w, with_contrastive=False)
                value = objective.loss(_with_counts(part, totals), blend) if part else jnp.zeros((), jnp.float32)
                if contrastive:  # the cached gradients as cotangents; scale and bias once per batch
                    aux = outputs[1]
                    value = value + sum(jnp.sum(cot[m] * aux["embeddings"][m]) for m in cot)
                    value = value + (scale_grad * aux["scale"] + bias_grad * aux["bias"]) / k
                return value, part

            g, part = jax.grad(share, has_aux=True)(params)
            return jax.tree.map(jnp.add, grads, g), part

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, parts = jax.lax.scan(backprop, zeros, (micro, micro_weights, rngs, cotangents))
        if not first_pass:
            sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), parts)
        return objective.loss(sums, blend), grads, sums, extra

    return whole if k == 1 else accumulated


# ============================================================================ train step
def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, dropout_rng,
                    *, objective: objectives.Objective | None = None, accum_steps: int = 1):
    """One optimizer update on a global batch; returns the new state and scalar metrics.

    `objective` (default: classification) says what the loss is; the metrics are
    'train/loss', the objective's own ('train/accuracy', ..., and 'train/accuracy_<m>' of
    per-modality heads), 'train/grad_norm', 'train/learning_rate', 'train/skipped_steps',
    for contrastive runs 'train/contrastive_scale', and with modality balancing
    'train/balance_<m>' (OGM-GE's gradient scale, or the blend weight of each head).
    `accum_steps` (config.grad_accum_steps) splits the batch into micro-batches with the
    same result (make_loss_and_grads).

    A step whose loss, gradient or update is not finite keeps the old parameters and
    optimizer state (the step count still advances) and reports train/skipped_steps=1.
    """
    objective = objective or objectives.Objective()
    blending = objective.balance == "gradient_blending" and bool(objective.heads)
    loss_and_grads = make_loss_and_grads(model, objective, accum_steps)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(dropout_rng, state.step)
        if blending and state.balance is None:
            raise ValueError("fusion.balance='gradient_blending' keeps its weights in the state: build it with "
                             "trainer.sharded_state_shapes(..., objective=objective)")
        blend = state.balance.weights if blending else None
        loss, grads, sums, extra = loss_and_grads(state.params, batch, rng, blend)
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
    k = int(config.grad_accum_steps)
    shards = sharding.batch_shards(mesh)
    if config.batch_size % (k * shards):
        raise UserError(f"config.batch_size={config.batch_size} must be divisible by config.grad_accum_steps={k} "
                        f"x the {shards} data x fsdp shards of the mesh (each micro-batch splits over them)")
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        step = jax.jit(make_train_step(model, tx, schedule, dropout_rng, objective=objective, accum_steps=k),
                       out_shardings=(state_shardings, None), donate_argnums=0)
        return step.lower(abstract_state, _abstract_batch(shapes, mesh)).compile()


def compile_eval_step(eval_fn: Callable[[TrainState, dict], dict], config: ml_collections.ConfigDict, mesh,
                      abstract_state, *, spec: dict | None = None):
    """`eval_fn(state, batch) -> sums` compiled for eval batches (with 'weight') of the data
    set whose `spec` is given; the state is not donated (training goes on with it)."""
    shapes = batch_shapes(config, config.batch_size, eval=True, spec=spec)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        return jax.jit(eval_fn).lower(abstract_state, _abstract_batch(shapes, mesh)).compile()
