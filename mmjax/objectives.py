"""Losses and metrics: the task loss (classification, multi-label, regression) and an
optional contrastive loss, as weighted sums that add up over batches.

    objective = Objective.from_config(config)
    sums = objective.sums(model_outputs, batch, weights)   # jit-friendly, per batch
    loss = objective.loss(sums)                             # what the train step minimises
    metrics = objective.metrics(totals, 'eval/')            # after summing over batches

Every sum carries its own 'count' (the weight total), so padding rows (weight 0) and
examples that lack a contrastive modality drop out of both numerator and denominator.

The contrastive loss covers every pair of config.loss.contrastive_pairs (or the one
contrastive_pair): sums['contrastive']['<a>_to_<b>'] over the examples that have both, and
the loss adds contrastive_weight x sum_p weight_p x mean loss_p. mmjax/contrastive.py
computes each pair's sums, chunked over the devices when the batch is sharded.

Per-modality heads (config.fusion.aux_weight > 0) add sums['unimodal'][m]: the task sums
of modality m's own head over the examples that have m, and the loss adds aux_weight
times each head's mean loss. With fusion.balance='gradient_blending' the loss is instead
sum_k w_k L_k over the heads ('fused' first, then the modalities), the weights w coming
from the train state (mmjax/trainer/balance.py).

Batch targets: 'classification' reads batch['label'] int [B]; 'multilabel' reads
batch['label'] multi-hot [B, C] (1 = the class applies); 'regression' reads
batch['target'] float [B, T]. The model's head has C (or T) outputs. 'generate' reads
batch['target_tokens'] [B, T] and batch['target_length'] [B]: teacher-forced
cross-entropy of the decoder's logits [B, T - 1, V] on the target ids after BOS only
(padding masked by target_length), averaged per example; token_accuracy counts tokens.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mmjax import contrastive
from mmjax.config.schema import contrastive_pairs
from mmjax.contract import TARGET_KEY, TARGET_LENGTH, presence_key

Sums = dict[str, jax.Array]


# ---------------------------------------------------------------------------- task sums
def classification_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> Sums:
    """Weighted sums of softmax cross-entropy and correct argmax predictions."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(ce * weights), "correct": jnp.sum(correct * weights), "count": jnp.sum(weights)}


def multilabel_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> Sums:
    """Weighted sums for independent per-class sigmoids: binary cross-entropy (mean over
    classes), per-label and exact-match correctness at p = 0.5, and true positive /
    false positive / false negative counts for micro-F1."""
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)
    predicted = (logits > 0).astype(jnp.float32)
    correct = (predicted == targets).astype(jnp.float32)
    w = weights[:, None]
    return {
        "loss": jnp.sum(bce * weights),
        "label_correct": jnp.sum(jnp.mean(correct, axis=-1) * weights),
        "exact": jnp.sum(jnp.min(correct, axis=-1) * weights),
        "tp": jnp.sum(predicted * targets * w),
        "fp": jnp.sum(predicted * (1 - targets) * w),
        "fn": jnp.sum((1 - predicted) * targets * w),
        "count": jnp.sum(weights),
    }


def regression_sums(predictions: jax.Array, targets: jax.Array, weights: jax.Array) -> Sums:
    """Weighted sums of squared and absolute errors, each a mean over target dims."""
    error = predictions.astype(jnp.float32) - targets.astype(jnp.float32).reshape(predictions.shape)
    return {
        "loss": jnp.sum(jnp.mean(error**2, axis=-1) * weights),
        "abs_error": jnp.sum(jnp.mean(jnp.abs(error), axis=-1) * weights),
        "count": jnp.sum(weights),
    }


def target_mask(target_length: jax.Array, positions: int) -> jax.Array:
    """bool [B, positions]: which predicted positions hold a real target id. Position i
    predicts token i + 1 of [BOS, ids..., EOS, pad...], so the first length - 1 count."""
    return jnp.arange(positions)[None, :] < (target_length[:, None] - 1)


