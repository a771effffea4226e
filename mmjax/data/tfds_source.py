"""A TFDS data set (ArrayRecord format, read with `tfds.data_source`) as an mmjax source.

config.data.train = 'tfds:NAME' (NAME may carry a config and version: 'name/config:1.0.0'),
with config.data.tfds.{data_dir, train_split, eval_split, features, audio_rate}.
`features` maps mmjax's names to the data set's features, 'image=img,text=caption,
label=digit'; names it leaves out map to themselves when the data set has such a feature.
The label must be a ClassLabel (its names become the class names). `target_text=FEATURE`
(a Text feature) gives the examples a target text for loss.task 'generate' (then `text`, if
mapped, is the prompt); a data set needs a label, a target text or both.

Each record is converted on read, in the pipeline's worker threads or processes:
images to RGB uint8 [image_size, image_size, 3] (shorter side resized, centre crop),
audio (a 1-D Tensor or Audio feature) to mono float32 at data.audio_rate, text and
target_text (Text features, bytes) to str. The spec describes the records after conversion; TFDS does not
record clip lengths, so clips longer than data.audio_samples are cut by the pipeline, nor
text lengths, so the spec's target_text.max_tokens is 0 (not measured).
TensorFlow is not needed: TFDS reads ArrayRecord files with numpy decoders.

A prepared data set's features.json names a Python class for each feature, and TFDS
imports the module of a class it does not know. mmjax refuses any class outside
tensorflow_datasets before TFDS reads the file, so a data directory cannot make the run
import code.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from mmjax import media
from mmjax.data.format import FORMAT, validate_spec

PREFIX = "tfds:"
_MMJAX_NAMES = ("image", "text", "audio", "label", "target_text")
_INPUTS = ("image", "text", "audio")


def parse_features(text: str) -> dict[str, str]:
    """'image=img, label=digit' -> {'image': 'img', 'label': 'digit'}; checks the names."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        ours, sep, theirs = (s.strip() for s in part.partition("="))
        if not sep or not ours or not theirs:
            raise ValueError(f"config.data.tfds.features: {part!r} is not 'mmjax_name=feature'")
        if ours not in _MMJAX_NAMES:
            raise ValueError(f"config.data.tfds.features: {ours!r} is not one of "
                             f"{', '.join(_MMJAX_NAMES)}")
        mapping[ours] = theirs
    return mapping


class TfdsRecords:
    """Random-access records of one TFDS split, converted to stored-example dicts."""

    def __init__(self, data_source, mapping: dict[str, str], *, image_size: int,
                 audio_rate: int, from_rate: int, where: str, resize: media.ImageResize = media.ImageResize()):
        self.data_source = data_source
        self.resize = resize
        self.mapping = mapping
        self.image_size = image_size
        self.audio_rate = audio_rate
        self.from_rate = from_rate
        self.where = where

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, index: int) -> dict:
        raw = self.data_source[index]
        try:
            return self._convert(raw)
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.where} example {index}: {e}") from None

    def _convert(self, raw: dict) -> dict:
        out = {}
        for ours, theirs in self.mapping.items():
            value = raw[theirs]
            if ours == "image":
                value = np.asarray(value)
                if value.shape != (self.image_size, self.image_size, 3) or value.dtype != np.uint8:
                    value = media.resize_image(value, self.image_size, self.resize)
            elif ours == "audio":
                value = media.resample(media.to_mono_float(np.asarray(value)), self.from_rate,
                                        self.audio_rate)
            elif ours in ("text", "target_text"):
                value = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            elif ours == "label":
                value = int(value)
            out[ours] = value
        return out


_CLASS_NAME = re.compile(r'"python_?class_?name"\s*:\s*"([^"]*)"', re.IGNORECASE)


def check_feature_classes(data_dir: str, dataset: str) -> None:
    """Raises ValueError if a features.json of `dataset` under `data_dir` names a feature
    class outside tensorflow_datasets (TFDS would import its module)."""
    folder = os.path.join(os.path.expanduser(data_dir), dataset.split("/")[0].split(":")[0])
    for path in sorted(glob.glob(os.path.join(folder, "**", "features.json"), recursive=True)):
        with open(path, encoding="utf-8", errors="replace") as f:
            names = _CLASS_NAME.findall(f.read())
        foreign = [n for n in names if not n.startswith("tensorflow_datasets.")]
        if foreign:
            raise ValueError(f"{path} names the feature class {foreign[0]!r}, outside tensorflow_datasets; "
                             "mmjax does not import code named by a data file")


