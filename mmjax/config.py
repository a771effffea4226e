"""Config files and command-line overrides, with errors that name the key to fix.

A config file is a Python file with `get_config(arg=None)` returning a locked
`ml_collections.ConfigDict`. On the command line:

    --config=configs/base.py[:arg]   the file (and an optional argument for it)
    --config.a.b=value               override an existing key; the value is parsed as the
                                     key's current type (tuples: "('image','text')" or
                                     "image,text"; bools: true/false/1/0)

An unknown key, a value of the wrong type or an invalid value raises `UserError` with one
message naming the key; entry points print it and exit with status 2.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from mmjax.contract import DTYPES, MODALITIES, OPTIMIZERS, REMAT_POLICIES



class UserError(Exception):
    """An error the user caused and can fix; printed as one line, no traceback."""


# --------------------------------------------------------------------------- loading
def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads 'path/to/config.py[:arg]' and returns its locked ConfigDict."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"--config: no such config file '{path}'")
    module_spec = importlib.util.spec_from_file_location("_mmjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"--config: '{path}' defines no get_config(arg=None)")
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"--config: get_config() in '{path}' must return a ConfigDict")
    config.lock()
    return config


def split_config_args(argv: Sequence[str]) -> tuple[str | None, dict[str, str], list[str]]:
    """Separates --config and --config.key=value from the other command-line arguments."""
    config_spec, overrides, rest = None, {}, []
    for arg in argv:
        if arg.startswith("--config="):
            config_spec = arg[len("--config=") :]
        elif arg.startswith("--config."):
            key, sep, value = arg[len("--config.") :].partition("=")
            if not sep:
                raise UserError(f"{arg}: write overrides as --config.{key}=VALUE")
            overrides[key] = value
        else:
            rest.append(arg)
    return config_spec, overrides, rest


# --------------------------------------------------------------------------- overrides
def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
    """Sets each dotted key to its parsed value; unknown keys are an error naming the valid ones."""
    for dotted, text in overrides.items():
        node, path = config, dotted.split(".")
        for i, name in enumerate(path):
            if not isinstance(node, ml_collections.ConfigDict) or name not in node:
                where = ".".join(path[:i]) or "config"
                valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise UserError(
                    f"--config.{dotted}: unknown key '{name}' in {where}; valid keys: {', '.join(valid)}"
                )
            if i < len(path) - 1:
                node = node[name]
        current = node[path[-1]]
        if isinstance(current, ml_collections.ConfigDict):
            raise UserError(f"--config.{dotted} is a group; set one of its keys: {', '.join(sorted(current.keys()))}")
        value = _parse_value(text, current, dotted)
        with node.ignore_type():
            node[path[-1]] = value


def _parse_value(text: str, current, key: str):
    """Parses `text` as the type of the key's current value."""
    try:
        if isinstance(current, bool):
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (tuple, list)):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = [part.strip() for part in text.split(",") if part.strip()]
            if isinstance(value, str):
                value = (value,)
            return tuple(value)
        if current is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
    except (ValueError, TypeError):
        pass
    else:
        raise UserError(f"--config.{key}: cannot override a value of type {type(current).__name__}")
    raise UserError(f"--config.{key}={text!r}: expected {type(current).__name__}")


# --------------------------------------------------------------------------- validation
def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"config.{key}: {message}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the keys every run relies on; raises UserError naming the first bad key."""
    mods = tuple(config.modalities)
    _require(len(mods) > 0, "modalities", "needs at least one of " + ", ".join(MODALITIES))
    _require(len(set(mods)) == len(mods), "modalities", f"{mods} lists a modality twice")
    for m in mods:
        _require(m in MODALITIES, "modalities", f"'{m}' is not one of {', '.join(MODALITIES)}")
    for key in ("total_steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                "max_bad_steps"):
        _require(isinstance(config[key], int) and config[key] > 0, key, f"must be a positive integer, got {config[key]!r}")
    _require(config.checkpoint_every_seconds >= 0, "checkpoint_every_seconds",
             f"must be >= 0 (0: off), got {config.checkpoint_every_seconds}")
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        _require(size == -1 or size >= 1, f"mesh.{axis}", f"must be -1 (fill) or >= 1, got {size}")
    _require(list(config.mesh.values()).count(-1) <= 1, "mesh", "at most one axis may be -1")
    _require(config.optim.lr > 0, "optim.lr", f"must be > 0, got {config.optim.lr}")
    kind = config.optim.get("kind", "adamw")
    _require(kind in OPTIMIZERS, "optim.kind", f"'{kind}' is not one of {', '.join(OPTIMIZERS)}")
    _require(0 <= config.optim.warmup_steps < config.total_steps, "optim.warmup_steps", "must be in [0, total_steps)")
    _require(config.model.dtype in DTYPES, "model.dtype", f"'{config.model.dtype}' is not one of {', '.join(DTYPES)}")
    _require(config.model.remat in REMAT_POLICIES, "model.remat", f"'{config.model.remat}' is not one of {', '.join(REMAT_POLICIES)}")
    _require(0.0 <= config.model.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    _require(config.data.workers >= 0, "data.workers", "must be >= 0")
    for key in ("train", "eval"):
        _require(bool(config.data[key]), f"data.{key}", "is empty; use 'synthetic' or a data directory")
