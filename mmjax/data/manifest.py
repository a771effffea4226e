"""A build manifest (JSON Lines or CSV) -> checked rows, or one problem per bad line.

Fields: `image` (path to a picture), `audio` (path to a WAV file), `text` (a string), and
targets: `label` (an integer class id or a class name), `labels` (multi-label: a list of
class ids or names, possibly empty; in CSV separated by ';') and `target` (regression: a
number or a list of numbers, the same count in every row; in CSV separated by ';') and
`target_text` (generation: the text a decoder should write, a string; `text` is then the
prompt or question, if the data set has one).
Every row of a data set has the same modalities: those of `--modalities`, else the CSV
header's, else the first JSON object's; and the same targets: the CSV header's, else
those of the first JSON object that has any. A modality named in `--optional_modalities`
may be absent from a row (a missing key or null; in CSV an empty image/audio cell); every
row needs at least one modality. Relative paths are relative to the manifest's folder.
This module checks everything that does not need decoding (structure, types, files
exist, labels known); decoding happens in `build.py`. Problems are (line, text) pairs, so the build can stop at the first
or, with --skip_bad, skip and list them. It imports only the standard library, the contract
and format.py, so the predictor reads its manifests with `raw_records` too.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Sequence

from mmjax.contract import MODALITIES
from mmjax.data.format import SPEC_FILE

TARGETS = ("label", "labels", "target", "target_text")
FIELDS = (*MODALITIES, *TARGETS)
TASK_OF_TARGET = {"label": "classification", "labels": "multilabel", "target": "regression",
                  "target_text": "generate"}


class ManifestError(ValueError):
    """A problem with the manifest as a whole (not one row): always stops the build."""


@dataclasses.dataclass
class Row:
    """One usable manifest row: paths made absolute, label resolved to a class id."""

    line: int
    fields: dict  # 'image'/'audio': absolute path, 'text': str, 'label': int,
    # 'labels': sorted distinct ints, 'target': list of floats, 'target_text': str
    # (absent modalities: no key)


@dataclasses.dataclass
class Manifest:
    path: str
    rows: list[Row]
    bad: list[tuple[int, str]]  # (line, problem), in line order
    modalities: tuple[str, ...]
    class_names: list[str]
    targets: tuple[str, ...] = ("label",)  # which of TARGETS every row has
    optional: tuple[str, ...] = ()  # modalities a row may lack
    target_size: int = 0  # values per 'target'

    @property
    def tasks(self) -> list[str]:
        """The spec's 'tasks': what the targets let a model be trained for."""
        return [TASK_OF_TARGET[t] for t in self.targets]

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


def raw_records(path: str, *, need_target: bool = True) -> list[tuple[int, dict | str]]:
    """(line, raw row or the problem with it) per data row, before any field is checked:
    what `read_manifest` starts from, and what the predictor reads (its rows need no
    target: `need_target=False`). ManifestError if the file as a whole is unusable."""
    records, _, _ = _records(path, need_target)
    return [(n, str(r) if isinstance(r, _Bad) else r) for n, r in records]


