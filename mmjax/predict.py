"""Runs an export made by `python -m mmjax.export` on raw files, without the training stack.

    python -m mmjax.predict --export=E [--image=a.png] [--audio=b.wav] [--text="..."] [--top_k=5]
    python -m mmjax.predict --export=E --manifest=FILE --out=preds.jsonl [--batch_size=64] [--skip_bad]

The first form prints the top-k classes with their probabilities for one example, given any
subset of the modalities the model has (absent ones are passed as absent, not zero-filled).
The second reads a manifest in the format of `python -m mmjax.data.build` (JSON Lines or CSV;
fields image, audio, text and an optional label) and writes one JSON line per row: the
predicted label, its probability and the top-k; with labels it also prints the accuracy.
An export of a loss.task='generate' run (export.json 'task': 'generate') writes text
instead: the first form prints the generated text, the second writes {"line", "text"} per
row, and where rows carry target_text also "target_text" and "exact_match" (the strings
equal), printing the exact-match rate.
A bad input stops with one line naming the file and the manifest line, or is skipped and
reported with --skip_bad. A damaged export (a file whose sha256 differs from export.json's,
an unreadable export.json or function, class names that do not match the outputs) stops
with one line naming the file.

Raw files are decoded by mmjax/media.py, the functions the data build uses, so a file gives
the predictor exactly the example it gives training. The predictor needs only jax, numpy,
scipy, Pillow and flatbuffers (jax.export's deserializer): of mmjax it imports the
contract, media.py and the manifest reader (data/manifest.py and data/format.py, standard
library only), none of which pulls in flax, optax, orbax, grain, msgpack or ml_collections
(tests/test_predict.py runs it with those blocked).
sentencepiece is needed only for an export that carries a SentencePiece tokenizer, and
`tokenizers` only for one that carries a checkpoint's tokenizer.json; an export of a run with
pretrained towers carries their tokenizer and image processor files, so raw files are prepared
exactly as the training data were.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
from typing import Any

import numpy as np

from mmjax import media
from mmjax.contract import AUDIO_LENGTH, MODALITIES, presence_key
from mmjax.data.manifest import ManifestError, raw_records, resolve_path

FORMAT = "mmjax-export-v1"
SPEC_FILE = "export.json"
PARAMS_FILE = "params.safetensors"
FUNCTION_FILE = "predict.jax_exported"
GENERATE_FILE = "generate.jax_exported"  # a 'generate' export's function: params, batch -> {'tokens'}
TOKENIZER_FILE = "tokenizer.model"
FILES = "files"  # export.json: {path in the folder: {"sha256", "bytes"}} of every other file
FIELDS = (*MODALITIES, "label")
GENERATE_FIELDS = (*MODALITIES, "label", "target_text")  # a 'generate' export's manifest fields


class PredictError(ValueError):
    """Bad input the user can fix; the command prints it as one line and exits 2."""


# ============================================================================ safetensors
# The safetensors layout: 8-byte little-endian header length, a JSON header
# {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
# then the raw little-endian bytes of every tensor. Written here so that neither the
# export nor the predictor needs the safetensors package; files load with it too.
_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "I32": "int32", "I64": "int64",
           "U8": "uint8", "BOOL": "bool"}


def _numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes  # a dependency of jax; only needed for bfloat16 tensors

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def write_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Writes {name: array} (float32, bfloat16, ...) as a safetensors file."""
    codes = {v: k for k, v in _DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        dtype = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.name
        if dtype not in codes:
            raise ValueError(f"safetensors: tensor {name!r} has unsupported dtype {array.dtype}")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": codes[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data start 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path: str) -> tuple[dict, dict]:
    """({name: numpy array}, metadata) from a safetensors file; PredictError if malformed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PredictError(f"cannot read {path}: {e.strerror}") from None
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size].decode("utf-8"))
        body = memoryview(data)[8 + size:]
        metadata = header.pop("__metadata__", {}) or {}
        tensors = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            dtype = _numpy_dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
            shape = tuple(int(n) for n in info["shape"])
            if not 0 <= begin <= end <= len(body) or end - begin != math.prod(shape) * dtype.itemsize:
                raise ValueError(f"tensor {name!r} has bad data offsets")
            tensors[name] = np.frombuffer(body[begin:end], dtype).reshape(shape)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise PredictError(f"{path} is not a valid safetensors file ({e})") from None
    return tensors, metadata


# ============================================================================ raw inputs
@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """Raw inputs -> one row of the model's fields, as the data build stores them and the
    training pipeline pads them (media.py does both). None: the model lacks that modality."""

    image_size: int | None = None
    audio_rate: int | None = None
    audio_samples: int | None = None
    text_length: int | None = None
    tokenizer: Any = None  # a media.py tokenizer
    image_resize: media.ImageResize = media.ImageResize()

    @classmethod
    def from_export(cls, preprocess: dict, export_dir: str) -> "Preprocessor":
        """From export.json's 'preprocess' (keys only for the model's modalities)."""
        image, audio, text = (preprocess.get(m) or {} for m in ("image", "audio", "text"))
        tokenizer = None
        if text:
            tokenizer = media.make_tokenizer(_in_export(text["tokenizer"], export_dir))
        # An image processor copied from a checkpoint (absent in older exports: mmjax's resize).
        resize = media.image_resize(_in_export(image.get("processor", ""), export_dir))
        return cls(image_size=image.get("size"), audio_rate=audio.get("sample_rate"),
                   audio_samples=audio.get("samples"), text_length=text.get("length"),
                   tokenizer=tokenizer, image_resize=resize)

    def row(self, image=None, audio=None, text=None) -> dict:
        """Any of: image (a path, or an array [H, W(, C)] of any size), audio (a WAV path, or
        mono float32 at audio_rate) and text (str) -> the batch fields they fill."""
        row = {}
        if image is not None:
            row["image"] = (media.load_image(image, self.image_size, self.image_resize) if isinstance(image, str)
                            else media.resize_image(image, self.image_size, self.image_resize))
        if audio is not None:
            wave = media.load_wav(audio, self.audio_rate) if isinstance(audio, str) else audio
            row["audio"], row[AUDIO_LENGTH] = media.pad_audio(wave, self.audio_samples)
        if text is not None:
            row["text"] = media.tokenize(text, self.text_length, self.tokenizer)
        return row


def _in_export(name: str, export_dir: str) -> str:
    """A tokenizer / processor name of export.json ('bytes', 'tokenizer.model', 'hf:tokenizer',
    '') with its files' path inside the export folder."""
    if name in ("", "bytes"):
        return name
    if name.startswith(media.CHECKPOINT_PREFIX):
        return media.CHECKPOINT_PREFIX + os.path.join(export_dir, name[len(media.CHECKPOINT_PREFIX):])
    return os.path.join(export_dir, name)


