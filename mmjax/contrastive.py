"""The contrastive loss of one modality pair, as batch sums: a dense reference that holds
the B x B logits, and a chunked version that never does (config.loss.contrastive_chunked).

    sums = pair_sums(a, b, scale, bias, weights, kind, chunked="auto")
    # {'loss', 'hits_a_to_b', 'hits_b_to_a', 'count'}: sums over the batch

Chunked: a `jax.shard_map` over the batch axes of the mesh in use (n shards). Each device
keeps its B/n rows of `a` and scores them against one block of B/n rows of `b` at a time,
CHUNK rows of `a` at a time, then passes the block to the next device (`ppermute`, a ring);
after n steps every row has met every candidate and each block is home again. What a row
of `a` needs (its loss sum or running log-sum-exp, its positive's logit, its best
candidate) stays home; what a row of `b` needs (the b->a log-sum-exp and best candidate)
travels with its block. Every step is rematerialised (`jax.checkpoint`), so the backward
pass keeps the blocks and per-row statistics (linear in B) and at most CHUNK x B/n logits,
never B x B. Without a mesh, or on one batch shard, the same code runs as one device's
loop over chunks. Both versions give the same sums and gradients (tests/test_contrastive.py).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mmjax.contract import CHUNKED, CONTRASTIVE
from mmjax.sharding import BATCH_AXES

CHUNK = 128  # rows of `a` scored at once (a device holds CHUNK x B/n logits); one MXU tile tall
_MASKED = -1e9  # the logit of a non-candidate in the softmax (finite: no inf - inf in gradients)
Sums = dict[str, jax.Array]


def _check_kind(kind: str) -> None:
    if kind not in CONTRASTIVE[1:]:
        raise ValueError(f"config.loss.contrastive={kind!r} is not one of {list(CONTRASTIVE[1:])}")


# ---------------------------------------------------------------------------- dense reference
def dense_sums(a: jax.Array, b: jax.Array, scale: jax.Array, bias: jax.Array, weights: jax.Array,
               kind: str) -> Sums:
    """Weighted sums of a contrastive loss between paired embeddings a, b [B, E]
    (L2-normalised) and of in-batch retrieval recall@1 in both directions.

    Logits are scale * a @ b.T + bias. Rows with weight 0 are neither anchors nor
    candidates. kind='softmax' (CLIP): mean of the a->b and b->a cross-entropies with
    the pair as the target. kind='sigmoid' (SigLIP): per anchor, the sum over valid
    candidates of -log sigmoid(+-logit), + for the pair and - for the rest.
    """
    _check_kind(kind)
    n = a.shape[0]
    valid = weights > 0
    candidates = valid[:, None] & valid[None, :]
    logits = scale * (a.astype(jnp.float32) @ b.astype(jnp.float32).T) + bias
    eye = jnp.eye(n, dtype=bool)
    if kind == "softmax":
        masked = jnp.where(candidates, logits, _MASKED)
        a_to_b = -jnp.sum(jax.nn.log_softmax(masked, axis=1) * eye, axis=1)
        b_to_a = -jnp.sum(jax.nn.log_softmax(masked, axis=0) * eye, axis=0)
        per_row = 0.5 * (a_to_b + b_to_a)
    else:
        signs = jnp.where(eye, 1.0, -1.0)
        per_row = -jnp.sum(jax.nn.log_sigmoid(signs * logits) * candidates, axis=1)
    scores = jnp.where(candidates, jax.lax.stop_gradient(logits), -jnp.inf)
    hits_a = (jnp.argmax(scores, axis=1) == jnp.arange(n)).astype(jnp.float32)
    hits_b = (jnp.argmax(scores, axis=0) == jnp.arange(n)).astype(jnp.float32)
    w = weights * valid
    return {"loss": jnp.sum(per_row * w), "hits_a_to_b": jnp.sum(hits_a * w),
            "hits_b_to_a": jnp.sum(hits_b * w), "count": jnp.sum(w)}


# ---------------------------------------------------------------------------- chunked
def _best(stats, values, ids, axis):
    """Running (max, id of the max) merged with a block's along `axis`; ties go to the lower
    id, so the result is the dense argmax over all candidates."""
    best, arg = stats
    new_best = jnp.max(values, axis=axis)
    new_arg = ids[jnp.argmax(values, axis=axis)]
    better = (new_best > best) | ((new_best == best) & (new_arg < arg))
    return jnp.where(better, new_best, best), jnp.where(better, new_arg, arg)


def _chunk_rows(m: int) -> int:
    """The largest divisor of m that is at most CHUNK."""
    return m if m <= CHUNK else max(c for c in range(1, CHUNK + 1) if m % c == 0)


def _local_sums(a, b, weights, scale, bias, *, kind: str, axis, n: int) -> Sums:
    """One device's part of the chunked loss: its rows a, b [m, E] and weights [m]; `axis`
    names the batch axes of the ring (None: one device, no ring). Returns the batch sums."""
    m = a.shape[0]
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    here = jax.lax.axis_index(axis) if axis else 0
    ids = here * m + jnp.arange(m)  # global row ids: pair i is a[i], b[i]
    valid = weights > 0
    c = _chunk_rows(m)
    chunks = lambda x: x.reshape(m // c, c, *x.shape[1:])  # noqa: E731
    softmax = kind == "softmax"

    def ring_step(carry, _):
        (b_blk, valid_b, ids_b, col), row = carry

        def score_chunk(col, xs):
            """Rows `xs` of a (one chunk) against the visiting block of b. The block is a
            constant of this loop, not its carry, so the backward pass keeps it once."""
            a_c, ids_c, valid_c, row = xs
            logits = scale * (a_c @ b_blk.T) + bias  # [c, m]
            candidates = valid_c[:, None] & valid_b[None, :]
            positive = ids_c[:, None] == ids_b[None, :]
            if softmax:
                masked = jnp.where(candidates, logits, _MASKED)
                row_lse = jnp.logaddexp(row["lse"], jax.nn.logsumexp(masked, axis=1))
                col_lse = jnp.logaddexp(col["lse"], jax.nn.logsumexp(masked, axis=0))
                term = row["term"] + jnp.sum(jnp.where(positive, logits, 0.0), axis=1)  # the positive's logit
            else:
                signs = jnp.where(positive, 1.0, -1.0)
                row_lse, col_lse = row["lse"], col["lse"]
                term = row["term"] - jnp.sum(jax.nn.log_sigmoid(signs * logits) * candidates, axis=1)
            scores = jnp.where(candidates, jax.lax.stop_gradient(logits), -jnp.inf)
            row = {"lse": row_lse, "term": term, "best": _best(row["best"], scores, ids_b, 1)}
            col = {"lse": col_lse, "best": _best(col["best"], scores, ids_c, 0)}
            return col, row

        col, row = jax.lax.scan(jax.checkpoint(score_chunk), col,
                                (chunks(a), chunks(ids), chunks(valid), jax.tree.map(chunks, row)))
        row = jax.tree.map(lambda x: x.reshape(m, *x.shape[2:]), row)
        block = (b_blk, valid_b, ids_b, col)
        if axis:  # the block (with its b->a statistics) moves on to the next device
            block = jax.lax.ppermute(block, axis, [(i, (i + 1) % n) for i in range(n)])
        return (block, row), None

    # Start values; inside shard_map they must be marked as differing per device, as the
    # statistics they start become.
    vary = (lambda x: jax.lax.pcast(x, axis, to="varying")) if axis else (lambda x: x)  # noqa: E731
    lse0, zero = vary(jnp.full((m,), _MASKED, jnp.float32)), vary(jnp.zeros((m,), jnp.float32))
    never = (vary(jnp.full((m,), -jnp.inf, jnp.float32)), vary(jnp.full((m,), m * n, ids.dtype)))
    row = {"lse": lse0, "term": zero, "best": never}
    block = (b, valid, ids, {"lse": lse0, "best": never})
    (block, row), _ = jax.lax.scan(jax.checkpoint(ring_step), (block, row), None, length=n)
    col = block[3]  # home again: the b->a statistics of this device's rows of b
    if softmax:  # per pair: mean of -log softmax of the positive along its row and its column
        per_row = 0.5 * ((row["lse"] - row["term"]) + (col["lse"] - row["term"]))
    else:
        per_row = row["term"]
    w = weights * valid
    sums = {"loss": jnp.sum(per_row * w),
            "hits_a_to_b": jnp.sum((row["best"][1] == ids) * w),
            "hits_b_to_a": jnp.sum((col["best"][1] == ids) * w),
            "count": jnp.sum(w)}
    return jax.lax.psum(sums, axis) if axis else sums


def batch_axes(mesh) -> tuple[tuple[str, ...], int]:
    """The mesh's batch axes (data, fsdp: those it has) and how many shards they make."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return axes, math.prod(mesh.shape[a] for a in axes)


def pair_sums(a: jax.Array, b: jax.Array, scale: jax.Array, bias: jax.Array, weights: jax.Array,
              kind: str, chunked: str = "auto") -> Sums:
    """dense_sums' sums, computed by the ring when `chunked` is 'yes', or 'auto' and the
    mesh in use (jax.set_mesh) splits the batch over more than one device."""
    _check_kind(kind)
    if chunked not in CHUNKED:
        raise ValueError(f"config.loss.contrastive_chunked={chunked!r} is not one of {list(CHUNKED)}")
    mesh = jax.sharding.get_abstract_mesh()
    axes, n = batch_axes(mesh) if mesh.axis_names else ((), 1)
    if chunked == "no" or (chunked == "auto" and n == 1):
        return dense_sums(a, b, scale, bias, weights, kind)
    scale, bias = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
    if n == 1:
        return _local_sums(a, b, weights, scale, bias, kind=kind, axis=None, n=1)
    if a.shape[0] % n:
        raise ValueError(f"the contrastive batch of {a.shape[0]} rows does not split over the {n} batch shards")
    local = functools.partial(_local_sums, kind=kind, axis=axes, n=n)
    rows = P(axes)
    return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, rows, P(), P()), out_specs=P())(
        a, b, weights, scale, bias)
