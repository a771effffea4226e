"""Real-data helpers: MNIST digit images paired with FSDD spoken digits, as build manifests.

The data live in ../shared/data beside the checkout (see its README), or in
$MMJAX_SHARED_DATA, and are never copied into the repository; `SHARED` is None when they
are absent, and tests skip. Also a command that writes the data sets of the measured runs
in BUILD.md:

    python tests/data/digits.py --out=/tmp/digits [--split=speaker --eval_speakers=theo]
    python tests/data/digits.py --out=/tmp/digits_ix --split=index
    python tests/data/digits.py --out=/tmp/digits_gen --target_text [--data=/work/shared/data]

writes OUT/{train,eval}.jsonl (+ the MNIST PNGs they point to); each FSDD recording of
digit d is paired with its own MNIST image of d (train images from the first half of
MNIST's test split, eval images from the second). --split=speaker holds out whole
speakers; --split=index holds out recordings 0-4 of every speaker and digit (FSDD's own
test split), so eval has the training speakers' voices but never the same recording.
--target_text writes audio-only rows instead, each with the spoken word as target_text
("seven") beside its label, for loss.task 'generate' and the classifier it is compared with.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib

import numpy as np

_DATA = pathlib.Path(os.environ.get("MMJAX_SHARED_DATA") or
                     pathlib.Path(__file__).resolve().parents[3] / "shared" / "data")


def _found(folder: pathlib.Path) -> pathlib.Path | None:
    return folder if (folder / "fsdd" / "recordings").is_dir() and (folder / "mnist").is_dir() else None


SHARED = _found(_DATA)
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def mnist(count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, 28, 28] images, int labels [n]) of the MNIST test split, from the IDX files."""
    with gzip.open(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images[:count], labels[:count]


def recordings(speakers=SPEAKERS, max_index: int = 50) -> list[tuple[pathlib.Path, int, str, int]]:
    """[(path, digit, speaker, index)] of FSDD recordings, sorted by speaker, digit, index."""
    out = []
    for path in sorted((SHARED / "fsdd" / "recordings").glob("*.wav")):
        digit, speaker, index = path.stem.split("_")
        if speaker in speakers and int(index) < max_index:
            out.append((path, int(digit), speaker, int(index)))
    return sorted(out, key=lambda r: (r[2], r[1], r[3]))


def write_pairs(out: pathlib.Path, name: str, wavs, images: np.ndarray, labels: np.ndarray,
                *, image_format: str = "png") -> pathlib.Path:
    """Writes one manifest `out/name.jsonl` pairing each WAV with an unused image of its digit.

    Images go to out/name/NNNNN.png (relative paths in the manifest); WAVs stay where they
    are (absolute paths).
    """
    from PIL import Image

    (out / name).mkdir(parents=True, exist_ok=True)
    pools = {d: list(np.flatnonzero(labels == d)) for d in range(10)}
    rows = []
    for k, (wav, digit, _, _) in enumerate(wavs):
        if not pools[digit]:
            raise ValueError(f"not enough MNIST images of digit {digit} for {name}")
        image = images[pools[digit].pop(0)]
        rel = f"{name}/{k:05d}.{image_format}"
        Image.fromarray(image).save(out / rel)
        rows.append({"image": rel, "audio": str(wav), "label": int(digit)})
    manifest = out / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def write_words(out: pathlib.Path, name: str, wavs) -> pathlib.Path:
    """Writes `out/name.jsonl`: one audio-only row per WAV, its spoken word as target_text
    and the word as its label too (absolute WAV paths)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"audio": str(wav), "label": WORDS[digit], "target_text": WORDS[digit]} for wav, digit, _, _ in wavs]
    manifest = out / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def main() -> None:
    global SHARED
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="speaker", choices=("speaker", "index"))
    parser.add_argument("--eval_speakers", default="theo")
    parser.add_argument("--target_text", action="store_true",
                        help="audio-only rows with the spoken word as target_text (and label)")
    parser.add_argument("--data", default="", help=f"the shared data folder (default $MMJAX_SHARED_DATA or {_DATA})")
    args = parser.parse_args()
    SHARED = _found(pathlib.Path(args.data)) if args.data else SHARED
    if SHARED is None:
        raise SystemExit(f"no real data (fsdd/recordings and mnist) at {args.data or _DATA}")
    out = pathlib.Path(args.out)
    eval_speakers = tuple(args.eval_speakers.split(","))
    held_out = (lambda r: r[2] in eval_speakers) if args.split == "speaker" else (lambda r: r[3] < 5)
    train = [r for r in recordings() if not held_out(r)]
    held = [r for r in recordings() if held_out(r)]
    if args.target_text:
        for name, wavs in (("train", train), ("eval", held)):
            print(f"{write_words(out, name, wavs)}: {len(wavs)} rows")
        return
    images, labels = mnist()
    half = len(images) // 2
    for name, wavs, lo, hi in (("train", train, 0, half), ("eval", held, half, len(images))):
        path = write_pairs(out, name, wavs, images[lo:hi], labels[lo:hi])
        print(f"{path}: {len(wavs)} rows")


if __name__ == "__main__":
    main()