# ============================================================================ integrity
def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: str) -> dict[str, dict]:
    """{'/'-joined path: {'sha256', 'bytes'}} of every file under `folder` but export.json
    (which holds this table, so it cannot list itself)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            if relative != SPEC_FILE:
                files[relative] = {"sha256": sha256(path), "bytes": os.path.getsize(path)}
    return dict(sorted(files.items()))


def verify_files(export_dir: str, spec: dict) -> None:
    """PredictError naming the first file of the export whose size or sha256 differs from
    what export.json recorded; exports from before checksums are not checked."""
    listed = spec.get(FILES)
    if listed is None:
        return
    for name, info in listed.items():
        path = os.path.join(export_dir, *name.split("/"))
        if not os.path.isfile(path):
            raise PredictError(f"{path} is missing (export.json lists it); export the run again")
        size = os.path.getsize(path)
        if size != info["bytes"] or sha256(path) != info["sha256"]:
            why = f"{size} bytes, export.json says {info['bytes']}" if size != info["bytes"] else "its sha256 differs from export.json's"
            raise PredictError(f"{path} is damaged ({why}); export the run again")


def _check_spec(spec) -> None:
    """ValueError if export.json lacks a field the loaders read, or its class names do not
    match the outputs the export was written with."""
    if not isinstance(spec, dict):
        raise ValueError("not a JSON object")
    fields = {"modalities": list, "class_names": list, "inputs": dict, "outputs": dict, "preprocess": dict,
              "params_file": str, "function_file": str}
    for key, kind in fields.items():
        if not isinstance(spec.get(key), kind):
            raise ValueError(f"field {key!r} is {'missing' if key not in spec else 'not a ' + kind.__name__}")
    listed = spec.get(FILES, {})
    if not isinstance(listed, dict) or not all(
            isinstance(i, dict) and isinstance(i.get("sha256"), str) and isinstance(i.get("bytes"), int)
            for i in listed.values()):
        raise ValueError(f"field {FILES!r} is not a table of sha256 and bytes")
    classes = (spec["outputs"].get("logits") or [None, None])[-1]
    if classes is not None and classes != len(spec["class_names"]):
        raise ValueError(f"it lists {len(spec['class_names'])} class names for {classes} outputs")
    if spec.get("task", "classification") == "generate":
        generate = spec.get("generate")
        vocab = generate.get("vocab") if isinstance(generate, dict) else None
        if not isinstance(generate, dict) or not isinstance(generate.get("tokenizer"), str) or \
                not isinstance(generate.get("max_length"), int) or not isinstance(vocab, dict) or \
                any(not isinstance(vocab.get(k), int) for k in ("size", "bos_id", "eos_id", "pad_id")):
            raise ValueError("field 'generate' needs tokenizer, max_length and vocab {size, bos_id, eos_id, pad_id}")


def read_spec(export_dir: str, *, verify: bool = True) -> dict:
    """The export's export.json, checked, and (verify) every file it lists checked against
    its sha256; PredictError naming the folder or the file at fault."""
    path = os.path.join(export_dir, SPEC_FILE)
    if not os.path.isfile(path):
        raise PredictError(f"--export={export_dir} is not an export (no {SPEC_FILE}); make one "
                           "with python -m mmjax.export --workdir=W --out=E")
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        if isinstance(spec, dict) and spec.get("format") != FORMAT:
            raise PredictError(f"{path}: format {spec.get('format')!r}, this predictor reads {FORMAT!r}")
        _check_spec(spec)
    except PredictError:
        raise
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError included
        raise PredictError(f"{path} is damaged ({e}); export the run again") from None
    if verify:
        verify_files(export_dir, spec)
    return spec


def deserialize_function(path: str):
    """The jax.export function of an export; PredictError naming the file if it does not load."""
    from jax import export as jax_export

    try:
        with open(path, "rb") as f:
            return jax_export.deserialize(bytearray(f.read()))
    except OSError as e:
        raise PredictError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - flatbuffers raises anything on damaged bytes
        raise PredictError(f"{path} is damaged (jax.export cannot read it: {type(e).__name__}); "
                           "export the run again") from None


# ============================================================================ the predictor
class Predictor:
    """An export loaded for inference: raw inputs -> class probabilities, or generated text
    for an export of a 'generate' run (`task`).

    `example` takes any of image (a path, or an array [H, W(, C)] of any size), audio (a WAV
    path, or mono float32 at the export's rate) and text (str); missing ones are passed to
    the model as absent.
    """

    def __init__(self, export_dir: str, *, batch_size: int = 64):
        import jax  # here, not at the top: preparing inputs needs no jax

        self.directory = export_dir
        self.spec = read_spec(export_dir)
        self.task = str(self.spec.get("task", "classification"))  # older exports: classification
        self.modalities = tuple(self.spec["modalities"])
        self.class_names = list(self.spec["class_names"])
        self.batch_size = int(batch_size)
        self.preprocessor = Preprocessor.from_export(self.spec["preprocess"], export_dir)
        params, _ = read_safetensors(os.path.join(export_dir, self.spec["params_file"]))
        function_file = os.path.join(export_dir, self.spec["function_file"])
        exported = deserialize_function(function_file)
        if self.task == "generate":
            generate = self.spec["generate"]
            # The target tokenizer: the text's when the model reads text too, else its own copy.
            self.target_tokenizer = media.make_tokenizer(_in_export(generate["tokenizer"], export_dir))
            if media.target_vocab(self.target_tokenizer) != media.TargetVocab(**generate["vocab"]):
                raise PredictError(f"{os.path.join(export_dir, SPEC_FILE)}: its target vocabulary {generate['vocab']} "
                                   f"is not its tokenizer's ({generate['tokenizer']}); export the run again")
            length = exported.out_avals[0].shape[-1] if exported.out_avals else None
            if length != generate["max_length"]:
                raise PredictError(f"{os.path.join(export_dir, SPEC_FILE)} says max_length {generate['max_length']} "
                                   f"but {function_file} gives {length} tokens; export the run again")
        else:
            classes = exported.out_avals[0].shape[-1] if exported.out_avals else None
            if classes != len(self.class_names):
                raise PredictError(f"{os.path.join(export_dir, SPEC_FILE)} lists {len(self.class_names)} class names "
                                   f"but {function_file} gives {classes}; export the run again")
        platform = jax.default_backend()
        if platform not in exported.platforms:
            raise PredictError(f"the export runs on {', '.join(exported.platforms)}, not on this "
                               f"machine's {platform}; export again from a newer mmjax")
        self.params = jax.device_put(params)
        self._call = jax.jit(exported.call)

    # ---------------------------------------------------------------- inputs
    def example(self, image=None, audio=None, text=None) -> dict:
        """Raw inputs (arrays, paths or str) -> the model's fields for one row."""
        given = {m: v for m, v in (("image", image), ("audio", audio), ("text", text)) if v is not None}
        unknown = [m for m in given if m not in self.modalities]
        if unknown:
            raise PredictError(f"the model has no {unknown[0]} input; it takes {', '.join(self.modalities)}")
        if not given:
            raise PredictError(f"no input given; the model takes any of {', '.join(self.modalities)}")
        return self.preprocessor.row(**given)

    def _batch(self, rows: list[dict]) -> dict:
        """Rows -> one batch of batch_size (absent modalities flagged, padding rows absent)."""
        size = max(self.batch_size, len(rows))
        shapes = {name: (tuple(s["shape"][1:]), s["dtype"]) for name, s in self.spec["inputs"].items()}
        batch = {name: np.zeros((size, *shape), dtype) for name, (shape, dtype) in shapes.items()}
        for i, row in enumerate(rows):
            for m in self.modalities:
                if m in row:
                    batch[presence_key(m)][i] = True
            for key, value in row.items():
                batch[key][i] = value
        return batch

    def _outputs(self, rows: list[dict], key: str) -> list[np.ndarray]:
        """The function's output `key` for rows made by `example`, in batches: one array a row."""
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            result = self._call(self.params, self._batch(chunk))
            out.extend(np.asarray(result[key])[:len(chunk)])
        return out

    def probabilities(self, rows: list[dict]) -> np.ndarray:
        """float32 [len(rows), num_classes] for rows made by `example`, in batches."""
        if self.task == "generate":
            raise PredictError(f"{self.directory} is an export of a 'generate' run: it writes text (Predictor.generate)")
        out = self._outputs(rows, "probabilities")
        return np.stack(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def tokens(self, rows: list[dict]) -> np.ndarray:
        """A 'generate' export's decoded ids, int32 [len(rows), max_length] (media.decode_target
        reads them: up to the first EOS)."""
        if self.task != "generate":
            raise PredictError(f"{self.directory} is an export of a {self.task!r} run: it predicts classes")
        out = self._outputs(rows, "tokens")
        return np.stack(out) if out else np.zeros((0, self.spec["generate"]["max_length"]), np.int32)

    def generate(self, rows: list[dict]) -> list[str]:
        """The generated text of each row made by `example`."""
        return [media.decode_target(ids, self.target_tokenizer) for ids in self.tokens(rows)]

    def top_k(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]


# ============================================================================ manifests
def _check_row(obj: dict, base_dir: str, predictor: Predictor) -> tuple[dict, int | str | None]:
    """Manifest object -> (inputs for Predictor.example, true class id, or for a 'generate'
    export the row's target_text; None if the row has none)."""
    fields = GENERATE_FIELDS if predictor.task == "generate" else FIELDS
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; fields are {', '.join(fields)}")
    inputs = {}
    for m in MODALITIES:
        value = obj.get(m)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{m!r} must be a string, got {type(value).__name__}")
        inputs[m] = value if m == "text" else resolve_path(base_dir, value)
    if predictor.task == "generate":  # a label is allowed beside the target text, and unused
        target = obj.get("target_text")
        if target is not None and not isinstance(target, str):
            raise ValueError(f"'target_text' must be a string, got {type(target).__name__} {target!r}")
        return inputs, target or None
    label = obj.get("label")
    if label is None or label == "":
        return inputs, None
    if isinstance(label, str) and label in predictor.class_names:
        return inputs, predictor.class_names.index(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(predictor.class_names):
        return inputs, label
    shown = ", ".join(predictor.class_names[:10]) + (", ..." if len(predictor.class_names) > 10 else "")
    raise ValueError(f"unknown label {label!r}: classes are {shown}")


def check_out(out: str) -> None:
    """PredictError, before any prediction, if `out` cannot become the predictions file."""
    if os.path.isdir(out):
        raise PredictError(f"--out={out} is a folder; give a file name such as {os.path.join(out, 'preds.jsonl')}")
    existing = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise PredictError(f"--out={out}: {existing} is a file, not a folder")
    try:  # a real write, not os.access: root passes that on read-only mounts
        probe = tempfile.mkdtemp(prefix=".preds-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as e:
        raise PredictError(f"--out={out}: cannot write in {existing} ({e.strerror})") from None


def predict_manifest(predictor: Predictor, manifest: str, out: str, *, top_k: int = 5,
                     skip_bad: bool = False, log=print) -> dict:
    """Predicts every row of `manifest` into JSON Lines `out` (written atomically).

    Returns {'rows', 'labelled', 'correct', 'accuracy', 'skipped': [(line, problem)]}; for a
    'generate' export 'labelled' counts the rows with target_text and 'accuracy' is their
    exact-match rate.
    """
    check_out(out)
    manifest = os.path.abspath(manifest)
    base_dir = os.path.dirname(manifest)
    skipped, results = [], []

    def bad(line: int, problem: str) -> None:
        message = f"{manifest} line {line}: {problem}"
        if not skip_bad:
            raise PredictError(message + " (--skip_bad skips bad rows)")
        skipped.append((line, problem))
        log(f"mmjax.predict: skipped {message}", file=sys.stderr)

    try:
        records = raw_records(manifest, need_target=False)
    except ManifestError as e:
        raise PredictError(str(e)) from None
    pending: list[tuple[int, dict, int | str | None]] = []

    def flush() -> None:
        if predictor.task == "generate":
            for (line, _, target), text in zip(pending, predictor.generate([row for _, row, _ in pending])):
                result = {"line": line, "text": text}
                if target is not None:
                    result.update(target_text=target, exact_match=text == target)
                results.append(result)
            pending.clear()
            return
        probs = predictor.probabilities([row for _, row, _ in pending])
        for (line, _, truth), p in zip(pending, probs):
            best = int(np.argmax(p))
            result = {"line": line, "label": predictor.class_names[best], "class_id": best,
                      "probability": float(p[best]),
                      "top_k": [{"label": n, "probability": q} for n, q in predictor.top_k(p, top_k)]}
            if truth is not None:
                result.update(true_label=predictor.class_names[truth], correct=best == truth)
            results.append(result)
        pending.clear()

    for line, obj in records:
        if isinstance(obj, str):
            bad(line, obj)
            continue
        try:
            inputs, truth = _check_row(obj, base_dir, predictor)
            row = predictor.example(**inputs)
        except ValueError as e:  # PredictError included
            bad(line, str(e))
            continue
        pending.append((line, row, truth))
        if len(pending) == predictor.batch_size:
            flush()
    if pending:
        flush()
    if not results:
        raise PredictError(f"{manifest}: no usable rows" + (f" ({len(skipped)} skipped)" if skipped else ""))
    directory = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".preds-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for result in results:
                f.write(json.dumps(result, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    mark, metric = ("exact_match", "exact match") if predictor.task == "generate" else ("correct", "accuracy")
    labelled = [r for r in results if mark in r]
    correct = sum(r[mark] for r in labelled)
    summary = {"rows": len(results), "labelled": len(labelled), "correct": correct,
               "accuracy": correct / len(labelled) if labelled else None, "skipped": skipped}
    accuracy = f"; {metric} {summary['accuracy']:.4f} over {len(labelled)} labelled rows" if labelled else ""
    log(f"wrote {len(results)} predictions to {out}{accuracy}")
    if skipped:
        log(f"skipped {len(skipped)} bad row{'s' * (len(skipped) > 1)}; first: {manifest} line "
            f"{skipped[0][0]}: {skipped[0][1]}")
    return summary


# ============================================================================ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmjax.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="folder written by python -m mmjax.export")
    p.add_argument("--image", help=f"an image file ({', '.join(media.IMAGE_FORMATS)})")
    p.add_argument("--audio", help="a WAV file (PCM 8/16/24/32-bit or float, any rate and channels)")
    p.add_argument("--text", help="a text string")
    p.add_argument("--manifest", help="JSON Lines or CSV manifest, as for python -m mmjax.data.build")
    p.add_argument("--out", help="predictions, one JSON line per manifest row")
    p.add_argument("--top_k", type=int, default=5, help="classes to report per example")
    p.add_argument("--batch_size", type=int, default=64, help="examples per model call")
    p.add_argument("--skip_bad", action="store_true", help="skip bad manifest rows and report them")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        single = any(v is not None for v in (args.image, args.audio, args.text))
        if args.manifest and single:
            raise PredictError("give either --manifest or --image/--audio/--text, not both")
        if args.manifest and not args.out:
            raise PredictError("--manifest needs --out=preds.jsonl")
        if not args.manifest and not single:
            raise PredictError("nothing to predict: give --image/--audio/--text or --manifest")
        if args.top_k < 1 or args.batch_size < 1:
            raise PredictError("--top_k and --batch_size must be at least 1")
        if args.out:
            check_out(args.out)  # before the export loads and every row is predicted
        predictor = Predictor(args.export, batch_size=args.batch_size)
        if args.manifest:
            predict_manifest(predictor, args.manifest, args.out, top_k=args.top_k,
                             skip_bad=args.skip_bad)
        elif predictor.task == "generate":
            print(predictor.generate([predictor.example(image=args.image, audio=args.audio, text=args.text)])[0])
        else:
            row = predictor.example(image=args.image, audio=args.audio, text=args.text)
            probs = predictor.probabilities([row])[0]
            width = max(len(n) for n in predictor.class_names)
            for name, p in predictor.top_k(probs, args.top_k):
                print(f"{name:<{width}}  {p:.4f}")
    except ValueError as e:  # PredictError and decoding errors, which name the file
        print(f"mmjax.predict: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
