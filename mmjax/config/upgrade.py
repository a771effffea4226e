"""An older run's config (checkpoint or export metadata, a plain dict) -> today's schema.

This is the only place old defaults live: a key the old run did not have gets the value
that reproduces that run's behaviour. For every key added so far that is today's default
(each was added with the default the code already had), so OLD_DEFAULTS is empty; a key
whose default changes later must record the old value there. Keys that moved are renamed
through RENAMED. JSON metadata turns tuples into lists; they become tuples again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from mmjax.config import schema
from mmjax.config.schema import UserError

# 'old.dotted.key' -> 'new.dotted.key', for keys that moved.
RENAMED: dict[str, str] = {}
# 'dotted.key' -> the value that reproduces runs from before the key existed, where that
# is not today's default.
OLD_DEFAULTS: dict[str, Any] = {}


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for name, value in tree.items():
        if isinstance(value, Mapping) and not (prefix == "" and name == "evals"):
            out.update(_flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _as_schema_type(value, default):
    return tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value


def upgrade(old: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The ConfigDict today's code reads for a run whose config was `old` (a nested dict)."""
    flat = {RENAMED.get(k, k): v for k, v in _flatten(dict(old)).items()}
    config = schema.defaults()
    for dotted, value in OLD_DEFAULTS.items():
        _set(config, dotted, value)
    evals = flat.pop("evals", None)
    unknown = []
    for dotted, value in flat.items():
        if not _set(config, dotted, value):
            unknown.append(dotted)
    if unknown:
        raise UserError(f"the run's config has keys this mmjax does not know: {', '.join(sorted(unknown))} "
                        "(written by a newer mmjax?)")
    if evals is not None:
        config.evals = ml_collections.ConfigDict(
            {name: schema.evaluator(**_evaluator_values(entry)) for name, entry in evals.items()})
    return config


def _evaluator_values(entry: Mapping) -> dict:
    kind = entry.get("kind", "task")
    keys = {**schema.EVAL_KEYS, **schema.EVAL_KINDS.get(kind, {})}
    return {k: _as_schema_type(v, keys[k].default) if k in keys else v for k, v in entry.items()}


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> bool:
    """Sets a schema key (False if the schema has no such key)."""
    *parents, name = dotted.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            return False
        node = node[part]
    if name not in node or isinstance(node[name], ml_collections.ConfigDict):
        return False
    with node.ignore_type():
        node[name] = _as_schema_type(value, node[name])
    return True
