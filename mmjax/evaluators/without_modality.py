"""kind 'without_modality': the task metrics with one modality marked absent in every
example, for each of the entry's `modalities` in turn: '<prefix>accuracy_without_audio',
'<prefix>loss_without_audio', ... How much a model leans on a modality, and whether it
copes without it (see config.modality_dropout)."""

from __future__ import annotations

import ml_collections

from mmjax import objectives
from mmjax.contract import TARGET_KEY, WEIGHT
from mmjax.evaluators.base import Context, Evaluator

# The entry config.eval_without=('audio',) adds: this kind, on config.data.eval, at
# config.eval_every, under 'eval/' (eval/accuracy_without_audio, as before evaluators).
SHORTHAND = "eval_without"


class WithoutModality(Evaluator):
    def __init__(self, name: str, cfg: ml_collections.ConfigDict, context: Context):
        self.modalities = tuple(cfg.modalities)
        key = _modalities_key(name)
        present = tuple(context.config.modalities)  # as the data decided
        unknown = sorted(set(self.modalities) - set(present))
        if not self.modalities or unknown:
            raise ValueError(f"{key}={self.modalities} must name modalities of config.modalities={present}")
        if context.objective.task == "none":
            raise ValueError(f"{key} needs a task loss (config.loss.task is 'none')")
        super().__init__(name, cfg, context)

    def eval_step(self, state, batch: dict) -> dict:
        model, objective = self.context.model, self.context.objective
        task_sums, target = objectives.TASK_SUMS[objective.task], TARGET_KEY[objective.task]
        sums = {}
        for m in self.modalities:
            masked = objective.without(batch, m)
            logits = model.apply({"params": state.params}, masked, train=False, aux=False)
            sums[m] = task_sums(logits, masked[target], masked[WEIGHT])
        return sums

    def metrics(self, totals: dict) -> dict:
        task = self.context.objective.task
        return {f"{self.prefix}{name}_without_{m}": value
                for m in self.modalities for name, value in objectives.task_metrics(task, totals[m]).items()}


def _modalities_key(name: str) -> str:
    """The config key a user fixes: the config.eval_without shorthand or the entry's own."""
    return "config.eval_without" if name == SHORTHAND else f"config.evals.{name}.modalities"
