"""What a data set's examples are labelled with, and the batch fields each task reads.

A stored example carries one or more of:
  'label'   int class id                    -> task 'classification'
  'labels'  int32 [k] distinct class ids    -> task 'multilabel' (k may be 0)
  'target'  float32 [T]                     -> task 'regression'
  'target_text' str                         -> task 'generate'
spec.json lists those it has in 'tasks' (absent: ['classification'], as in every data set
written before multi-label and regression existed) and gives T as 'target_size'. The
classes of 'label' and 'labels' are the spec's class_names. A 'generate' data set's spec
has 'target_text': {'max_tokens': ids of its longest target, BOS and EOS included, with
the tokenizer it was built for}.

config.loss.task picks one; the batch then carries what the objective reads:
'classification' label int32 [B]; 'multilabel' label float32 [B, C] multi-hot;
'regression' target float32 [B, T]; 'generate' target_tokens int32 [B, T] and
target_length int32 [B] (T = config.data.target_length; the text is tokenized here with
the run's tokenizer, media.encode_target); 'none' (contrastive only) label int32 [B] when
the data have class labels, else nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mmjax import media
from mmjax.contract import LABELLED_TASKS, STORED_FIELD, TARGET_LENGTH, TARGET_TOKENS, TASKS


def task_of(config: Any) -> str:
    """config.loss.task: the objective, which decides the batch's target fields."""
    return str(config.loss.task)


def spec_tasks(spec: Mapping | None) -> tuple[str, ...]:
    """The tasks a data set's examples are labelled for (None: a classification data set)."""
    return ("classification",) if spec is None else tuple(spec.get("tasks", ("classification",)))


def check_task(spec: Mapping, task: str, where: str) -> None:
    """Raises ValueError if the data set has no targets for config.loss.task."""
    if task == "none" or task in spec_tasks(spec):
        return
    if task not in LABELLED_TASKS:
        raise ValueError(f"config.loss.task={task!r} is not one of {list(TASKS)}")
    has = ", ".join(spec_tasks(spec))
    raise ValueError(
        f"config.loss.task={task!r} but the data set {where} has no {STORED_FIELD[task]!r} field "
        f"(its examples are labelled for: {has}); set --config.loss.task to one of those, or "
        f"build a data set whose manifest rows have {STORED_FIELD[task]!r}")


def target_max_tokens(spec: Mapping | None) -> int:
    """Tokens the data set's longest target text needs, BOS and EOS included (0: not known)."""
    return int(((spec or {}).get("target_text") or {}).get("max_tokens", 0))


def cut_targets_note(spec: Mapping | None, task: str, target_length: int, where: str) -> str | None:
    """A line when the data set's longest target text needs more than data.target_length
    tokens (those are cut, ending with EOS), else None."""
    needed = target_max_tokens(spec)
    if task != "generate" or needed <= target_length:
        return None
    return (f"target texts of {where} need up to {needed} tokens but data.target_length={target_length}: longer "
            f"ones are cut; set --config.data.target_length={needed} to keep them whole")


def check_same_targets(train_spec: Mapping, eval_spec: Mapping, task: str) -> None:
    """Train and eval must have the same number of regression targets."""
    if task == "regression" and train_spec.get("target_size") != eval_spec.get("target_size"):
        raise ValueError(
            f"config.data.train has {train_spec.get('target_size')} regression targets per example "
            f"but config.data.eval has {eval_spec.get('target_size')}; build both from the same kind of manifest")


def num_outputs(spec: Mapping | None, task: str, default_classes: int = 0) -> int:
    """How many outputs the model's head needs: C classes, or T regression targets."""
    if task == "regression":
        return int(spec["target_size"])
    classes = default_classes if spec is None else int(spec["num_classes"])
    return max(1, classes)  # task 'none' on data without classes still builds a (unused) head


def batch_fields(spec: Mapping | None, task: str, target_length: int = 0) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{batch key: (per-example shape, dtype)} of the target fields for `task`;
    `target_length` (config.data.target_length) is the tokens of a 'generate' target."""
    if task == "classification" or (task == "none" and "classification" in spec_tasks(spec)):
        return {"label": ((), np.int32)}
    if task == "none":
        return {}
    if task == "generate":
        if target_length < 2:
            raise ValueError(f"config.data.target_length={target_length} leaves no room for BOS and EOS; use >= 2")
        return {TARGET_TOKENS: ((int(target_length),), np.int32), TARGET_LENGTH: ((), np.int32)}
    if spec is None:
        raise ValueError(f"config.loss.task={task!r} needs the data set's spec for the target shape")
    if task == "multilabel":
        return {"label": ((int(spec["num_classes"]),), np.float32)}
    return {"target": ((int(spec["target_size"]),), np.float32)}


def example_targets(example: Mapping, fields: Mapping[str, tuple], task: str,
                    num_classes: int | None = None, tokenizer=None) -> dict[str, np.ndarray]:
    """A stored example's target fields as batch-row arrays (`fields` from batch_fields);
    `tokenizer` (the run's, media.make_tokenizer) tokenizes a 'generate' target text."""
    if task == "generate":
        if STORED_FIELD[task] not in example:
            raise ValueError(f"stored example has no {STORED_FIELD[task]!r} field (it has {sorted(example)})")
        tokens, length = media.encode_target(example[STORED_FIELD[task]], fields[TARGET_TOKENS][0][0], tokenizer)
        return {TARGET_TOKENS: tokens, TARGET_LENGTH: length}
    out = {}
    for key, (shape, _) in fields.items():
        name = "label" if task == "none" else STORED_FIELD[task]
        if name not in example:
            raise ValueError(f"stored example has no {name!r} field (it has {sorted(example)})")
        value = example[name]
        if name == "label":
            out[key] = class_id(value, num_classes)
        elif name == "labels":
            out[key] = multi_hot(value, shape[0])
        else:
            out[key] = regression_target(value, shape[0])
    return out


def class_id(label: Any, num_classes: int | None) -> np.ndarray:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"'label' must be an int, got {label!r}")
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise ValueError(f"'label' {label} is outside 0..{(num_classes or 1) - 1}")
    return np.asarray(label, np.int32)


def multi_hot(ids: Any, num_classes: int) -> np.ndarray:
    """int class ids [k] -> float32 [num_classes] with 1 at each id."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"'labels' must be a 1-D array of class ids, got {ids.dtype} {list(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ValueError(f"'labels' {ids.tolist()} has an id outside 0..{num_classes - 1}")
    out = np.zeros(num_classes, np.float32)
    out[ids.astype(np.int64)] = 1.0
    return out


def regression_target(value: Any, size: int) -> np.ndarray:
    """A stored 'target' -> float32 [size]; raises ValueError for another size."""
    target = np.asarray(value, np.float32).reshape(-1)
    if target.shape != (size,):
        raise ValueError(f"'target' has {target.size} values; the data set's target_size is {size}")
    return target
