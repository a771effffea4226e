"""Builds a data set directory from a user's files: manifest -> ArrayRecord shards + spec.json.

    python -m mmjax.data.build --manifest=FILE --out=DIR [--image_size=16] [--audio_rate=8000]
        [--audio_samples=0] [--text_length=32] [--tokenizer=bytes] [--image_from=hf:DIR]
        [--audio_from=hf:DIR] [--classes=...] [--optional_modalities=...] [--skip_bad]
        [--workers=0] [--num_shards=0] [--overwrite]

The manifest (JSON Lines or CSV, see manifest.py) is checked first; then worker processes
(all cores by default) decode images (resized to image_size x image_size RGB: the centred
square, bilinear; or as the image processor of the checkpoint --image_from names, at its size
unless --image_size) and WAV files (mono, resampled to audio_rate, or to the sampling rate of
--audio_from's feature extractor; cut to audio_samples if that is > 0), and the main process
writes the encoded examples in manifest order. Texts are stored whole; the build counts those
longer than --text_length tokens of --tokenizer (the length training follows by default, which
cuts them) and says so. Targets are stored as 'label' (class id),
'labels' (int32 class ids), 'target' (float32 [T]) and 'target_text' (str, whole, tokenized by
the pipeline; spec 'target_text' gives the --tokenizer ids its longest needs, BOS and EOS
included); spec.json lists them in 'tasks'.
Rows may lack the modalities named in --optional_modalities (spec 'optional_modalities'):
such examples are stored without the field, and training batches flag them absent. Any bad row stops the build with one
message naming the manifest line, unless --skip_bad, which skips such rows and lists them
in DIR/skipped.jsonl (or --report). Atomic output: the data set is built in a hidden folder
(beside DIR, or inside it if DIR exists) and moved into DIR when complete, spec.json last;
a failed or interrupted build leaves DIR as it was, and --overwrite replaces only the files
of the data set already there (those its spec.json lists), never other files in DIR.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import math
import multiprocessing
import os
import shutil
import sys

import numpy as np

from mmjax import media
from mmjax.data import codec
from mmjax.data.format import FORMAT, SPEC_FILE, dataset_files, shard_name
from mmjax.data.manifest import Manifest, ManifestError, parse_classes, read_manifest
from mmjax.data.writer import ShardWriter, clashes, make_aside, replace_dataset, write_json_atomically, write_spec

REPORT_FILE = "skipped.jsonl"
EXAMPLES_PER_SHARD = 5000
TEXT_LENGTH = 32  # --text_length's default: config.data.text_length's
_CHUNK = 32  # rows per worker task: large enough to amortise the IPC, small for a smooth bar


class BuildError(ValueError):
    """A problem the user can fix (bad row, bad flag, busy output); printed as one line."""


# ---------------------------------------------------------------- decoding (in workers)
_TOKENIZERS: dict = {}  # name -> tokenizer, made once per process (a checkpoint's may take a while)


def _tokenizer(name: str):
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = media.make_tokenizer(name)
    return _TOKENIZERS[name]


def _tokens(text: str, name: str) -> int:
    """The number of ids `name` gives `text` uncut (no tokenizer gives more than bytes + specials)."""
    return len(_tokenizer(name).ids(text, len(text.encode("utf-8")) + 16))


def _decode_row(fields: dict, options: dict) -> tuple[dict, dict]:
    """Manifest fields -> (stored example, facts for the spec); ValueError if undecodable."""
    example, facts = {}, {}
    if "image" in fields:
        example["image"] = media.load_image(fields["image"], options["image_size"], options["image_resize"])
    if "audio" in fields:
        wave = media.load_wav(fields["audio"], options["audio_rate"])
        cap = options["audio_samples"]
        facts["cut"] = bool(cap and len(wave) > cap)
        example["audio"] = wave[:cap] if facts["cut"] else wave
        facts["samples"] = len(example["audio"])
    if "text" in fields:
        example["text"] = fields["text"]
        facts["text_bytes"] = len(fields["text"].encode("utf-8"))
        facts["text_tokens"] = _tokens(fields["text"], options["tokenizer"])
    if "label" in fields:
        example["label"] = int(fields["label"])
    if "labels" in fields:
        example["labels"] = np.asarray(fields["labels"], np.int32).reshape(-1)
    if "target" in fields:
        example["target"] = np.asarray(fields["target"], np.float32)
    if "target_text" in fields:
        example["target_text"] = fields["target_text"]
        facts["target_bytes"] = len(fields["target_text"].encode("utf-8"))
        facts["target_tokens"] = media.target_tokens_needed(fields["target_text"], _tokenizer(options["tokenizer"]))
    facts["absent"] = [m for m in options["optional"] if m not in fields]
    return example, facts


def _decode_chunk(task: tuple[list[tuple[int, dict]], dict]) -> list[tuple]:
    """Worker task: [(line, fields)] -> [(line, record bytes | None, facts | problem)]."""
    rows, options = task
    out = []
    for line, fields in rows:
        try:
            example, facts = _decode_row(fields, options)
            out.append((line, codec.encode(example), facts))
        except ValueError as e:
            out.append((line, None, str(e)))
    return out


def _decoded(tasks: list, workers: int):
    """Yields each task's results in order, at most 2 tasks per worker in flight."""
    if workers <= 1:
        for task in tasks:
            yield _decode_chunk(task)
        return
    # spawn, not fork: the caller may have started threads (JAX, grain) that fork would copy.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending = collections.deque()
        tasks = iter(tasks)
        try:
            for task in tasks:
                pending.append(pool.submit(_decode_chunk, task))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# ---------------------------------------------------------------- the output directory
