"""kind 'task': the objective's metrics over a data set (loss, accuracy or the multilabel /
regression metrics, contrastive recall@1, and each per-modality head's metrics alone as
'<prefix>accuracy_<m>_only'), as config.loss and config.fusion.aux_weight define them."""

from __future__ import annotations

from mmjax.contract import WEIGHT
from mmjax.evaluators.base import Evaluator


class TaskEvaluator(Evaluator):
    def eval_step(self, state, batch: dict) -> dict:
        objective = self.context.objective
        outputs = self.context.model.apply({"params": state.params}, batch, train=False, aux=objective.needs_aux)
        return objective.sums(outputs, batch, batch[WEIGHT])

    def metrics(self, totals: dict) -> dict:
        return self.context.objective.metrics(totals, self.prefix, only=True)  # eval/accuracy_<m>_only
