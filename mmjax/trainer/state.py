"""The training state and everything that decides its shapes: the optimizer, the batch
layout and the sharded abstract state (born sharded, never materialised whole)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from mmjax import objectives, pretrained, sharding
from mmjax.config import UserError
from mmjax.contract import AUDIO_LENGTH, OPTIMIZERS, WEIGHT, presence_key
from mmjax.data import sources, targets
from mmjax.trainer import balance


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    # config.fusion.balance='gradient_blending': its weights and history (balance.BlendState);
    # None otherwise, which adds no leaf, so other runs' checkpoints are as they were.
    balance: Any = None


# ============================================================================ optimizer
def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer config.optim.kind names, and its learning-rate schedule.

    'adamw' (default): AdamW with linear warmup, cosine decay and global-norm clipping; no
    decay on 1-D params. 'adam': plain Adam at a constant lr, as Keras' Adam (the seed
    model's); warmup_steps, weight_decay and grad_clip do not apply to it.
    """
    o = config.optim
    if o.kind == "adam":
        schedule = optax.constant_schedule(o.lr)
        tx = optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)
    elif o.kind == "adamw":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps, decay_steps=config.total_steps, end_value=0.0
        )
        decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
        tx = optax.chain(
            optax.clip_by_global_norm(o.grad_clip),
            optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask),
        )
    else:
        raise UserError(f"config.optim.kind={o.kind!r} is not one of {list(OPTIMIZERS)}")
    tx = pretrained.freeze(tx, config.frozen)  # config.frozen: no updates, no state
    return tx, schedule


# ============================================================================ batch layout
def batch_shapes(config: ml_collections.ConfigDict, batch_size: int, *, eval: bool = False,
                 spec: dict | None = None) -> dict[str, tuple]:
    """(shape, dtype) of every field the pipeline yields for the configured modalities.

    `spec` (the data set's spec.json) decides the target fields for config.loss.task and
    the present_<modality> flags of modalities it marks optional; None means a
    classification data set whose examples have every modality. Eval batches also carry
    'weight' (0 for padding rows).
    """
    d, shapes = config.data, {}
    for key, (shape, dtype) in targets.batch_fields(spec, targets.task_of(config), d.target_length).items():
        shapes[key] = ((batch_size, *shape), dtype)
    if "image" in config.modalities:
        shapes["image"] = ((batch_size, d.image_size, d.image_size, 3), np.uint8)
    if "text" in config.modalities:
        shapes["text"] = ((batch_size, d.text_length), np.int32)
    if "audio" in config.modalities:
        shapes["audio"] = ((batch_size, d.audio_samples), np.float32)
        shapes[AUDIO_LENGTH] = ((batch_size,), np.int32)
    for m in sources.optional_modalities(spec):
        if m in config.modalities:
            shapes[presence_key(m)] = ((batch_size,), np.bool_)
    if eval:
        shapes[WEIGHT] = ((batch_size,), np.float32)
    return shapes


# ============================================================================ sharded state
def sharded_state_shapes(model: nn.Module, tx: optax.GradientTransformation, shapes: dict, mesh,
                         *, objective: objectives.Objective | None = None):
    """Abstract sharded TrainState, its shardings, and a jitted init that creates it sharded.

    The state is born sharded: shapes first (no memory), shardings from the logical axis
    names, then init compiled with those output shardings, so no device ever holds more
    than its shard. `objective` (needed for fusion.balance='gradient_blending', whose
    weights live in the state) decides TrainState.balance.
    """
    blend = None
    if objective is not None and objective.balance == "gradient_blending" and objective.heads:
        blend = balance.initial_blend(len(objective.blend_heads))

    def init_state(rng: jax.Array) -> TrainState:
        dummy = {k: jnp.zeros(s, dt) for k, (s, dt) in shapes.items()}
        params = model.init({"params": rng, "dropout": rng}, dummy, train=False)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          balance=jax.tree.map(jnp.asarray, blend))

    rng_shape = jax.eval_shape(jax.random.key, 0)  # abstract: nothing is placed on a device
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        boxed = jax.eval_shape(init_state, rng_shape)
        shardings = sharding.logical_shardings(boxed, mesh)
    abstract = jax.tree.map(lambda sh, s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shardings, nn.unbox(boxed))

    def init_fn(rng: jax.Array) -> TrainState:
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return jax.jit(lambda r: nn.unbox(init_state(r)), out_shardings=shardings)(rng)

    return abstract, shardings, init_fn
