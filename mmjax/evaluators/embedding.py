"""What the retrieval, zero-shot and linear-probe evaluators share: per-example outputs of the
whole data set instead of sums. `eval_step` returns arrays with a leading batch axis (compiled
once, like every evaluator's); `run` keeps each global batch's outputs on device, concatenates
them, gathers them to every host once (multihost_utils.process_allgather) and drops the
padding rows (weight 0) before `metrics` sees numpy arrays of the real examples.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mmjax import sharding
from mmjax.contract import WEIGHT
from mmjax.data import pipeline
from mmjax.evaluators.base import Context, Evaluator

PRESENT = "present"  # {modality: bool [N]} in a gathered output: which examples have it


class EmbeddingEvaluator(Evaluator):
    """Per-example outputs of a data set, gathered; subclasses say what `outputs` holds."""

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, context: Context):
        super().__init__(name, cfg, context)
        self.embedded = tuple(self._embedded_modalities(context))

    @staticmethod
    def _embedded_modalities(context: Context) -> tuple[str, ...]:
        """The modalities the model gives a contrastive embedding (config.loss's pair or pairs)."""
        head = getattr(context.model, "contrastive", None)
        return tuple(head.modalities) if head is not None else ()

    def outputs(self, state, batch: dict) -> dict:
        """Per-example arrays [B, ...] of one batch (traced once)."""
        raise NotImplementedError

    def eval_step(self, state, batch: dict) -> dict:
        out = self.outputs(state, batch)
        out[WEIGHT] = batch[WEIGHT]
        return out

    def metrics(self, gathered: dict) -> dict:
        raise NotImplementedError

    def metric_names(self) -> list[str]:
        """The names run() reports: metrics of a tiny stand-in of the outputs (nothing runs)."""
        fake = jax.tree.map(lambda s: np.zeros((2, *s.shape[1:]), s.dtype), self._step.out_info)
        fake[WEIGHT] = np.ones(2, np.float32)
        return sorted(self.metrics(_real_rows(fake)))

    def gather(self, state, host_batches: Iterable[dict], step=None) -> dict:
        """The outputs of every batch, on every host, padding rows dropped."""
        step = step or self._step
        parts = [step(state, sharding.host_batch_to_global(b, self.context.mesh)) for b in host_batches]
        if not parts:
            raise ValueError(f"config.evals.{self.name}: the data set is empty")
        joined = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
        return _real_rows(jax.tree.map(np.asarray, multihost_utils.process_allgather(joined, tiled=True)))

    def run(self, state) -> dict[str, float]:
        config = self.context.config
        gathered = self.gather(state, pipeline.eval_batches(self.source, config, global_batch=config.batch_size))
        return {k: float(v) for k, v in self.metrics(gathered).items()}


def _real_rows(outputs: dict) -> dict:
    """The rows with weight > 0 (the data set's examples, each once)."""
    keep = np.asarray(outputs[WEIGHT]) > 0
    return jax.tree.map(lambda x: np.asarray(x)[keep], outputs)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
