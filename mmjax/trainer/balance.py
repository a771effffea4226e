"""Modality balancing (config.fusion.balance), on top of the per-modality heads.

'ogm_ge' (Peng et al. 2022, on-the-fly gradient modulation with generalisation
enhancement), inside each train step: modality m's score s_m is its own head's mean
probability of the true target on the batch; its ratio to the others is
rho_m = s_m / mean(s_others), and a leading modality (rho_m > 1) has the gradients of
its encoder (params[m], nothing else) multiplied by 1 - tanh(alpha * (rho_m - 1)). With
noise on (the GE part), each of that encoder's gradient arrays also gets Gaussian noise
with the array's own std, drawn from the step's rng.

'gradient_blending' (Wang et al. 2020): the loss is sum_k w_k L_k over the fused head and
each modality's head. At each evaluation of the 'eval/' task evaluator, each head's
generalisation gain G_k (its eval loss fell by G_k since the previous evaluation) and
overfitting gain O_k (its eval - train gap grew by O_k) give w_k ~ max(G_k, 0) / O_k^2,
normalised to sum 1; the weights start uniform and stay as they were when no head
gained. The train loss of a head at an evaluation is its mean minibatch loss over the
steps since the previous one. All of it is TrainState.balance (BlendState), so it is
checkpointed and resumes exactly, and the weights are an input of the compiled step.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

NOISE_STREAM = 0x0637  # folded into the step's rng for OGM-GE's noise (dropout keeps its own)
EPS = 1e-12


# ============================================================================ OGM-GE
def ogm_coefficients(scores: Mapping[str, jax.Array], alpha: float) -> dict[str, jax.Array]:
    """{modality: gradient scale}: 1 - tanh(alpha * (rho - 1)) where the modality's score
    leads the mean of the others' (rho > 1), else 1. One modality alone is never scaled."""
    out = {}
    for m, s in scores.items():
        others = [v for k, v in scores.items() if k != m]
        if not others:
            out[m] = jnp.ones((), jnp.float32)
            continue
        rho = s / jnp.maximum(sum(others) / len(others), EPS)
        out[m] = jnp.where(rho > 1.0, 1.0 - jnp.tanh(alpha * (rho - 1.0)), 1.0).astype(jnp.float32)
    return out


def modulate(grads: Mapping, coefficients: Mapping[str, jax.Array], noise_rng: jax.Array | None = None) -> dict:
    """grads with each grads[m] (modality m's encoder subtree) times coefficients[m]; with
    noise_rng, plus N(0, std(g)^2) noise on each array g of the encoders that are scaled
    down (coefficient < 1). Every other subtree (fusion, heads) is returned as it was."""
    out = dict(grads)
    for i, (m, c) in enumerate(coefficients.items()):
        leaves, treedef = jax.tree.flatten(grads[m])
        scaled = []
        for j, g in enumerate(leaves):
            new = g * c.astype(g.dtype)
            if noise_rng is not None:
                key = jax.random.fold_in(jax.random.fold_in(noise_rng, i), j)
                noise = jax.random.normal(key, g.shape, g.dtype) * jnp.std(g)
                new = new + jnp.where(c < 1.0, noise, jnp.zeros_like(noise))
            scaled.append(new)
        out[m] = jax.tree.unflatten(treedef, scaled)
    return out


# ============================================================================ gradient blending
class BlendState(struct.PyTreeNode):
    """Gradient blending's weights and the history they are re-estimated from; one entry
    per head in Objective.blend_heads order ('fused', then the modalities)."""

    weights: jax.Array  # [K], sums to 1; the loss's weights
    train_sum: jax.Array  # [K], each head's minibatch losses summed since the last evaluation
    train_steps: jax.Array  # scalar, the steps in train_sum
    prev_train: jax.Array  # [K], the train losses at the previous evaluation
    prev_eval: jax.Array  # [K], the eval losses at the previous evaluation
    points: jax.Array  # scalar int, evaluations seen so far


def initial_blend(num_heads: int) -> BlendState:
    """Uniform weights, no history (numpy; placed on the mesh with the rest of the state)."""
    zeros = np.zeros((num_heads,), np.float32)
    return BlendState(weights=np.full((num_heads,), 1.0 / num_heads, np.float32), train_sum=zeros,
                      train_steps=np.zeros((), np.float32), prev_train=zeros, prev_eval=zeros,
                      points=np.zeros((), np.int32))


def accumulate(blend: BlendState, head_losses: jax.Array) -> BlendState:
    """blend after one train step whose heads had these mean losses [K] (in the step)."""
    return blend.replace(train_sum=blend.train_sum + jax.lax.stop_gradient(head_losses),
                         train_steps=blend.train_steps + 1.0)


def reestimate(blend: BlendState, eval_losses) -> BlendState:
    """The blend after an evaluation with these per-head eval losses [K] (numpy, on the host).

    From the second evaluation on: G = prev_eval - eval, O = (eval - train) -
    (prev_eval - prev_train), w ~ max(G, 0) / O^2, normalised; the previous weights stay
    when no head gained (all G <= 0). The train-loss sums start again from zero.
    """
    b = jax.tree.map(lambda x: np.asarray(x, np.float64), blend)
    eval_now = np.asarray(eval_losses, np.float64)
    train_now = b.train_sum / max(float(b.train_steps), 1.0)
    weights = b.weights
    if int(b.points) >= 1:
        gain = b.prev_eval - eval_now
        overfit = (eval_now - train_now) - (b.prev_eval - b.prev_train)
        raw = np.maximum(gain, 0.0) / np.maximum(overfit**2, EPS)
        if raw.sum() > 0 and np.all(np.isfinite(raw)):
            weights = raw / raw.sum()
    return BlendState(weights=weights.astype(np.float32), train_sum=np.zeros_like(train_now, np.float32),
                      train_steps=np.zeros((), np.float32), prev_train=train_now.astype(np.float32),
                      prev_eval=eval_now.astype(np.float32), points=np.asarray(int(b.points) + 1, np.int32))


def reestimate_state(state, objective, results: Mapping[str, float], shardings):
    """The train loop's call after evaluators ran: `state` with its blend re-estimated when
    `results` hold every head's eval loss (the 'eval/' task evaluator ran), else `state`.
    `shardings` is the state's; the new arrays are placed as the old ones were."""
    names = objective.head_metric_names("eval/")
    if state.balance is None or not all(n in results for n in names):
        return state
    # The blend is replicated: every host reads its own copy (device_get would need them all).
    host = jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), state.balance)
    new = reestimate(host, [results[n] for n in names])
    placed = jax.tree.map(lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda idx, x=x: x[idx]),
                          new, shardings.balance)
    return state.replace(balance=placed)


def blend_metrics(objective, blend: BlendState) -> dict[str, jax.Array]:
    """'train/balance_<head>': each head's weight in the step's loss."""
    return {f"train/balance_{h}": blend.weights[i] for i, h in enumerate(objective.blend_heads)}