def generate_sums(logits: jax.Array, tokens: jax.Array, lengths: jax.Array, weights: jax.Array) -> Sums:
    """Weighted sums of each example's mean token cross-entropy over its target ids (BOS
    never predicted, padding masked by `lengths`), correct argmax tokens and of examples
    whose every token is right (teacher-forced)."""
    labels = tokens[:, 1:]
    mask = target_mask(lengths, labels.shape[1]).astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    # Padded vocabulary rows are -inf: cross-entropy over finite logits only.
    ce = optax.softmax_cross_entropy_with_integer_labels(jnp.maximum(logits, jnp.finfo(jnp.float32).min), labels)
    n = jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * mask
    all_right = (jnp.sum(correct, axis=1) == jnp.sum(mask, axis=1)).astype(jnp.float32)
    return {"loss": jnp.sum(jnp.sum(ce * mask, axis=1) / n * weights),
            "correct_tokens": jnp.sum(jnp.sum(correct, axis=1) * weights),
            "tokens": jnp.sum(jnp.sum(mask, axis=1) * weights),
            "exact": jnp.sum(all_right * weights),
            "count": jnp.sum(weights)}


TASK_SUMS = {"classification": classification_sums, "multilabel": multilabel_sums, "regression": regression_sums,
             "generate": generate_sums}


def true_target_probability(task: str, logits: jax.Array, target: jax.Array) -> jax.Array:
    """[B]: the probability a head gives the true target: softmax of the label
    (classification), or the mean over labels of the probability of each label's true
    value (multilabel). OGM-GE's score of a modality (mmjax/trainer/balance.py)."""
    logits = logits.astype(jnp.float32)
    if task == "classification":
        return jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), target[:, None].astype(jnp.int32), axis=-1)[:, 0]
    if task == "multilabel":
        p = jax.nn.sigmoid(logits)
        return jnp.mean(jnp.where(target > 0, p, 1.0 - p), axis=-1)
    raise ValueError(f"config.loss.task={task!r} has no probability of the true target")


def task_metrics(task: str, sums: Mapping[str, Any]) -> dict[str, float]:
    """Named metrics of summed task sums (names without prefix)."""
    count = jnp.maximum(sums["count"], 1.0)
    out = {"loss": sums["loss"] / count}
    if task == "classification":
        out["accuracy"] = sums["correct"] / count
    elif task == "multilabel":
        out["label_accuracy"] = sums["label_correct"] / count
        out["exact_match"] = sums["exact"] / count
        out["f1"] = 2 * sums["tp"] / jnp.maximum(2 * sums["tp"] + sums["fp"] + sums["fn"], 1.0)
    elif task == "regression":
        out["mse"] = sums["loss"] / count
        out["mae"] = sums["abs_error"] / count
    elif task == "generate":  # teacher-forced; the 'generate' evaluator's exact_match decodes
        out["token_accuracy"] = sums["correct_tokens"] / jnp.maximum(sums["tokens"], 1.0)
        out["forced_exact_match"] = sums["exact"] / count
    return out


# ---------------------------------------------------------------------------- contrastive
contrastive_sums = contrastive.dense_sums  # one pair's sums over the batch, the B x B reference


def pair_name(a: str, b: str) -> str:
    """A pair's (and a retrieval direction's) name in sums and metrics: '<a>_to_<b>'."""
    return f"{a}_to_{b}"


