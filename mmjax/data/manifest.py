"""A build manifest (JSON Lines or CSV) -> checked rows, or one problem per bad line.

Fields: `image` (path to a picture), `audio` (path to a WAV file), `text` (a string) and
`label` (an integer class id or a class name). Every row of a data set has the same
modalities: those of `--modalities`, else the CSV header's, else the first JSON object's.
Relative paths are relative to the manifest's folder. This module checks everything
that does not need decoding (structure, types, files exist, labels known); decoding
happens in `build.py`. Problems are (line, text) pairs, so the build can stop at the first
or, with --skip_bad, skip and list them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence

MODALITIES = ("image", "text", "audio")  # the batch contract's order
FIELDS = (*MODALITIES, "label")


class ManifestError(ValueError):
    """A problem with the manifest as a whole (not one row): always stops the build."""


@dataclasses.dataclass
class Row:
    """One usable manifest row: paths made absolute, label resolved to a class id."""

    line: int
    fields: dict  # 'image'/'audio': absolute path, 'text': str, 'label': int


@dataclasses.dataclass
class Manifest:
    path: str
    rows: list[Row]
    bad: list[tuple[int, str]]  # (line, problem), in line order
    modalities: tuple[str, ...]
    class_names: list[str]

    def message(self, line: int, problem: str) -> str:
        return f"{self.path} line {line}: {problem}"


class _Bad(Exception):
    """Internal: this row is unusable for the given reason."""


def _lines(path: str) -> list[tuple[int, str | None]]:
    """(line number, text) for each line; text is None where the bytes are not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ManifestError(f"cannot read manifest {path!r}: {e.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
        data = data[3:]
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":  # the newline that ends the last line starts no new line
        raw.pop()
    out = []
    for number, line in enumerate(raw, start=1):
        try:
            out.append((number, line.decode("utf-8").rstrip("\r")))
        except UnicodeDecodeError:
            out.append((number, None))
    return out


def _records(path: str) -> tuple[list[tuple[int, object]], tuple[str, ...] | None]:
    """(line, raw record or _Bad) per data row, and the CSV header's modalities (or None)."""
    lines = _lines(path)
    if not lines:
        raise ManifestError(f"manifest {path!r} is empty")
    first = next((t for _, t in lines if t and t.strip()), "")
    is_jsonl = path.lower().endswith((".jsonl", ".ndjson", ".json")) or first.lstrip().startswith("{")
    records: list[tuple[int, object]] = []
    if is_jsonl:
        for number, text in lines:
            if text is None:
                records.append((number, _Bad("is not valid UTF-8")))
            elif not text.strip():
                records.append((number, _Bad("is empty (remove blank lines)")))
            else:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    records.append((number, _Bad(f"is not valid JSON ({e.msg} at column {e.colno})")))
                    continue
                if not isinstance(obj, dict):
                    records.append((number, _Bad(f"must be a JSON object, got {type(obj).__name__}")))
                else:
                    records.append((number, obj))
        return records, None
    return _csv_records(path, lines)


def _csv_records(path: str, lines) -> tuple[list[tuple[int, object]], tuple[str, ...]]:
    """CSV with a header row; quoted fields may span lines."""
    header_line, header_text = lines[0]
    if header_text is None or not header_text.strip():
        raise ManifestError(f"{path} line 1: a CSV manifest starts with a header such as "
                            "'image,audio,text,label'")
    header = [h.strip() for h in next(csv.reader([header_text]))]
    for name in header:
        if name not in FIELDS:
            raise ManifestError(f"{path} line 1: unknown column {name!r}; columns are "
                                f"{', '.join(FIELDS)}")
    if len(set(header)) != len(header):
        raise ManifestError(f"{path} line 1: a column is named twice in {header}")
    if "label" not in header:
        raise ManifestError(f"{path} line 1: the header has no 'label' column")
    records: list[tuple[int, object]] = [(n, _Bad("is not valid UTF-8"))
                                         for n, t in lines[1:] if t is None]
    good = [(n, t) for n, t in lines[1:] if t is not None]
    numbers = [n for n, _ in good]
    reader = csv.reader(t + "\n" for _, t in good)  # the newline keeps multi-line cells intact
    consumed = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            records.append((numbers[min(consumed, len(numbers) - 1)], _Bad(f"is not valid CSV: {e}")))
            consumed = reader.line_num
            continue
        start = numbers[consumed]
        consumed = reader.line_num
        if not cells:
            records.append((start, _Bad("is empty (remove blank lines)")))
        elif len(cells) != len(header):
            records.append((start, _Bad(f"has {len(cells)} fields but the header has "
                                        f"{len(header)} ({','.join(header)})")))
        else:
            row = dict(zip(header, cells))
            label = row["label"].strip()
            # CSV has no types: a label of digits is a class id, anything else a name.
            row["label"] = int(label) if label.lstrip("-").isdigit() else label
            for m in ("image", "audio"):
                if m in row and not row[m].strip():
                    del row[m]  # an empty cell is a missing file, reported below
            records.append((start, row))
    records.sort(key=lambda r: r[0])
    return records, tuple(m for m in MODALITIES if m in header)


def _check_fields(obj: dict, modalities: Sequence[str], origin: str, base_dir: str) -> dict:
    """Raw record -> fields with absolute paths; raises _Bad naming the problem."""
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise _Bad(f"unknown field {unknown[0]!r}; fields are {', '.join(FIELDS)}")
    if "label" not in obj or obj["label"] is None or obj["label"] == "":
        raise _Bad("has no 'label'")
    extra = [m for m in MODALITIES if m in obj and m not in modalities]
    if extra:
        raise _Bad(f"has {extra[0]!r}, but the data set's modalities are "
                   f"{', '.join(modalities)} ({origin})")
    fields = {}
    for m in modalities:
        value = obj.get(m)
        if value is None:
            raise _Bad(f"has no {m!r} (the data set's modalities are {', '.join(modalities)}, "
                       f"{origin})")
        if not isinstance(value, str):
            raise _Bad(f"{m!r} must be a string, got {type(value).__name__}")
        if m == "text":
            fields[m] = value
            continue
        if not value.strip():
            raise _Bad(f"has an empty {m!r} path")
        path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))
        if not os.path.isfile(path):
            raise _Bad(f"{m} file {value!r} does not exist (looked for {path})")
        fields[m] = path
    label = obj["label"]
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise _Bad(f"'label' must be an integer class id or a class name, got {label!r}")
    fields["label"] = label
    return fields