def open_tfds(name: str, split: str, config_data):
    """(records, spec) of split 'train'/'eval' of 'tfds:NAME' (see module docstring)."""
    import tensorflow_datasets as tfds  # here: heavy, and only runs that read TFDS need it

    dataset = name[len(PREFIX):]
    t = config_data.tfds
    tfds_split = t.train_split if split == "train" else t.eval_split
    where = f"{name} split {tfds_split!r}"
    check_feature_classes(t.data_dir or os.fspath(tfds.core.constants.DATA_DIR), dataset)
    try:
        builder = tfds.builder(dataset, data_dir=t.data_dir or None)
        data_source = tfds.data_source(dataset, split=tfds_split, data_dir=t.data_dir or None,
                                       download=False)
    except Exception as e:  # TFDS raises many kinds; the message is what the user needs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"cannot open {where} (config.data.tfds.data_dir={t.data_dir!r}): {first}. Prepare "
            "it with file_format='array_record' and check the name, split and data_dir") from None
    features = builder.info.features
    mapping = {m: m for m in _MMJAX_NAMES if m in features}
    mapping.update(parse_features(t.features))
    for ours, theirs in mapping.items():
        if theirs not in features:
            raise ValueError(f"config.data.tfds.features maps {ours!r} to {theirs!r}, but {name} "
                             f"has only the features {', '.join(sorted(features))}")
    if "label" not in mapping and "target_text" not in mapping:
        raise ValueError(f"{name} has no 'label' feature; map one with --config.data.tfds.features='label=FEATURE' "
                         "(or 'target_text=FEATURE' for loss.task generate)")
    label = features[mapping["label"]] if "label" in mapping else None
    if label is not None and not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(f"{name}: the label feature {mapping['label']!r} must be a ClassLabel, "
                         f"it is {type(label).__name__}")
    if "target_text" in mapping and not isinstance(features[mapping["target_text"]], tfds.features.Text):
        raise ValueError(f"{name}: the target_text feature {mapping['target_text']!r} must be a Text feature, "
                         f"it is {type(features[mapping['target_text']]).__name__}")
    if not set(mapping) & set(_INPUTS):
        raise ValueError(f"{name}: no feature maps to image, text or audio; set "
                         "config.data.tfds.features, e.g. 'image=img,text=caption'")
    from_rate = int(t.audio_rate) or int(config_data.audio_rate)
    if "audio" in mapping:
        from_rate = int(getattr(features[mapping["audio"]], "sample_rate", None) or from_rate)
    resize = media.image_resize(config_data.image_processor)  # the run's: a pretrained tower's processor
    records = TfdsRecords(data_source, mapping, image_size=int(config_data.image_size),
                          audio_rate=int(config_data.audio_rate), from_rate=from_rate, where=where, resize=resize)
    modalities = {}
    if "image" in mapping:
        size = int(config_data.image_size)
        modalities["image"] = {"height": size, "width": size, "channels": 3}
        if config_data.image_processor:
            modalities["image"].update(resize=resize.to_json(), processor=str(config_data.image_processor))
    if "audio" in mapping:
        modalities["audio"] = {"sample_rate": int(config_data.audio_rate),
                               "max_samples": int(config_data.audio_samples)}
    if "text" in mapping:
        modalities["text"] = {"max_bytes": int(config_data.text_length)}
    spec = {"format": FORMAT, "num_examples": len(records),
            "num_classes": int(label.num_classes) if label else 0, "class_names": list(label.names) if label else [],
            "modalities": modalities, "tfds": {"name": dataset, "split": tfds_split,
                                               "features": mapping}}
    if "target_text" in mapping:  # older readers and specs: classification only
        spec["tasks"] = [task for task, ours in (("classification", "label"), ("generate", "target_text"))
                         if ours in mapping]
        spec["target_text"] = {"max_tokens": 0}  # TFDS records no text lengths
    return records, validate_spec(spec, where=where)