# ---------------------------------------------------------------------------- the objective
@dataclasses.dataclass(frozen=True)
class Objective:
    """What a run optimises and reports; built from config.loss and config.eval_without."""

    task: str = "classification"
    contrastive: str = "none"
    pairs: tuple[tuple[str, str, float], ...] = ()  # (a, b, weight) of each contrastive pair
    chunked: str = "auto"  # config.loss.contrastive_chunked (mmjax/contrastive.py)
    contrastive_weight: float = 1.0
    eval_without: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()  # modalities with their own head (config.fusion.aux_weight > 0)
    aux_weight: float = 0.0
    balance: str = "none"  # config.fusion.balance
    ogm_alpha: float = 0.5
    ogm_noise: bool = True

    @classmethod
    def from_config(cls, config: Any) -> "Objective":
        """Reads config.loss, config.eval_without and config.fusion's heads and balancing;
        trusts them (mmjax.config.validate checked each key and how they fit
        config.modalities). The heads are those of config.modalities as the data decided."""
        loss, fusion = config.loss, config.fusion
        return cls(
            task=str(loss.task),
            contrastive=str(loss.contrastive),
            pairs=contrastive_pairs(loss),
            chunked=str(loss.contrastive_chunked),
            contrastive_weight=float(loss.contrastive_weight),
            eval_without=tuple(config.eval_without),
            heads=tuple(config.modalities) if fusion.aux_weight > 0 else (),
            aux_weight=float(fusion.aux_weight),
            balance=str(fusion.balance),
            ogm_alpha=float(fusion.ogm_alpha),
            ogm_noise=bool(fusion.ogm_noise),
        )

    @property
    def needs_aux(self) -> bool:
        """Whether the model must return its aux outputs (contrastive embeddings, the
        per-modality heads' outputs)."""
        return self.contrastive != "none" or bool(self.heads)

    @property
    def blend_heads(self) -> tuple[str, ...]:
        """The heads gradient blending weighs, in the order of its weight vector."""
        return ("fused", *self.heads)

    def head_losses(self, sums: Mapping[str, Sums]) -> jax.Array:
        """[K]: each head's mean task loss, in blend_heads order."""
        parts = [sums["task"], *(sums["unimodal"][m] for m in self.heads)]
        return jnp.stack([p["loss"] / jnp.maximum(p["count"], 1.0) for p in parts])

    def head_metric_names(self, prefix: str) -> list[str]:
        """The metrics an evaluator (only=True) reports each head's loss under, in blend_heads order."""
        return [f"{prefix}task_loss", *(f"{prefix}loss_{m}_only" for m in self.heads)]

    def contrastive_sums(self, aux: Mapping[str, Any], weights: jax.Array) -> dict[str, Sums]:
        """{'<a>_to_<b>': sums} of each pair over the batch, from the model's aux outputs
        (embeddings, present, scale, bias); an example lacking a or b is neither anchor nor
        candidate of that pair."""
        emb, present = aux["embeddings"], aux["present"]
        return {pair_name(a, b): contrastive.pair_sums(emb[a], emb[b], aux["scale"], aux["bias"],
                                                       weights * present[a] * present[b], self.contrastive,
                                                       self.chunked)
                for a, b, _ in self.pairs}

    def contrastive_loss(self, sums: Mapping[str, Sums]) -> jax.Array:
        """contrastive_weight x the pairs' weighted mean losses (sums: contrastive_sums')."""
        return self.contrastive_weight * self._pairs_mean(sums)

    def _pairs_mean(self, sums: Mapping[str, Sums]) -> jax.Array:
        total = jnp.zeros((), jnp.float32)
        for a, b, weight in self.pairs:
            part = sums[pair_name(a, b)]
            total = total + weight * part["loss"] / jnp.maximum(part["count"], 1.0)
        return total

    def sums(self, outputs: Any, batch: Mapping[str, jax.Array], weights: jax.Array, *,
             with_contrastive: bool = True) -> dict[str, Sums]:
        """{'task': ..., 'contrastive': {pair: ...}, 'unimodal': {m: ...}} sums of one batch;
        `outputs` is the model's logits, or (logits, aux) when needs_aux. with_contrastive=
        False leaves the contrastive sums out (gradient accumulation computes them over the
        whole batch)."""
        logits, aux = outputs if self.needs_aux else (outputs, None)
        out = {}
        if self.task == "generate":
            out["task"] = generate_sums(logits, batch[TARGET_KEY[self.task]], batch[TARGET_LENGTH], weights)
        elif self.task != "none":
            target = batch[TARGET_KEY[self.task]]
            out["task"] = TASK_SUMS[self.task](logits, target, weights)
        if self.contrastive != "none" and with_contrastive:
            out["contrastive"] = self.contrastive_sums(aux, weights)
        if self.heads:
            target = batch[TARGET_KEY[self.task]]
            out["unimodal"] = {}
            for m in self.heads:
                w = weights * aux["present"][m]
                logits_m = aux["unimodal"][m]
                out["unimodal"][m] = TASK_SUMS[self.task](logits_m, target, w)
                if self.balance == "ogm_ge":  # the head's mean probability of the truth, OGM-GE's score
                    out["unimodal"][m]["score"] = jnp.sum(true_target_probability(self.task, logits_m, target) * w)
        return out

    def loss(self, sums: Mapping[str, Sums], blend: jax.Array | None = None) -> jax.Array:
        """The scalar loss: task mean + contrastive_loss (the pairs' weighted means), plus
        aux_weight * each per-modality head's mean. With gradient blending the task and
        head terms are weighed by `blend` [K] (blend_heads order) instead; None (the
        evaluators, which do not see the train state) weighs them uniformly."""
        total = jnp.zeros((), jnp.float32)
        mixed = "unimodal" in sums and self.balance == "gradient_blending"
        if "task" in sums and not mixed:
            total = total + sums["task"]["loss"] / jnp.maximum(sums["task"]["count"], 1.0)
        if "contrastive" in sums:
            total = total + self.contrastive_loss(sums["contrastive"])
        if mixed:
            k = len(self.blend_heads)
            weights = jnp.full((k,), 1.0 / k, jnp.float32) if blend is None else blend
            total = total + jnp.sum(weights * self.head_losses(sums))
        elif "unimodal" in sums:
            for m in self.heads:
                part = sums["unimodal"][m]
                total = total + self.aux_weight * part["loss"] / jnp.maximum(part["count"], 1.0)
        return total

    def metrics(self, sums: Mapping[str, Sums], prefix: str, *, only: bool = False,
                blend: jax.Array | None = None) -> dict[str, Any]:
        """Named metrics ('<prefix>loss', '<prefix>accuracy', ...) of (summed) sums. Each
        per-modality head's metrics are '<prefix><name>_<m>', or '<prefix><name>_<m>_only'
        with only=True (the evaluators': that head alone on the eval data); `blend` as in loss."""
        out = {f"{prefix}loss": self.loss(sums, blend)}
        if "task" in sums:
            for name, value in task_metrics(self.task, sums["task"]).items():
                if name != "loss" or "contrastive" in sums or "unimodal" in sums:
                    out[f"{prefix}{name if name != 'loss' else 'task_loss'}"] = value
        for m, part in sums.get("unimodal", {}).items():
            for name, value in task_metrics(self.task, part).items():
                out[f"{prefix}{name}_{m}{'_only' if only else ''}"] = value
        if "contrastive" in sums:  # in-batch recall@1 per direction, under the retrieval evaluator's names
            out[f"{prefix}contrastive_loss"] = self._pairs_mean(sums["contrastive"])
            for a, b, _ in self.pairs:
                c = sums["contrastive"][pair_name(a, b)]
                count = jnp.maximum(c["count"], 1.0)
                out[f"{prefix}{pair_name(a, b)}/contrastive_loss"] = c["loss"] / count
                out[f"{prefix}{pair_name(a, b)}/recall@1"] = c["hits_a_to_b"] / count
                out[f"{prefix}{pair_name(b, a)}/recall@1"] = c["hits_b_to_a"] / count
        for m in self.eval_without:
            key = f"without_{m}"
            if key in sums:
                for name, value in task_metrics(self.task, sums[key]).items():
                    out[f"{prefix}{name}_without_{m}"] = value
        return out

    def without(self, batch: Mapping[str, jax.Array], modality: str) -> dict[str, jax.Array]:
        """The batch with `modality` marked absent for every example."""
        n = jax.tree.leaves(batch)[0].shape[0]
        return {**batch, presence_key(modality): jnp.zeros((n,), bool)}