def _resolve_labels(rows: list[Row], bad: list, classes: Sequence[str] | None) -> list[str]:
    """Turns every row's label into a class id; rows with unknown labels move to `bad`."""
    keep = []
    if classes is None:
        names = sorted({r.fields["label"] for r in rows if isinstance(r.fields["label"], str)})
        ids = [r.fields["label"] for r in rows if isinstance(r.fields["label"], int)]
        if names and ids:
            example = names[0]
            for r in rows:
                if isinstance(r.fields["label"], int):
                    bad.append((r.line, f"label {r.fields['label']} is a class id but other rows "
                                        f"use class names (such as {example!r}); use one kind, "
                                        "or pass --classes"))
            rows = [r for r in rows if isinstance(r.fields["label"], str)]
        classes = names if names else [str(i) for i in range(max([i for i in ids if i >= 0],
                                                                 default=-1) + 1)]
    index = {name: i for i, name in enumerate(classes)}
    for r in rows:
        label = r.fields["label"]
        if isinstance(label, str) and label in index:
            r.fields["label"] = index[label]
        elif isinstance(label, int) and 0 <= label < len(classes):
            pass
        elif isinstance(label, int):
            bad.append((r.line, f"unknown label {label}: class ids are 0..{len(classes) - 1}"))
            continue
        else:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            bad.append((r.line, f"unknown label {label!r}: classes are {shown}"))
            continue
        keep.append(r)
    rows[:] = keep
    return list(classes)


def parse_classes(value: str) -> list[str] | None:
    """--classes: '' (from the labels), 'a,b,c', a text file (one name a line), or a data
    set directory / spec.json (its class_names, so an eval split matches its train split)."""
    if not value:
        return None
    path = os.path.join(value, "spec.json") if os.path.isdir(value) else value
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".json"):
            try:
                names = json.loads(text)["class_names"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ManifestError(f"--classes={value}: {path} has no 'class_names' list") from None
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise ManifestError(f"--classes={value}: needs distinct class names, got {names}")
    return [str(n) for n in names]


def read_manifest(path: str, *, classes: Sequence[str] | None = None,
                  modalities: Sequence[str] | None = None) -> Manifest:
    """Parses and checks a manifest (see module docstring); decoding is left to the build."""
    path = os.path.abspath(path)
    base_dir = os.path.dirname(path)
    records, header_modalities = _records(path)
    if modalities:
        bad_names = [m for m in modalities if m not in MODALITIES]
        if bad_names:
            raise ManifestError(f"--modalities: {bad_names[0]!r} is not one of {', '.join(MODALITIES)}")
        origin = "from --modalities"
        modalities = tuple(m for m in MODALITIES if m in modalities)
    elif header_modalities is not None:
        origin, modalities = "from the CSV header", header_modalities
    else:
        first = next(((n, r) for n, r in records if isinstance(r, dict)), None)
        if first is None:
            modalities, origin = (), ""
        else:
            modalities = tuple(m for m in MODALITIES if m in first[1])
            origin = f"as on line {first[0]}"
    if not modalities and records:
        raise ManifestError(f"{path}: no row names a modality; rows need at least one of "
                            f"{', '.join(MODALITIES)} besides 'label'")
    rows, bad = [], []
    for number, record in records:
        if isinstance(record, _Bad):
            bad.append((number, str(record)))
            continue
        try:
            rows.append(Row(number, _check_fields(record, modalities, origin, base_dir)))
        except _Bad as e:
            bad.append((number, str(e)))
    class_names = _resolve_labels(rows, bad, classes)
    bad.sort()
    return Manifest(path=path, rows=rows, bad=bad, modalities=tuple(modalities),
                    class_names=class_names)