def _old_dataset(out: str, overwrite: bool) -> list[str]:
    """The files of the data set already in `out` (to be replaced), refusing to replace one
    without --overwrite; nothing is deleted here (see replace_dataset)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise BuildError(f"--out={out} is a file; give a directory")
    if not os.path.isdir(out):
        return []
    try:
        old = dataset_files(out)
    except ValueError as e:
        raise BuildError(f"--out={out} has a spec.json that is not an mmjax data set ({e}); choose another "
                         "directory") from None
    if old and not overwrite:
        raise BuildError(f"--out={out} already holds a data set; pass --overwrite to "
                         "replace it or choose another directory")
    return old


def _spec(manifest: Manifest, num_examples: int, options: dict, facts: dict) -> dict:
    """The built data set's spec.json (write_spec checks it)."""
    modalities = {}
    if "image" in manifest.modalities:
        size = options["image_size"]
        modalities["image"] = {"height": size, "width": size, "channels": 3}
        if options["image_from"]:  # absent: mmjax's own resize (every older data set)
            modalities["image"].update(resize=options["image_resize"].to_json(), processor=options["image_from"])
    if "audio" in manifest.modalities:
        modalities["audio"] = {"sample_rate": options["audio_rate"],
                               "max_samples": int(facts["max_samples"])}
    if "text" in manifest.modalities:
        modalities["text"] = {"max_bytes": int(facts["max_text_bytes"]), "length": options["text_length"],
                              "tokenizer": options["tokenizer"], "max_tokens": int(facts["max_text_tokens"])}
    spec = {
        "format": FORMAT,
        "num_examples": num_examples,
        "num_classes": len(manifest.class_names),
        "class_names": manifest.class_names,
        "modalities": modalities,
        "shards": list(facts["shards"]),
        "build": {"manifest": manifest.path, "skipped_rows": int(facts["skipped"]),
                  "audio_clips_cut": int(facts["cut"])},
    }
    if "text" in manifest.modalities:
        spec["build"]["texts_longer_than_length"] = int(facts["texts_cut"])
    if facts["report"]:
        spec["build"]["report"] = facts["report"]
    if manifest.tasks != ["classification"]:  # older readers and specs: classification only
        spec["tasks"] = manifest.tasks
    if "target" in manifest.targets:
        spec["target_size"] = manifest.target_size
    if "target_text" in manifest.targets:
        spec["target_text"] = {"max_tokens": int(facts["max_target_tokens"]), "max_bytes": int(facts["max_target_bytes"]),
                               "tokenizer": options["tokenizer"]}
    if manifest.optional:
        spec["optional_modalities"] = list(manifest.optional)
        spec["build"]["examples_without"] = {m: int(facts[f"absent_{m}"]) for m in manifest.optional}
    return spec


