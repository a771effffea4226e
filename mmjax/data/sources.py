"""Data sources behind one interface: a name -> a `Source`.

`open_source(name, split, config.data)` returns a `Source`: the shards as a grain
random-access source of encoded records (see `codec.py`), the parsed spec and the example
count. `name` is 'synthetic' (the embedded task, generated into the cache on first use), a
directory in the format of format.py (written by writer.py or `python -m mmjax.data.build`),
or 'tfds:NAME' (see tfds_source.py). `choose_modalities` decides which of the data's
modalities a run uses, `follow_data` the image size, audio and text length the config
leaves at their defaults, and `check_spec` checks a spec against the config. A damaged
shard is a ShardError (a UserError: one line) when opened or read.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import grain

from mmjax import media
from mmjax.config.schema import SCHEMA, UserError
from mmjax.contract import MODALITIES
from mmjax.data import synthetic, tfds_source
from mmjax.data.format import SPEC_FILE, load_spec, shard_files


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


class ShardError(UserError, ValueError):
    """A shard that cannot be read (cut short or damaged): one line naming it, at open or mid-run."""


# What array_record raises for a damaged file (Riegeli's messages come as RuntimeError).
_READ_ERRORS = (RuntimeError, OSError, ValueError)


def _damaged(path: str, error: BaseException) -> ShardError:
    reason = str(error).split(";")[0].strip() or type(error).__name__
    return ShardError(f"data shard {path} is damaged or cut short ({reason}); rebuild the data set "
                      "(python -m mmjax.data.build --overwrite) or copy the file again")


class ShardRecords:
    """The records of a data set's shards, in order, as a grain random-access source. One
    ArrayRecordDataSource per shard (not one over all), so a read error names its shard."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self._shards = []
        for path in self.paths:
            try:
                self._shards.append(grain.sources.ArrayRecordDataSource([path]))
            except _READ_ERRORS as e:
                raise _damaged(path, e) from None
        self._starts = [0]
        for shard in self._shards:
            self._starts.append(self._starts[-1] + len(shard))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> bytes:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        shard = bisect.bisect_right(self._starts, index) - 1
        try:
            return self._shards[shard][index - self._starts[shard]]
        except _READ_ERRORS as e:
            raise _damaged(self.paths[shard], e) from None

    def __repr__(self) -> str:
        return f"ShardRecords({len(self.paths)} shards)"


def load_directory(directory: str) -> Source:
    """Opens a data set directory written by writer.py (or `mmjax.data.build`)."""
    spec = load_spec(directory)
    names = shard_files(directory, spec)
    if not names:
        raise ValueError(f"{directory} has a spec.json but no data-*-of-*.array_record shards")
    missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise ValueError(f"{directory}: shard {missing[0]} listed in spec.json is missing; rebuild the data set")
    records = ShardRecords([os.path.join(directory, n) for n in names])
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
        splits = synthetic.ensure_synthetic(config_data.cache_dir, config_data)
        if split not in splits:
            raise ValueError(f"unknown split {split!r} of 'synthetic'; use one of {sorted(splits)}")
        source = load_directory(splits[split])
        source.spec["modalities"]["image"]["generated"] = True  # drawn at its size: no resize to match
        return source
    if isinstance(name, str) and name.startswith(tfds_source.PREFIX):
        records, spec = tfds_source.open_tfds(name, split, config_data)
        return Source(records=records, spec=spec, directory=name)
    if isinstance(name, str) and name and os.path.isfile(os.path.join(name, SPEC_FILE)):
        return load_directory(name)
    raise ValueError(
        f"data source {name!r} is neither 'synthetic' nor a directory with spec.json (build "
        "one with python -m mmjax.data.build) nor 'tfds:NAME'"
    )


def optional_modalities(spec: dict | None) -> tuple[str, ...]:
    """The modalities some examples of the data set lack (spec 'optional_modalities').

    The pipeline gives each of these a present_<modality> flag; other modalities are in
    every example, and their batches stay as they were.
    """
    return () if spec is None else tuple(spec.get("optional_modalities", ()))


