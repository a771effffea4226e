"""kind 'task': the objective's metrics over a data set (loss, accuracy or the multilabel /
regression metrics, and contrastive recall@1), as config.loss defines them."""

from __future__ import annotations

from mmjax.contract import WEIGHT
from mmjax.evaluators.base import Evaluator


class TaskEvaluator(Evaluator):
    def eval_step(self, state, batch: dict) -> dict:
        objective = self.context.objective
        outputs = self.context.model.apply({"params": state.params}, batch, train=False, aux=objective.needs_aux)
        return objective.sums(outputs, batch, batch[WEIGHT])

    def metrics(self, totals: dict) -> dict:
        return self.context.objective.metrics(totals, self.prefix)