# ---------------------------------------------------------------- the build
def build(manifest_path: str, out: str, *, image_size: int = 0, audio_rate: int = 0,
          audio_samples: int = 0, text_length: int = TEXT_LENGTH, tokenizer: str = "bytes",
          image_from: str = "", audio_from: str = "", classes: str = "", modalities: str = "",
          optional_modalities: str = "", skip_bad: bool = False, report: str = "", workers: int = 0, num_shards: int = 0,
          overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Builds DIR from a manifest (see module docstring); returns the spec written.

    Raises BuildError (or ManifestError, also a ValueError) with one line naming the
    problem; nothing that looks like a data set is left behind then.
    """
    image_resize, image_size, audio_rate = _checkpoint_preprocessing(image_from, image_size, audio_from, audio_rate)
    if image_size <= 0 or audio_rate <= 0 or audio_samples < 0 or text_length <= 0:
        raise BuildError("--image_size, --audio_rate and --text_length must be > 0 and --audio_samples >= 0")
    manifest = read_manifest(
        manifest_path, classes=parse_classes(classes),
        modalities=[m.strip() for m in modalities.split(",") if m.strip()] or None,
        optional=[m.strip() for m in optional_modalities.split(",") if m.strip()])
    bad = list(manifest.bad)
    if bad and not skip_bad:
        line, problem = bad[0]
        more = f" ({len(bad) - 1} more bad rows; --skip_bad skips them)" if len(bad) > 1 else ""
        raise BuildError(manifest.message(line, problem) + more)
    rows = manifest.rows
    if not rows:
        first = f"; first: {manifest.message(*bad[0])}" if bad else ""
        raise BuildError(f"{manifest.path}: no usable rows ({len(bad)} bad{first})")
    workers = workers or os.cpu_count() or 1
    workers = min(workers, math.ceil(len(rows) / _CHUNK))
    shards = num_shards or math.ceil(len(rows) / EXAMPLES_PER_SHARD)
    rows_per_part = math.ceil(len(rows) / max(1, min(shards, len(rows))))
    options = {"image_size": image_size, "image_resize": image_resize, "image_from": image_from,
               "audio_rate": audio_rate, "audio_samples": audio_samples, "optional": manifest.optional,
               "text_length": text_length, "tokenizer": tokenizer or "bytes"}
    if "text" in manifest.modalities or "target_text" in manifest.targets:
        try:
            media.make_tokenizer(options["tokenizer"])
        except ValueError as e:
            raise BuildError(f"--tokenizer: {e}".replace("config.data.tokenizer=", "")) from None

    old = _old_dataset(out, overwrite)
    # Names this build will take in `out` (fewer shards if --skip_bad empties some): refused now,
    # before any decoding, if one belongs to the user.
    parts = max(1, min(shards, len(rows)))
    report_in_out = not report and skip_bad
    taken = clashes(out, [SPEC_FILE, *(shard_name(i, parts) for i in range(parts))] +
                    ([REPORT_FILE] if report_in_out else []), old)
    if taken:
        hint = " (or pass --report=PATH)" if taken[0] == REPORT_FILE else ""
        raise BuildError(f"--out={out} has {taken[0]}, which is not part of a data set of ours; move it away{hint} "
                         "or choose another directory")
    try:
        aside = make_aside(out)
    except OSError as e:
        raise BuildError(f"--out={out}: cannot write there ({e.strerror or e})") from None
    try:
        return _build_into(aside, out, manifest, rows, bad, options, workers=workers,
                           rows_per_part=rows_per_part, skip_bad=skip_bad, report=report, progress=progress,
                           log=log)
    finally:
        shutil.rmtree(aside, ignore_errors=True)  # gone already after a successful move


def _build_into(aside: str, out: str, manifest: Manifest, rows: list, bad: list, options: dict, *,
                workers: int, rows_per_part: int, skip_bad: bool, report: str, progress: bool, log) -> dict:
    """Decodes and writes the data set in the folder `aside`, then moves it into `out`."""
    audio_samples, text_length = options["audio_samples"], options["text_length"]
    shards = ShardWriter(aside)
    facts = collections.Counter(max_samples=0, max_text_bytes=0, max_text_tokens=0, max_target_bytes=0,
                                max_target_tokens=0)
    tasks = [([(r.line, r.fields) for r in rows[i:i + _CHUNK]], options)
             for i in range(0, len(rows), _CHUNK)]
    bar = _progress_bar(len(rows), progress)
    position, written = 0, 0
    try:
        for results in _decoded(tasks, workers):
            for line, record, info in results:
                if record is None:
                    if not skip_bad:
                        raise BuildError(manifest.message(line, info))
                    bad.append((line, info))
                else:
                    shards.write(record, position // rows_per_part)
                    written += 1
                    facts["cut"] += info.get("cut", False)
                    facts["max_samples"] = max(facts["max_samples"], info.get("samples", 0))
                    facts["max_text_bytes"] = max(facts["max_text_bytes"], info.get("text_bytes", 0))
                    facts["max_text_tokens"] = max(facts["max_text_tokens"], info.get("text_tokens", 0))
                    facts["texts_cut"] += info.get("text_tokens", 0) > text_length
                    facts["max_target_bytes"] = max(facts["max_target_bytes"], info.get("target_bytes", 0))
                    facts["max_target_tokens"] = max(facts["max_target_tokens"], info.get("target_tokens", 0))
                    for m in info.get("absent", ()):
                        facts[f"absent_{m}"] += 1
                position += 1
                bar.update(1)
        if not written:
            raise BuildError(f"{manifest.path}: no usable rows ({len(bad)} bad; first: "
                             f"{manifest.message(*sorted(bad)[0])})")
        count = shards.finish()
    except BaseException:
        shards.abort()
        raise
    finally:
        bar.close()
    bad.sort()
    facts["skipped"] = len(bad)
    facts["shards"] = shards.names
    facts["report"] = REPORT_FILE if bad and not report else ""
    report_path = report or os.path.join(out, REPORT_FILE)
    if bad:
        write_json_atomically(report or os.path.join(aside, REPORT_FILE),
                              [{"line": n, "problem": p} for n, p in bad], lines=True)
    spec = _spec(manifest, written, options, facts)
    write_spec(aside, spec)  # last: now the folder is a data set
    try:
        replace_dataset(aside, out)  # the old data set's files go only now
    except OSError as e:
        raise BuildError(f"--out={out}: cannot move the built data set there ({e}); {out} is as it was") from None
    except ValueError as e:
        raise BuildError(str(e)) from None

    described = ", ".join(_describe(name, fields) for name, fields in spec["modalities"].items())
    labelled = [f"{spec['num_classes']} classes"] if spec["num_classes"] else []
    if "multilabel" in spec.get("tasks", ()):
        labelled.append("multi-label")
    if "target_size" in spec:
        labelled.append(f"{spec['target_size']} regression target{'s' * (spec['target_size'] > 1)}")
    if "target_text" in spec:
        labelled.append(f"target texts of up to {spec['target_text']['max_tokens']} {options['tokenizer']} "
                        "tokens with BOS and EOS")
    log(f"wrote {written} examples ({described}; {', '.join(labelled)}) in {count} "
        f"shard{'s' * (count > 1)} to {out}")
    for m, n in spec["build"].get("examples_without", {}).items():
        log(f"{n} examples have no {m} (flagged absent in training batches)")
    if bad:
        log(f"skipped {len(bad)} bad row{'s' * (len(bad) > 1)}, listed in {report_path}; first: "
            f"{manifest.message(*bad[0])}")
    if facts["cut"]:
        log(f"{facts['cut']} audio clips longer than --audio_samples={audio_samples} were cut "
            "to that length")
    if facts["texts_cut"]:
        log(f"{facts['texts_cut']} of {written} texts are longer than --text_length={text_length} "
            f"{options['tokenizer']} tokens (the longest: {facts['max_text_tokens']}) and will be cut to that in "
            f"training; rebuild with --text_length={facts['max_text_tokens']} to keep them whole")
    return spec


def _checkpoint_preprocessing(image_from: str, image_size: int, audio_from: str,
                              audio_rate: int) -> tuple[media.ImageResize, int, int]:
    """(image resize policy, image size, audio rate): a checkpoint's where --image_from /
    --audio_from name one (its size and rate unless --image_size / --audio_rate), else
    mmjax's own (16 px, 8000 Hz by default)."""
    try:
        resize = media.image_resize(image_from)
        if image_from and not image_size:
            image_size = media.processor_size(media.read_processor(media.checkpoint_folder(image_from)))
        if audio_from:
            extractor = media.read_processor(media.checkpoint_folder(audio_from), "feature_extractor")
            rate = int(extractor.get("sampling_rate", 0))
            if not rate:
                raise ValueError(f"{audio_from}: no feature extractor with a sampling_rate")
            if audio_rate and audio_rate != rate:
                raise ValueError(f"--audio_rate={audio_rate} but {audio_from} expects {rate} Hz audio; drop --audio_rate")
            audio_rate = rate
    except (ValueError, KeyError, TypeError) as e:
        raise BuildError(f"--image_from/--audio_from: {e}") from None
    return resize, image_size or 16, audio_rate or 8000


def _describe(name: str, fields: dict) -> str:
    if name == "image":
        resized = f" ({fields['processor']}'s resize)" if "processor" in fields else ""
        return f"image {fields['height']}x{fields['width']}{resized}"
    if name == "audio":
        return f"audio {fields['sample_rate']} Hz, <= {fields['max_samples']} samples"
    return f"text <= {fields['max_bytes']} bytes"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="ex", desc="build", file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmjax.data.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="JSON Lines or CSV file (see mmjax/data/manifest.py)")
    p.add_argument("--out", required=True, help="output directory (becomes config.data.train/eval)")
    p.add_argument("--image_size", type=int, default=0,
                   help="images are stored SIZE x SIZE RGB (0: 16, or --image_from's size)")
    p.add_argument("--audio_rate", type=int, default=0,
                   help="audio is resampled to this rate in Hz (0: 8000, or --audio_from's rate)")
    p.add_argument("--image_from", default="",
                   help="hf:DIR: resize images as this checkpoint's image processor does (for "
                        "config.model.image.init_from=hf:DIR)")
    p.add_argument("--audio_from", default="",
                   help="hf:DIR: resample audio to this checkpoint's feature-extractor rate (Whisper: 16000)")
    p.add_argument("--audio_samples", type=int, default=0,
                   help="cut longer clips to this many samples (0: keep whole clips)")
    p.add_argument("--text_length", type=int, default=TEXT_LENGTH,
                   help="the text length in tokens training uses by default; longer texts are counted "
                        "(they are stored whole and cut in training)")
    p.add_argument("--tokenizer", default="bytes",
                   help="the tokenizer --text_length and spec.json's target_text.max_tokens count in, as "
                        "config.data.tokenizer: 'bytes', a SentencePiece .model file or hf:DIR")
    p.add_argument("--classes", default="",
                   help="class names: 'a,b,c', a file with one per line, or a built data set "
                        "directory (build eval with --classes=TRAIN_DIR); default: from the labels")
    p.add_argument("--modalities", default="", help="e.g. 'image,audio'; default: from the manifest")
    p.add_argument("--optional_modalities", default="",
                   help="e.g. 'audio': rows may lack these (batches then flag them absent)")
    p.add_argument("--skip_bad", action="store_true", help="skip bad rows and list them in a report")
    p.add_argument("--report", default="", help=f"report of skipped rows (default OUT/{REPORT_FILE})")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: all cores)")
    p.add_argument("--num_shards", type=int, default=0,
                   help=f"output shards (0: one per {EXAMPLES_PER_SHARD} examples)")
    p.add_argument("--overwrite", action="store_true", help="replace a data set already in OUT")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        build(args.manifest, args.out, image_size=args.image_size, audio_rate=args.audio_rate,
              audio_samples=args.audio_samples, text_length=args.text_length, tokenizer=args.tokenizer,
              image_from=args.image_from, audio_from=args.audio_from,
              classes=args.classes, modalities=args.modalities,
              optional_modalities=args.optional_modalities,
              skip_bad=args.skip_bad, report=args.report, workers=args.workers,
              num_shards=args.num_shards, overwrite=args.overwrite,
              progress=not args.no_progress)
    except (BuildError, ManifestError) as e:
        print(f"mmjax.data.build: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmjax.data.build: interrupted; no data set was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
