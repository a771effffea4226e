"""Data sets on disk (ArrayRecord shards + spec.json) behind one interface.

`open_source(name, split, config.data)` returns a `Source`: the shards as a grain
random-access source of encoded records (see `codec.py`), the parsed spec and the example
count. `name` is 'synthetic' (the embedded task, generated into the cache on first use), a
directory holding `spec.json` and `data-XXXXX-of-YYYYY.array_record` shards (written by
`write_dataset` or `python -m mmjax.data.build`), or 'tfds:NAME' (see tfds_source.py).
`check_spec` checks a spec against the config; `choose_modalities` decides which of the
data's modalities a run uses.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import grain
from array_record.python.array_record_module import ArrayRecordWriter

from mmjax.data import targets

FORMAT = "mmjax-v1"
SPEC_FILE = "spec.json"
MODALITY_FIELDS = {
    "image": ("height", "width", "channels"),
    "audio": ("sample_rate", "max_samples"),
    "text": ("max_bytes",),
}


@dataclasses.dataclass
class Source:
    """One split of a data set: encoded records, spec and size."""

    records: Any  # a grain RandomAccessDataSource of bytes (one encoded example each)
    spec: dict
    directory: str

    @property
    def num_examples(self) -> int:
        return int(self.spec["num_examples"])

    @property
    def num_classes(self) -> int:
        return int(self.spec["num_classes"])


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
    optional = spec.get("optional_modalities", [])
    if not isinstance(optional, list) or any(m not in modalities for m in optional):
        raise ValueError(f"{where}: 'optional_modalities' must list some of the data set's "
                         f"modalities ({', '.join(modalities)}), got {optional!r}")
    targets.validate(spec, where)
    return spec


def optional_modalities(spec: dict | None) -> tuple[str, ...]:
    """The modalities some examples of the data set lack (spec 'optional_modalities').

    The pipeline gives each of these a present_<modality> flag; other modalities are in
    every example, and their batches stay as they were.
    """
    return () if spec is None else tuple(spec.get("optional_modalities", ()))


def write_dataset(directory: str, records: Sequence[bytes], spec: dict,
                  num_shards: int = 1) -> None:
    """Writes encoded records as `num_shards` contiguous ArrayRecord shards plus spec.json.

    Shards hold consecutive runs of `records`, so reading the sorted shards back gives the
    records in their original order. `spec['num_examples']` is set to len(records).
    """
    num_shards = max(1, min(int(num_shards), len(records) or 1))
    spec = validate_spec({**spec, "num_examples": len(records)}, where=f"spec for {directory}")
    os.makedirs(directory, exist_ok=True)
    bounds = [len(records) * i // num_shards for i in range(num_shards + 1)]
    for i in range(num_shards):
        # group_size:1 makes every record its own chunk, which random access needs.
        path = os.path.join(directory, shard_name(i, num_shards))
        writer = ArrayRecordWriter(path, "group_size:1")
        try:
            for record in records[bounds[i]:bounds[i + 1]]:
                writer.write(record)
        finally:
            writer.close()
    with open(os.path.join(directory, SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=2)


def load_directory(directory: str) -> Source:
    """Opens a data set directory written by `write_dataset` (or `mmjax.data.build`)."""
    spec_path = os.path.join(directory, SPEC_FILE)
    try:
        with open(spec_path) as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {spec_path}: {e}") from e
    validate_spec(spec, where=spec_path)
    shards = sorted(glob.glob(os.path.join(directory, "data-*-of-*.array_record")))
    if not shards:
        raise ValueError(f"{directory} has a spec.json but no data-*-of-*.array_record shards")
    records = grain.sources.ArrayRecordDataSource(shards)
    if len(records) != spec["num_examples"]:
        raise ValueError(
            f"{directory}: shards hold {len(records)} records but spec.json says "
            f"num_examples={spec['num_examples']}; rebuild the data set"
        )
    return Source(records=records, spec=spec, directory=directory)


def open_source(name: str, split: str, config_data) -> Source:
    """Returns the `split` ('train' or 'eval') of data source `name` (see module docstring).

    For a directory the split is ignored: the directory is the split.
    """
    if name == "synthetic":
        from mmjax.data import synthetic  # lazy: synthetic writes through this module

        splits = synthetic.ensure_synthetic(config_data.cache_dir, config_data)
        if split not in splits:
            raise ValueError(f"unknown split {split!r} of 'synthetic'; use one of {sorted(splits)}")
        return load_directory(splits[split])
    if isinstance(name, str) and name.startswith("tfds:"):
        from mmjax.data import tfds_source  # lazy: TFDS is only imported when used

        records, spec = tfds_source.open_tfds(name, split, config_data)
        return Source(records=records, spec=spec, directory=name)
    if isinstance(name, str) and name and os.path.isfile(os.path.join(name, SPEC_FILE)):
        return load_directory(name)
    raise ValueError(
        f"data source {name!r} is neither 'synthetic' nor a directory with spec.json (build "
        "one with python -m mmjax.data.build) nor 'tfds:NAME'"
    )


def choose_modalities(requested: Sequence[str], *specs: dict) -> tuple[str, ...]:
    """The modalities a run uses, given config.modalities and the data's specs.

    config.modalities listing every known modality (the default) means "whatever the data
    has": the result is the modalities all specs share, in config order. A narrower list
    is a request: each must be in every spec. Raises ValueError naming the fix.
    """
    shared = [m for m in MODALITY_FIELDS if all(m in s["modalities"] for s in specs)]
    if set(requested) >= set(MODALITY_FIELDS):
        chosen = tuple(m for m in requested if m in shared)
        if not chosen:
            raise ValueError(f"the train and eval data share no modality (train has "
                             f"{sorted(specs[0]['modalities'])}); use data sets with a common one")
        return chosen
    for m in requested:
        if m not in shared:
            raise ValueError(
                f"config.modalities includes {m!r} but the data has only {sorted(shared)}; "
                f"remove {m!r} from --config.modalities or use a data set with {m}")
    return tuple(requested)


def check_same_classes(train_spec: dict, eval_spec: dict) -> None:
    """Train and eval must name the same classes in the same order."""
    a, b = list(train_spec["class_names"]), list(eval_spec["class_names"])
    if a != b:
        diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise ValueError(
            f"config.data.train and config.data.eval have different classes ({len(a)} vs "
            f"{len(b)}; first difference at id {diff}); build the eval split with "
            "--classes=TRAIN_DIR so the ids agree")


def check_spec(spec: dict, config_data, modalities: Sequence[str]) -> None:
    """Raises ValueError naming the first disagreement between a spec and the config.

    Audio shorter than data.audio_samples is fine (it is zero-padded); longer audio would
    be cut, so that is an error.
    """
    available = spec["modalities"]
    for m in modalities:
        if m not in available:
            raise ValueError(
                f"config.modalities includes {m!r} but the data set has only "
                f"{sorted(available)}; remove {m!r} from --config.modalities or use a data "
                f"set with {m}"
            )
    if "image" in modalities:
        img = available["image"]
        size = config_data.image_size
        if (img["height"], img["width"]) != (size, size):
            raise ValueError(
                f"data.image_size={size} but the data set's images are "
                f"{img['height']}x{img['width']}; set --config.data.image_size to match"
            )
        if img["channels"] != 3:
            raise ValueError(
                f"images must have 3 channels (RGB), the data set has {img['channels']}")
    if "audio" in modalities:
        aud = available["audio"]
        if aud["sample_rate"] != config_data.audio_rate:
            raise ValueError(
                f"data.audio_rate={config_data.audio_rate} but the data set's audio is at "
                f"{aud['sample_rate']} Hz; set --config.data.audio_rate={aud['sample_rate']}"
            )
        if aud["max_samples"] > config_data.audio_samples:
            raise ValueError(
                f"data.audio_samples={config_data.audio_samples} but the data set has clips of "
                f"up to {aud['max_samples']} samples; set --config.data.audio_samples="
                f"{aud['max_samples']}"
            )
