"""Evaluators as config: config.evals names them, each with a `kind` from KINDS.

    evals = build(config, context)          # compiled once, before the loop
    for e in evals:
        if e.due(step):
            metrics.update(e.run(state))     # {'eval/accuracy': ..., 'eval/NAME/loss': ...}

An entry: kind, data ('' = config.data.eval), every (0 = config.eval_every), prefix
('' = 'eval/NAME/') and the kind's own keys. The default is one 'task' evaluator with
prefix 'eval/'; config.eval_without=('audio',) adds a 'without_modality' one (see
without_modality.SHORTHAND). A new kind is a file with an Evaluator subclass and a row here.
"""

from __future__ import annotations

import ml_collections

from mmjax.evaluators.base import Context, Evaluator, data_name
from mmjax.evaluators.generate import GenerateEvaluator
from mmjax.evaluators.linear_probe import LinearProbe
from mmjax.evaluators.retrieval import Retrieval
from mmjax.evaluators.task import TaskEvaluator
from mmjax.evaluators.without_modality import SHORTHAND, WithoutModality
from mmjax.evaluators.zeroshot import ZeroShot

KINDS: dict[str, type[Evaluator]] = {"task": TaskEvaluator, "without_modality": WithoutModality,
                                     "retrieval": Retrieval, "zeroshot": ZeroShot, "linear_probe": LinearProbe,
                                     "generate": GenerateEvaluator}

__all__ = ["KINDS", "Context", "Evaluator", "build", "data_names", "entries"]


def entries(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """config.evals by name, plus the entry config.eval_without adds."""
    out = dict(config.evals.items())
    if config.eval_without:
        if SHORTHAND in out:
            raise ValueError(f"config.evals.{SHORTHAND}: the name is taken by config.eval_without; rename the entry")
        out[SHORTHAND] = ml_collections.ConfigDict(dict(
            kind="without_modality", data="", every=0, prefix="eval/", modalities=tuple(config.eval_without)))
    return out


def data_names(config: ml_collections.ConfigDict) -> list[str]:
    """The data sets the evaluators read, each once, in entry order."""
    return list(dict.fromkeys(data_name(config, cfg.data) for cfg in entries(config).values()))


def build(config: ml_collections.ConfigDict, context: Context) -> list[Evaluator]:
    """Every evaluator of the config, its step compiled; ValueError names a bad entry."""
    evaluators = []
    for name, cfg in entries(config).items():
        if cfg.kind not in KINDS:
            raise ValueError(f"config.evals.{name}.kind={cfg.kind!r} is not one of {list(KINDS)}")
        evaluators.append(KINDS[cfg.kind].from_config(name, cfg, context))
    return evaluators
