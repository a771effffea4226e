"""The on-disk format of a data set directory: names and the checks of spec.json.

A data set is a directory holding `data-XXXXX-of-YYYYY.array_record` shards (one encoded
example per record, see codec.py; read in sorted order) and `spec.json`:

    format               'mmjax-v1'
    num_examples         int, the records in all shards
    num_classes          int; class_names lists that many names (ids are positions)
    modalities           {name: fields}: image {height, width, channels},
                         audio {sample_rate, max_samples}, text {max_bytes}; image may
                         add resize (media.ImageResize fields) and processor ('hf:DIR')
                         when built with a checkpoint's image processor (absent: mmjax's)
    optional_modalities  optional: the modalities some examples lack
    tasks, target_size   optional: what the examples are labelled for (targets.py);
                         absent tasks mean ['classification']
    target_text          with task 'generate': {max_tokens (media.target_tokens_needed of the
                         longest target with `tokenizer`: its ids + BOS + EOS; 0 where not
                         measured, as for TFDS), and from a build max_bytes and tokenizer}
    shards               optional: the shard file names, which readers open and a rebuild
                         replaces (absent in older data sets: every complete data-i-of-N set)
    build.report         optional: the name of the skipped-rows report the build wrote here

text may add length and tokenizer (the build's --text_length and --tokenizer, which
training follows by default) and max_tokens (the longest text in those tokens).

This module imports only the standard library and the contract, so every other part of
the data package (writer, reader, build, TFDS) can depend on it.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

from mmjax.contract import LABELLED_TASKS

FORMAT = "mmjax-v1"
SPEC_FILE = "spec.json"
SHARD_PATTERN = "data-*-of-*.array_record"  # glob of shard_name's results
_SHARD_NAME = re.compile(r"data-(\d{5})-of-(\d{5})\.array_record")  # shard_name's results exactly
MODALITY_FIELDS = {
    "image": ("height", "width", "channels"),
    "audio": ("sample_rate", "max_samples"),
    "text": ("max_bytes",),
}


def shard_name(index: int, count: int) -> str:
    """The file name of shard `index` of `count`."""
    return f"data-{index:05d}-of-{count:05d}.array_record"


def validate_spec(spec: Any, where: str = "spec") -> dict:
    """Checks the structure of a spec dict; raises ValueError naming the bad field."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be a JSON object")
    if spec.get("format") != FORMAT:
        raise ValueError(f"{where}: 'format' must be {FORMAT!r}, got {spec.get('format')!r}")
    for key in ("num_examples", "num_classes"):
        if not isinstance(spec.get(key), int) or spec[key] < 0:
            raise ValueError(f"{where}: {key!r} must be a non-negative int, got {spec.get(key)!r}")
    names = spec.get("class_names")
    if not isinstance(names, list) or len(names) != spec["num_classes"]:
        raise ValueError(
            f"{where}: 'class_names' must list num_classes={spec['num_classes']} names")
    modalities = spec.get("modalities")
    if not isinstance(modalities, dict) or not modalities:
        raise ValueError(f"{where}: 'modalities' must be a non-empty object")
    for name, fields in modalities.items():
        if name not in MODALITY_FIELDS:
            raise ValueError(
                f"{where}: unknown modality {name!r}; known: {', '.join(MODALITY_FIELDS)}"
            )
        for field in MODALITY_FIELDS[name]:
            if not isinstance(fields, dict) or not isinstance(fields.get(field), int):
                raise ValueError(f"{where}: modalities.{name}.{field} must be an int")
    image = modalities.get("image", {})
    if not isinstance(image.get("resize", {}), dict) or not isinstance(image.get("processor", ""), str):
        raise ValueError(f"{where}: modalities.image.resize must be an object and .processor a string")
    optional = spec.get("optional_modalities", [])
    if not isinstance(optional, list) or any(m not in modalities for m in optional):
        raise ValueError(f"{where}: 'optional_modalities' must list some of the data set's "
                         f"modalities ({', '.join(modalities)}), got {optional!r}")
    shards = spec.get("shards", [])
    if not isinstance(shards, list) or any(not isinstance(n, str) or not _SHARD_NAME.fullmatch(n) for n in shards):
        raise ValueError(f"{where}: 'shards' must list file names like {shard_name(0, 1)}, got {shards!r}")
    text = modalities.get("text", {})
    if any(not isinstance(text.get(k, 0), int) for k in ("length", "max_tokens")) or \
            not isinstance(text.get("tokenizer", ""), str):
        raise ValueError(f"{where}: modalities.text.length and .max_tokens must be ints and .tokenizer a string")
    _validate_targets(spec, where)
    return spec


def shard_files(directory: str, spec: dict) -> list[str]:
    """The shard names of a data set: its spec's list, or (older data sets) every complete
    data-i-of-N set the folder holds."""
    if "shards" in spec:
        return list(spec["shards"])
    by_count: dict[int, dict[int, str]] = {}
    for path in glob.glob(os.path.join(directory, SHARD_PATTERN)):
        match = _SHARD_NAME.fullmatch(os.path.basename(path))
        if match:
            by_count.setdefault(int(match.group(2)), {})[int(match.group(1))] = match.group(0)
    return [group[i] for count, group in sorted(by_count.items()) if sorted(group) == list(range(count))
            for i in range(count)]


def dataset_files(directory: str) -> list[str]:
    """The names of the files that make up the data set in `directory` (its spec.json, shards
    and the report its build wrote there); [] if it holds none. A spec.json that is not ours
    raises ValueError: its folder is not to be touched."""
    if not os.path.isfile(os.path.join(directory, SPEC_FILE)):
        return []
    spec = load_spec(directory)
    build = spec.get("build") if isinstance(spec.get("build"), dict) else {}
    report = build.get("report")
    if "shards" not in spec and build.get("skipped_rows"):  # older builds wrote it there, unrecorded
        report = "skipped.jsonl"
    reports = [report] if isinstance(report, str) and os.path.basename(report) == report and report else []
    return [SPEC_FILE, *shard_files(directory, spec), *reports]


def _validate_targets(spec: dict, where: str) -> None:
    """Checks 'tasks' and 'target_size'; raises ValueError naming the bad field."""
    tasks = spec.get("tasks", ["classification"])
    if not isinstance(tasks, list) or not tasks or any(t not in LABELLED_TASKS for t in tasks):
        raise ValueError(f"{where}: 'tasks' must be a non-empty list of {', '.join(LABELLED_TASKS)}, got {tasks!r}")
    if "regression" in tasks:
        size = spec.get("target_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{where}: 'target_size' must be a positive int for regression, got {size!r}")
    if "generate" in tasks:
        info = spec.get("target_text")
        counts = [info.get(k, 0) for k in ("max_tokens", "max_bytes")] if isinstance(info, dict) else [None]
        if not isinstance(info, dict) or "max_tokens" not in info or not isinstance(info.get("tokenizer", ""), str) \
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
            raise ValueError(f"{where}: 'target_text' must be an object with a non-negative int 'max_tokens' "
                             f"(and optional max_bytes, tokenizer) for task generate, got {info!r}")
    if ("classification" in tasks or "multilabel" in tasks) and spec["num_classes"] < 1:
        raise ValueError(f"{where}: a data set with class labels needs num_classes >= 1")


def load_spec(directory: str) -> dict:
    """The checked spec.json of a data set directory; ValueError naming the file if bad."""
    path = os.path.join(directory, SPEC_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    return validate_spec(spec, where=path)