def choose_modalities(requested: Sequence[str], *specs: dict) -> tuple[str, ...]:
    """The modalities a run uses, given config.modalities and the data's specs.

    config.modalities listing every known modality (the default) means "whatever the data
    has": the result is the modalities all specs share, in config order. A narrower list
    is a request: each must be in every spec. Raises ValueError naming the fix.
    """
    shared = [m for m in MODALITIES if all(m in s["modalities"] for s in specs)]
    if set(requested) >= set(MODALITIES):
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


def check_image_resize(image_spec: dict, processor: str) -> None:
    """The data set's images must be resized as config.data.image_processor says (a pretrained
    image tower's processor by default): ValueError naming the rebuild otherwise."""
    if image_spec.get("generated"):
        return
    want = media.image_resize(processor)
    have = media.ImageResize.from_json(image_spec.get("resize"))
    if want != have:
        built = image_spec.get("processor") or "mmjax's own resize (centred square, bilinear)"
        flag = f"--image_from={processor}" if processor else "no --image_from"
        raise ValueError(f"the data set's images were resized with {built} {have.to_json()} but "
                         f"config.data.image_processor={processor!r} resizes {want.to_json()}; rebuild the "
                         f"data with python -m mmjax.data.build {flag}")


def _default(key: str):
    return SCHEMA.keys["data"].keys[key].default


def follow_data(config_data, specs: Sequence[dict], modalities: Sequence[str]) -> list[str]:
    """Sets data.image_size, data.audio_samples and data.text_length from the data sets where
    the config leaves them at their defaults and those do not fit (as the default
    config.modalities follows the data); returns one line for each value taken and for texts
    that training will cut. A value the user set is kept (check_spec then names the mismatch).
    `specs`: the training data's first, then the evaluators'.
    Synthetic data are generated at the config's sizes and always fit."""
    lines = []
    specs = [s for s in specs if not s["modalities"].get("image", {}).get("generated")]
    if not specs:
        return lines
    if "image" in modalities and config_data.image_size == _default("image_size"):
        sizes = {(s["modalities"]["image"]["height"], s["modalities"]["image"]["width"]) for s in specs}
        (height, width), = sizes if len(sizes) == 1 else ((0, 0),)
        if height == width and height and height != config_data.image_size:
            config_data.image_size = height
            lines.append(f"data.image_size={height} (the data set's images; set it to override)")
    if "audio" in modalities and config_data.audio_samples == _default("audio_samples"):
        longest = max(s["modalities"]["audio"]["max_samples"] for s in specs)
        if longest > config_data.audio_samples:
            config_data.audio_samples = longest
            lines.append(f"data.audio_samples={longest} (the data set's longest clip; set it to override)")
    if "text" in modalities:
        # The build's counts are in its --tokenizer's tokens: used only where that is the config's.
        # Older data sets record bytes only, which are the 'bytes' tokenizer's tokens.
        tokenizer = config_data.tokenizer or "bytes"
        texts = [(s["modalities"]["text"], s.get("build", {})) for s in specs]
        same = [(t, b) for t, b in texts if t.get("tokenizer", "bytes") == tokenizer]
        lengths = {t.get("length") for t, _ in same}
        if config_data.text_length == _default("text_length") and len(same) == len(specs) and \
                len(lengths) == 1 and None not in lengths and lengths != {config_data.text_length}:
            config_data.text_length, = lengths
            lines.append(f"data.text_length={config_data.text_length} (the data set's build --text_length; set it "
                         "to override)")
        longest = max((t.get("max_tokens", t["max_bytes"]) for t, _ in same), default=0)
        if longest > config_data.text_length:
            train_text, train_build = texts[0]  # the build counted at its --text_length: usable if that is ours
            counted = (train_text.get("tokenizer") == tokenizer and train_text.get("length") == config_data.text_length
                       and "texts_longer_than_length" in train_build)
            count = f"{train_build['texts_longer_than_length']} training texts" if counted else "texts"
            lines.append(f"{count} longer than data.text_length={config_data.text_length} tokens (up to {longest}) "
                         f"are cut to that; set --config.data.text_length={longest} to keep them whole")
    return lines


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
        check_image_resize(img, config_data.image_processor)
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