def resolve_path(base_dir: str, value: str) -> str:
    """A manifest's file path: '~' expanded, relative to the manifest's folder."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def _records(path: str, need_target: bool = True) -> tuple[list[tuple[int, object]], tuple[str, ...] | None,
                                                           tuple[str, ...] | None]:
    """(line, raw record or _Bad) per data row, and the CSV header's modalities and targets
    (None for JSON Lines)."""
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
        return records, None, None
    return _csv_records(path, lines, need_target)


def _csv_records(path: str, lines, need_target: bool) -> tuple[list[tuple[int, object]], tuple[str, ...], tuple[str, ...]]:
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
    if need_target and not set(header) & set(TARGETS):
        raise ManifestError(f"{path} line 1: the header has no 'label' column (or 'labels' for "
                            "multi-label, 'target' for regression, 'target_text' for generation)")
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
            if "label" in row:
                row["label"] = _csv_label(row["label"])
            if "labels" in row:
                row["labels"] = [_csv_label(v) for v in row["labels"].split(";") if v.strip()]
            if "target" in row:
                row["target"] = [_csv_number(v) for v in row["target"].split(";")] if row["target"].strip() else None
            for m in ("image", "audio"):
                if m in row and not row[m].strip():
                    del row[m]  # an empty cell is a missing file, reported below
            records.append((start, row))
    records.sort(key=lambda r: r[0])
    return records, tuple(m for m in MODALITIES if m in header), tuple(t for t in TARGETS if t in header)


def _csv_label(cell: str):
    """CSV has no types: a label of digits is a class id, anything else a name."""
    cell = cell.strip()
    return int(cell) if cell.lstrip("-").isdigit() else cell


def _csv_number(cell: str):
    try:
        return float(cell)
    except ValueError:
        return cell.strip()  # reported by _check_fields


def _check_targets(obj: dict, targets: Sequence[str], target_origin: str) -> dict:
    """The row's target fields, checked for type; raises _Bad naming the problem."""
    for t in targets:
        if obj.get(t) is None or obj[t] == "":
            raise _Bad(f"has no {t!r}" + (f" (the data set's targets are {', '.join(targets)}, "
                                          f"{target_origin})" if targets != ("label",) else ""))
    extra = [t for t in TARGETS if obj.get(t) is not None and t not in targets]
    if extra:
        raise _Bad(f"has {extra[0]!r}, but the data set's targets are {', '.join(targets)} ({target_origin})")
    fields = {}
    if "label" in targets:
        label = obj["label"]
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise _Bad(f"'label' must be an integer class id or a class name, got {label!r}")
        fields["label"] = label
    if "labels" in targets:
        labels = obj["labels"]
        if not isinstance(labels, list) or any(isinstance(v, bool) or not isinstance(v, (int, str))
                                               for v in labels):
            raise _Bad(f"'labels' must be a list of class ids or class names, got {labels!r}")
        fields["labels"] = labels
    if "target" in targets:
        target = obj["target"]
        values = target if isinstance(target, list) else [target]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                             for v in values):
            raise _Bad(f"'target' must be a finite number or a non-empty list of them, got {target!r}")
        fields["target"] = [float(v) for v in values]
    if "target_text" in targets:
        text = obj["target_text"]
        if not isinstance(text, str):
            raise _Bad(f"'target_text' must be a string, got {type(text).__name__} {text!r}")
        fields["target_text"] = text
    return fields


def _check_fields(obj: dict, modalities: Sequence[str], origin: str, base_dir: str,
                  targets: Sequence[str] = ("label",), target_origin: str = "",
                  optional: Sequence[str] = ()) -> dict:
    """Raw record -> fields with absolute paths; raises _Bad naming the problem."""
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise _Bad(f"unknown field {unknown[0]!r}; fields are {', '.join(FIELDS)}")
    target_fields = _check_targets(obj, targets, target_origin)
    extra = [m for m in MODALITIES if obj.get(m) is not None and m not in modalities]
    if extra:
        raise _Bad(f"has {extra[0]!r}, but the data set's modalities are "
                   f"{', '.join(modalities)} ({origin})")
    fields = {}
    for m in modalities:
        value = obj.get(m)
        if value is None and m in optional:
            continue  # absent in this example: stored without it, flagged in the batch
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
        path = resolve_path(base_dir, value)
        if not os.path.isfile(path):
            raise _Bad(f"{m} file {value!r} does not exist (looked for {path})")
        fields[m] = path
    if not fields:
        raise _Bad(f"has none of the modalities {', '.join(modalities)}; a row needs at least one")
    return {**fields, **target_fields}


def _resolve_labels(rows: list[Row], bad: list, classes: Sequence[str] | None,
                    targets: Sequence[str] = ("label",)) -> list[str]:
    """Turns every row's 'label' and 'labels' into class ids; rows with unknown labels move
    to `bad`, and so do rows that use class ids where others use names."""
    fields = [t for t in ("label", "labels") if t in targets]
    if not fields:
        return list(classes or [])

    def values(r: Row) -> list:
        return ([r.fields["label"]] if "label" in fields else []) + list(r.fields.get("labels", []))

    candidates = list(rows)
    if classes is None:
        names = sorted({v for r in rows for v in values(r) if isinstance(v, str)})
        ids = [v for r in rows for v in values(r) if isinstance(v, int)]
        if names and ids:
            example, candidates = names[0], []
            for r in rows:
                first_id = next((v for v in values(r) if isinstance(v, int)), None)
                if first_id is None:
                    candidates.append(r)
                else:
                    bad.append((r.line, f"label {first_id} is a class id but other rows use class "
                                        f"names (such as {example!r}); use one kind, or pass --classes"))
        classes = names if names else [str(i) for i in range(max([i for i in ids if i >= 0],
                                                                 default=-1) + 1)]
    index = {name: i for i, name in enumerate(classes)}

    def resolve(label) -> int:
        if isinstance(label, str) and label in index:
            return index[label]
        if isinstance(label, int) and 0 <= label < len(classes):
            return label
        if isinstance(label, int):
            raise _Bad(f"unknown label {label}: class ids are 0..{len(classes) - 1}")
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise _Bad(f"unknown label {label!r}: classes are {shown}")

    keep = []
    for r in candidates:
        try:
            if "label" in fields:
                r.fields["label"] = resolve(r.fields["label"])
            if "labels" in fields:
                r.fields["labels"] = sorted({resolve(v) for v in r.fields["labels"]})
        except _Bad as e:
            bad.append((r.line, str(e)))
            continue
        keep.append(r)
    rows[:] = keep  # in place: the caller's list
    return list(classes)


