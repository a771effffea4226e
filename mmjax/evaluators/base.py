"""What every evaluator is: a name, its own data set, its own cadence and its own eval step,
compiled once ahead of time. The train loop only asks `due(step)` and calls `run(state)`.

A kind (one file each) says what its step sums over a batch (`eval_step`) and which
metrics those sums give (`metrics`); summing over batches and hosts is done here. Eval
batches carry 'weight' (0 for the padding rows that make every host's batch count equal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax import objectives, sharding
from mmjax.data import pipeline
from mmjax.data.sources import Source
from mmjax.trainer.steps import compile_eval_step


def data_name(config: ml_collections.ConfigDict, data: str) -> str:
    """The data set an evaluator reads: its own `data`, or config.data.eval when ''."""
    return data or config.data.eval


@dataclasses.dataclass(frozen=True)
class Context:
    """What evaluators are built from: the run's config (modalities as the data decided),
    model, objective and mesh, the abstract sharded state their steps are compiled for, and
    the eval data sets the loop opened, by name (see data_name)."""

    config: ml_collections.ConfigDict
    model: nn.Module
    objective: objectives.Objective
    mesh: Any
    abstract_state: Any
    sources: Mapping[str, Source]


class Evaluator:
    """Sums `eval_step` over every batch of its data set and reports `metrics` of the sums.

    Entry keys (config.evals.NAME): data ('' = config.data.eval), every (steps; 0 =
    config.eval_every; the last step always evaluates) and prefix (of its metric names;
    '' = 'eval/NAME/').
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, context: Context):
        config = context.config
        self.name = name
        self.every = cfg.every or config.eval_every
        self.prefix = cfg.prefix or f"eval/{name}/"
        self.context = context
        self.source = context.sources[data_name(config, cfg.data)]
        self._last_step = config.total_steps
        self._step = None  # compiled by from_config

    @classmethod
    def from_config(cls, name: str, cfg: ml_collections.ConfigDict, context: Context) -> "Evaluator":
        evaluator = cls(name, cfg, context)
        evaluator._step = compile_eval_step(evaluator.eval_step, context.config, context.mesh,
                                            context.abstract_state, spec=evaluator.source.spec)
        return evaluator

    def eval_step(self, state, batch: dict) -> dict:
        """Weighted sums of one global batch (traced once, by from_config)."""
        raise NotImplementedError

    def metrics(self, totals: dict) -> dict[str, Any]:
        """Named metrics ('<prefix>accuracy', ...) of the sums over the whole data set."""
        raise NotImplementedError

    def metric_names(self) -> list[str]:
        """The names run() reports, from the compiled step's output shapes (nothing runs)."""
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._step.out_info)
        return sorted(self.metrics(zeros))

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self._last_step

    def run(self, state) -> dict[str, float]:
        config, mesh = self.context.config, self.context.mesh
        totals = None
        for host_batch in pipeline.eval_batches(self.source, config, global_batch=config.batch_size):
            sums = self._step(state, sharding.host_batch_to_global(host_batch, mesh))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        return {k: float(v) for k, v in self.metrics(jax.device_get(totals)).items()}
