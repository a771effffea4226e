"""kind 'linear_probe': a ridge-regression classifier fitted in closed form on frozen
features of one split (`train_data`, '' = config.data.train; 'synthetic' means its train
split) and scored on the entry's own data: '<prefix>accuracy'. Like big_vision's few-shot
evaluator: targets are one-hot in {-1, +1}, features get a constant column, and
W = (X^T X + l2 * N * I)^-1 X^T Y (numpy, float64: D x D, cheap for pooled widths).

Features (`features`): 'fused' (default) is the fusion core's pooled output, the vector the
classification head reads, so any model has it; 'contrastive' is the L2-normalised
contrastive embeddings of the modalities the contrastive head embeds, concatenated. Both
need one integer class label per example. `max_train_examples` caps the fitting set
(0: the whole split), a prefix of the split so every host stops at the same batch.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax.data import pipeline, sources
from mmjax.evaluators.base import Context
from mmjax.evaluators.embedding import EmbeddingEvaluator
from mmjax.trainer.state import batch_shapes
from mmjax.trainer.steps import compile_eval_step

LABEL, FUSION = "label", "fusion"


class LinearProbe(EmbeddingEvaluator):
    def __init__(self, name: str, cfg: ml_collections.ConfigDict, context: Context):
        super().__init__(name, cfg, context)
        config = context.config
        self.features = str(cfg.features)
        self.l2 = float(cfg.l2)
        self.max_train = int(cfg.max_train_examples)
        if self.features == "contrastive" and not self.embedded:
            raise ValueError(f"config.evals.{name}.features='contrastive' but the model has no contrastive "
                             "head (config.loss.contrastive is 'none'); use features='fused'")
        self.train_source = sources.open_source(cfg.train_data or config.data.train, "train", config.data)
        sources.check_spec(self.train_source.spec, config.data, config.modalities)
        sources.check_same_classes(self.train_source.spec, self.source.spec)
        for spec, split in ((self.source.spec, "data"), (self.train_source.spec, "train_data")):
            label = batch_shapes(config, 1, spec=spec).get(LABEL)
            if label is None or label[0] != (1,):
                raise ValueError(f"config.evals.{name}: the linear probe needs one integer class label per "
                                 f"example in its {split} (config.loss.task={config.loss.task!r})")
        self._train_step = None

    @classmethod
    def from_config(cls, name, cfg, context):
        probe = super().from_config(name, cfg, context)
        config = context.config
        same = (batch_shapes(config, 1, eval=True, spec=probe.train_source.spec)
                == batch_shapes(config, 1, eval=True, spec=probe.source.spec))
        probe._train_step = probe._step if same else compile_eval_step(
            probe.eval_step, config, context.mesh, context.abstract_state, spec=probe.train_source.spec)
        return probe

    def outputs(self, state, batch: dict) -> dict:
        model, params = self.context.model, {"params": state.params}
        if self.features == "contrastive":
            _, aux = model.apply(params, batch, train=False, aux=True)
            x = jnp.concatenate([aux["embeddings"][m] for m in self.embedded], axis=-1)
        else:  # the fusion core's output, captured on its way to the head
            _, state_ = model.apply(params, batch, train=False, mutable=["intermediates"],
                                    capture_intermediates=lambda mdl, method: mdl.name == FUSION
                                    and method == "__call__")
            x = state_["intermediates"][FUSION]["__call__"][0]
        return {"features": x.astype(jnp.float32), LABEL: batch[LABEL]}

    def _train_batches(self):
        config = self.context.config
        batches = pipeline.eval_batches(self.train_source, config, global_batch=config.batch_size)
        if self.max_train:
            return itertools.islice(batches, math.ceil(self.max_train / config.batch_size))
        return batches

    def run(self, state) -> dict[str, float]:
        config = self.context.config
        train = self.gather(state, self._train_batches(), step=self._train_step)
        test = self.gather(state, pipeline.eval_batches(self.source, config, global_batch=config.batch_size))
        n = self.max_train or len(train[LABEL])
        w = fit_ridge(train["features"][:n], train[LABEL][:n], len(self.source.spec["class_names"]), self.l2)
        predicted = predict_ridge(w, test["features"])
        return {f"{self.prefix}accuracy": float(np.mean(predicted == test[LABEL]))}

    def metrics(self, gathered: dict) -> dict:  # names only: run() computes the value
        return {f"{self.prefix}accuracy": 0.0}


def _with_bias(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def fit_ridge(x: np.ndarray, labels: np.ndarray, num_classes: int, l2: float) -> np.ndarray:
    """[D + 1, C]: ridge regression of {-1, +1} one-hot targets on x and a constant."""
    xb = _with_bias(x)
    y = 2.0 * np.eye(num_classes)[np.asarray(labels)] - 1.0
    gram = xb.T @ xb + l2 * len(xb) * np.eye(xb.shape[1])
    return np.linalg.solve(gram, xb.T @ y)


def predict_ridge(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.argmax(_with_bias(x) @ w, axis=1)
