"""Config files and command-line overrides, with errors that name the key to fix, and help.

A config file is a Python file with `get_config(arg=None)` returning an
`ml_collections.ConfigDict` (it is locked once loaded). On the command line:

    --config=FILE[:arg] or --config FILE[:arg]   the file (and an optional argument for it)
    --config.a.b=value   override an existing key; the value is parsed as the key's current
                         type (tuples: "('image','text')" or "image,text"; bools: true/false/1/0)
    --config.evals.NAME.kind=KIND   adds the evaluator NAME (the one group whose entries are
                         new names) with KIND's defaults; then --config.evals.NAME.data=...
    --help               usage;  --help_config (or --help=config): every key, its default and doc

An unknown key, a value of the wrong type or an invalid value raises `UserError` with one
message naming the key; entry points print it and exit with status 2.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Sequence

import ml_collections

from mmjax.config import schema
from mmjax.config.schema import Group, UserError


# --------------------------------------------------------------------------- loading
def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads 'path/to/config.py[:arg]' and returns its locked ConfigDict.

    The folder above the file's is on sys.path while it loads, so a config imports its
    neighbours as a package the ordinary way: configs/seed.py does `from configs import base`.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"--config: no such config file '{path}'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    module_spec = importlib.util.spec_from_file_location("_mmjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, root)
    try:
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise UserError(f"--config: '{path}' defines no get_config(arg=None)")
        config = module.get_config(arg or None)
    finally:
        sys.path.remove(root)
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"--config: get_config() in '{path}' must return a ConfigDict")
    if "evals" in config:
        schema.complete_evals(config)
    config.lock()
    return config


def split_config_args(argv: Sequence[str]) -> tuple[str | None, dict[str, str], list[str]]:
    """Separates --config FILE (or --config=FILE) and --config.key=value from the other arguments."""
    config_spec, overrides, rest = None, {}, []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            config_spec = next(args, None)
            if config_spec is None or config_spec.startswith("--"):
                raise UserError("--config needs a file, e.g. --config configs/base.py")
        elif arg.startswith("--config="):
            config_spec = arg[len("--config="):]
        elif arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                raise UserError(f"{arg}: write overrides as --config.{key}=VALUE")
            overrides[key] = value
        else:
            rest.append(arg)
    return config_spec, overrides, rest


# --------------------------------------------------------------------------- overrides
def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
    """Sets each dotted key to its parsed value; unknown keys are an error naming the valid ones.

    An evaluator's kind is applied first, so `--config.evals.NAME.modalities=...` finds the
    keys of NAME's kind whatever the order on the command line.
    """
    items = sorted(overrides.items(), key=lambda kv: not _is_evaluator_kind(kv[0]))
    for dotted, text in items:
        path = dotted.split(".")
        if path[0] == "evals" and len(path) == 3:
            _prepare_evaluator(config, dotted, path[1], path[2], text)
        node = config
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


def _is_evaluator_kind(dotted: str) -> bool:
    path = dotted.split(".")
    return len(path) == 3 and path[0] == "evals" and path[2] == "kind"


def _prepare_evaluator(config, dotted: str, name: str, key: str, text: str) -> None:
    """Creates evaluator `name` if it is new, and gives it the keys of the kind being set."""
    kind = text.strip() if key == "kind" else None
    if kind is not None and kind not in schema.EVAL_KINDS:
        raise UserError(f"--config.{dotted}={text!r}: not one of {', '.join(schema.EVAL_KINDS)}")
    if name not in config.evals:
        entry = schema.evaluator(kind or "task")
    elif kind is not None and kind != config.evals[name].kind:
        old = config.evals[name]
        entry = schema.evaluator(kind, **{k: v for k, v in old.items() if k in schema.EVAL_KEYS and k != "kind"})
    else:
        return
    with config.evals.unlocked():
        config.evals[name] = entry
    config.evals[name].lock()


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


# --------------------------------------------------------------------------- help
CONFIG_OPTIONS = (
    ("--config FILE[:ARG]", "the config file, e.g. configs/base.py (also --config=FILE)"),
    ("--config.KEY=VALUE", "override one key, e.g. --config.total_steps=300"),
    ("--help", "this text"),
    ("--help_config", "every config key with its default and doc (also --help=config)"),
)


def help_requested(argv: Sequence[str]) -> str | None:
    """'config' for --help_config / --help=config, 'usage' for --help / -h, else None."""
    for arg in argv:
        if arg in ("--help_config", "--help=config"):
            return "config"
    return "usage" if any(arg in ("--help", "-h", "--helpfull") for arg in argv) else None


def usage(synopsis: str, options: Sequence[tuple[str, str]], config_options: bool = True) -> str:
    """Usage text: the synopsis, then one line per option."""
    rows = [*options, *(CONFIG_OPTIONS if config_options else ())]
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"usage: {synopsis}", "", "options:", *(f"  {n:<{width}}  {d}" for n, d in rows)])


def config_help() -> str:
    """Every config key with its default and doc, grouped by section."""
    lines = ["Config keys (configs/base.py defaults; override with --config.KEY=VALUE):"]
    _describe(schema.SCHEMA, "", lines)
    lines += ["", f"[evals] {schema.SCHEMA.keys['evals'].doc}",
              "  default: " + ", ".join(f"evals.{n} = {v}" for n, v in schema.DEFAULT_EVALS.items())]
    lines += [_key_line(f"evals.NAME.{name}", key) for name, key in schema.EVAL_KEYS.items()]
    for kind, keys in schema.EVAL_KINDS.items():
        if keys:
            lines.append(f"  kind '{kind}' also has:")
            lines += [_key_line(f"evals.NAME.{name}", key, indent="    ") for name, key in keys.items()]
    return "\n".join(lines)


def _describe(group: Group, prefix: str, lines: list[str]) -> None:
    lines += ["", f"[{prefix.rstrip('.') or 'run'}] {group.doc}"]
    subgroups = []
    for name, item in group.keys.items():
        if isinstance(item, Group):
            subgroups.append((name, item))
        else:
            lines.append(_key_line(f"{prefix}{name}", item))
    for name, item in subgroups:
        if item.keys:
            _describe(item, f"{prefix}{name}.", lines)


def _key_line(dotted: str, key: schema.Key, indent: str = "  ") -> str:
    choices = f" (one of: {', '.join(map(str, key.choices))})" if key.choices else ""
    return f"{indent}{dotted} = {key.default!r}\n{indent}    {key.doc}{choices}"


def show_help(kind: str, usage_text: str) -> None:
    """Prints what help_requested asked for: the config listing or `usage_text`."""
    print(config_help() if kind == "config" else usage_text, flush=True)