def _check_target_sizes(rows: list[Row], bad: list) -> int:
    """Every row's 'target' must have as many values as the first row's; returns that count."""
    if not rows:
        return 0
    size, first = len(rows[0].fields["target"]), rows[0].line
    keep = []
    for r in rows:
        if len(r.fields["target"]) != size:
            bad.append((r.line, f"'target' has {len(r.fields['target'])} values but line {first}'s "
                                f"has {size}; every row needs the same number"))
        else:
            keep.append(r)
    rows[:] = keep
    return size


def parse_classes(value: str) -> list[str] | None:
    """--classes: '' (from the labels), 'a,b,c', a text file (one name a line), or a data
    set directory / spec.json (its class_names, so an eval split matches its train split)."""
    if not value:
        return None
    path = os.path.join(value, SPEC_FILE) if os.path.isdir(value) else value
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
    elif "/" in value or value.endswith((".txt", ".json")):  # meant as a file: not one class name
        raise ManifestError(f"--classes={value}: no such file or data set directory; give a names file, "
                            "a data set directory or comma-separated names")
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise ManifestError(f"--classes={value}: needs distinct class names, got {names}")
    return [str(n) for n in names]


def read_manifest(path: str, *, classes: Sequence[str] | None = None,
                  modalities: Sequence[str] | None = None,
                  optional: Sequence[str] | None = None) -> Manifest:
    """Parses and checks a manifest (see module docstring); decoding is left to the build.

    `optional` (--optional_modalities) names modalities a row may lack; they are then
    modalities of the data set even where the first row lacks them.
    """
    path = os.path.abspath(path)
    base_dir = os.path.dirname(path)
    records, header_modalities, header_targets = _records(path)
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
    unknown_optional = [m for m in (optional or ()) if m not in MODALITIES]
    if unknown_optional:
        raise ManifestError(f"--optional_modalities: {unknown_optional[0]!r} is not one of "
                            f"{', '.join(MODALITIES)}")
    optional = tuple(m for m in MODALITIES if m in (optional or ()))
    if optional:
        if origin == "from --modalities" and not set(optional) <= set(modalities):
            raise ManifestError(f"--optional_modalities={','.join(optional)} names a modality "
                                f"not in --modalities={','.join(modalities)}")
        modalities = tuple(m for m in MODALITIES if m in modalities or m in optional)
    if not modalities and records:
        raise ManifestError(f"{path}: no row names a modality; rows need at least one of "
                            f"{', '.join(MODALITIES)} besides 'label'")
    targets, target_origin = _targets(records, header_targets)
    rows, bad = [], []
    for number, record in records:
        if isinstance(record, _Bad):
            bad.append((number, str(record)))
            continue
        try:
            rows.append(Row(number, _check_fields(record, modalities, origin, base_dir, targets,
                                                  target_origin, optional)))
        except _Bad as e:
            bad.append((number, str(e)))
    class_names = _resolve_labels(rows, bad, classes, targets)
    target_size = _check_target_sizes(rows, bad) if "target" in targets else 0
    if rows and ("label" in targets or "labels" in targets) and not class_names:
        raise ManifestError(f"{path}: no row names a class; pass the class names with --classes")
    bad.sort()
    return Manifest(path=path, rows=rows, bad=bad, modalities=tuple(modalities),
                    class_names=class_names, targets=targets, optional=optional,
                    target_size=target_size)


def _targets(records, header_targets: tuple[str, ...] | None) -> tuple[tuple[str, ...], str]:
    """The data set's targets and where they came from: the CSV header's, else those of the
    first JSON object with any, else ('label',) (every row will then say it lacks one)."""
    if header_targets is not None:
        return header_targets, "from the CSV header"
    for number, record in records:
        if isinstance(record, dict):
            found = tuple(t for t in TARGETS if record.get(t) is not None)
            if found:
                return found, f"as on line {number}"
    return ("label",), ""
