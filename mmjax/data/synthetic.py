"""The embedded default task: a 10-class problem that needs image, audio AND text.

Every example hides three latent values:
  A in 0..9  the digit drawn in the image: one of the 5x7 glyphs below, at a random
             position of an image_size x image_size RGB image, in a random foreground and
             background colour (one dark, one light), with pixel noise;
  B in 0..9  the note in the audio: a sine tone at one of 10 pitches evenly spaced on the
             mel scale from 300 to 3000 Hz (>= 2 mel bins apart at n_mels=32, 8 kHz), with
             random onset, duration, amplitude and phase plus a little noise, in a waveform
             of random length between half and all of audio_samples;
  S          which of the two the question asks for: the text is a short English question
             ("what digit is drawn?" / "which note do you hear?", several templates each)
             with random filler words, always shorter than 32 UTF-8 bytes.
The label is A if S asks about the image, else B. Each modality alone, and every pair,
leaves the label ambiguous: the Bayes-optimal accuracy from any two is 0.55 (from A and B:
right when A == B, else a coin flip; from A and S: right when S asks about the image, else
a 1-in-10 guess); all three determine it. Chance is 0.10. Labels are uniform over 10 classes.

The 'redundant' task (config.data.synthetic.task='redundant') is the same world with
every modality naming the label on its own: the image shows digit A = label, the audio
plays note B = label, and the text names the class ("the answer is seven", several
templates with the same filler words). Any single modality determines the label, which
makes it the test bed for missing modalities and modality dropout.

Two variants label the same world for the other task heads:
  'multilabel'  the image shows digit A, the audio plays note B and the text names a class
                C (as in 'redundant'), all three independent; the labels are the set
                {A, B, C} (one to three classes), stored as 'labels'. Every modality adds
                a class, so all three are needed for an exact match.
  'regression'  the tone's pitch is continuous, uniform on the mel scale between the
                lowest and the highest note; the target (float32 [1], 'target') is that
                position in [0, 1]. Image and text are nuisance (a random digit and
                question); there are no class labels.

The 'paired' task is for contrastive learning and retrieval: every example draws an
instance code of CODE_DIGITS digits (0..999; each code once per split while the split has
at most 1000 examples, so every eval example has exactly one true partner in each other
modality). The image draws the digits' glyphs side by side in three fixed slots (each
moved by up to a pixel; colours and noise as above), the audio plays them as three notes,
one per third of the clip (the pitches above), and the text writes them out ("code 7 3 1",
the word's case varying). The label (a class as well) is the first digit. Only the whole
code identifies an example: retrieving its partner needs every digit in both modalities.

The 'describe' task is for text generation (config.loss.task='generate'): the image shows
digit A, the audio plays note B (both as above, independent) and the text asks for a
description ("describe what you see and hear", several templates with the filler words);
the target text names both, "<A> and <B>" in words ("seven and three"). The label (a class
as well) is A. Each modality names one half of the target, so exact matches need both.

`generate` is a pure function of its arguments; `ensure_synthetic` writes a train and an
eval split once into the cache directory and reuses them afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from mmjax.config.schema import SYNTHETIC_TASKS
from mmjax.contract import hz_to_mel, mel_to_hz
from mmjax.data import codec, writer
from mmjax.data.format import FORMAT, SPEC_FILE

VERSION = 1  # bump when the generated data change, so caches are rebuilt
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NUM_CLASSES = len(CLASS_NAMES)
IMAGE, AUDIO = 0, 1  # values of the selector S

# Digit glyphs, 5 wide and 7 high; '#' is ink.
_GLYPH_ART = """
.###. ..#.. .###. ####. ...#. ##### ..##. ##### .###. .###.
#...# .##.. #...# ....# ..##. #.... .#... ....# #...# #...#
#..## #.#.. ....# ....# .#.#. ####. #.... ...#. #...# #...#
#.#.# ..#.. ..##. .###. #..#. ....# ####. ..#.. .###. .####
##..# ..#.. .#... ....# ##### ....# #...# ..#.. #...# ....#
#...# ..#.. #.... ....# ...#. #...# #...# .#... #...# ...#.
.###. ##### ##### ####. ...#. .###. .###. .#... .###. .##..
"""


def _parse_glyphs(art: str) -> np.ndarray:
    """String art -> bool array [10, 7, 5]."""
    rows = [line.split() for line in art.strip().splitlines()]
    return np.array([[[c == "#" for c in row[d]] for row in rows] for d in range(NUM_CLASSES)])


GLYPHS = _parse_glyphs(_GLYPH_ART)

# Question templates; the selector is what they ask about, the filler words are nuisance.
IMAGE_QUESTIONS = ("what digit is drawn?", "which digit is shown?", "read the digit",
                   "what's in the picture?", "name the digit", "what number is drawn?")
AUDIO_QUESTIONS = ("which note do you hear?", "what pitch is played?", "name the tone",
                   "which sound is it?", "what note is playing?", "listen: which pitch?")
# Redundant task: statements that name the class ({} is a class name).
REDUNDANT_STATEMENTS = ("the answer is {}", "it is {}", "{} it is", "that is {}",
                        "label: {}", "class {}")
PREFIXES = ("", "", "ok ", "so ", "hey ", "now ")
SUFFIXES = ("", "", " pls", " now", " :)", " ok")
MAX_TEXT_BYTES = (max(len(q) for q in IMAGE_QUESTIONS + AUDIO_QUESTIONS
                      + tuple(t.format(n) for t in REDUNDANT_STATEMENTS for n in CLASS_NAMES))
                  + max(map(len, PREFIXES)) + max(map(len, SUFFIXES)))
# Paired task: the code's digits, and how its text writes them ({} is the digits, spaced).
CODE_DIGITS = 3
NUM_CODES = NUM_CLASSES ** CODE_DIGITS
PAIRED_STATEMENTS = ("code {}", "Code {}", "CODE {}")  # the digits at the same places in each
PAIRED_TEXT_BYTES = max(len(t) for t in PAIRED_STATEMENTS) - 2 + 2 * CODE_DIGITS - 1
# Describe task: the prompts, and the target naming the digit and then the note.
DESCRIBE_PROMPTS = ("describe what you see and hear", "what is shown and played?", "describe it",
                    "name the digit and the note", "what do you see and hear?", "describe both")
DESCRIBE_TARGET = "{} and {}"
DESCRIBE_TARGET_BYTES = 2 * max(map(len, CLASS_NAMES)) + len(DESCRIBE_TARGET) - 4
DESCRIBE_TEXT_BYTES = max(map(len, DESCRIBE_PROMPTS)) + max(map(len, PREFIXES)) + max(map(len, SUFFIXES))

_PIXEL_NOISE = 8.0  # std of the Gaussian pixel noise, in 0..255 units
_FADE = 32  # samples of linear fade in/out, so tone edges do not smear across mel bins


def pitch_frequencies(audio_rate: int) -> np.ndarray:
    """The 10 tone frequencies (Hz): evenly spaced in mel from 300 to 3000 Hz.

    At sample rates below 8 kHz the top moves down to 0.375 * rate to stay below Nyquist.
    """
    top = min(3000.0, 0.375 * audio_rate)
    return mel_to_hz(np.linspace(hz_to_mel(top / 10.0), hz_to_mel(top), NUM_CLASSES))


def _draw_images(rng: np.random.Generator, digits: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: glyph `digits[i]` at a random place, random colours, noise."""
    n = len(digits)
    scale = max(1, size // 16)  # bigger images get proportionally bigger glyphs
    glyphs = GLYPHS.repeat(scale, axis=1).repeat(scale, axis=2)
    gh, gw = glyphs.shape[1:]
    if gh > size:
        raise ValueError(f"image_size={size} is too small for the {gh}-pixel glyphs; use >= {gh}")
    y = rng.integers(0, size - gh + 1, n)
    x = rng.integers(0, size - gw + 1, n)
    mask = np.zeros((n, size, size), bool)
    rows = y[:, None, None] + np.arange(gh)[None, :, None]
    cols = x[:, None, None] + np.arange(gw)[None, None, :]
    mask[np.arange(n)[:, None, None], rows, cols] = glyphs[digits]
    return _ink(rng, mask)


def _ink(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """uint8 [n, size, size, 3]: the glyph mask [n, size, size] in one colour on another, with
    pixel noise. One colour dark, one light, chosen per channel: >= 75 levels apart in every channel."""
    n = mask.shape[0]
    dark = rng.integers(0, 91, (n, 3))
    light = rng.integers(165, 256, (n, 3))
    light_ink = (rng.random(n) < 0.5)[:, None]
    fg = np.where(light_ink, light, dark)[:, None, None, :]
    bg = np.where(light_ink, dark, light)[:, None, None, :]
    img = np.where(mask[..., None], fg, bg).astype(np.float32)
    img += rng.normal(0.0, _PIXEL_NOISE, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _make_audio(rng: np.random.Generator, freqs: np.ndarray, rate: int, max_samples: int):
    """float32 [n, max_samples] waveforms of tones at `freqs` (Hz), valid up to lengths[i],
    and int lengths [n]."""
    n = len(freqs)
    lengths = rng.integers(max_samples // 2, max_samples + 1, n)
    durations = np.maximum(1, (lengths * rng.uniform(0.3, 0.8, n)).astype(np.int64))
    onsets = (rng.random(n) * (lengths - durations + 1)).astype(np.int64)
    amps = rng.uniform(0.2, 0.8, n)
    phases = rng.uniform(0.0, 2 * np.pi, n)
    noise = rng.uniform(0.005, 0.03, n)
    out = np.empty((n, max_samples), np.float32)
    t = np.arange(max_samples)
    for lo in range(0, n, 1024):  # chunks keep the float64 temporaries small
        sl = slice(lo, min(n, lo + 1024))
        tt = t[None, :] - onsets[sl, None]  # time since onset, in samples
        env = np.clip(np.minimum(tt, durations[sl, None] - tt) / _FADE, 0.0, 1.0)
        phase = 2 * np.pi * freqs[sl, None] * tt / rate + phases[sl, None]
        wave = amps[sl, None] * env * np.sin(phase)
        wave += noise[sl, None] * rng.standard_normal(wave.shape)
        out[sl] = np.clip(wave, -1.0, 1.0)
    return out, lengths


def _make_texts(rng: np.random.Generator, selectors: np.ndarray,
                labels: np.ndarray | None = None, prompts: tuple[str, ...] = ()) -> list[str]:
    """One question per example asking about the image (S=0) or the audio (S=1); with
    `labels` (the redundant task), a statement naming labels[i] instead; with `prompts`
    (the describe task), one of them."""
    n = len(selectors)
    q = rng.integers(0, len(IMAGE_QUESTIONS), n)
    pre = rng.integers(0, len(PREFIXES), n)
    suf = rng.integers(0, len(SUFFIXES), n)
    cap = rng.random(n) < 0.3
    texts = []
    for i in range(n):
        if prompts:
            body = prompts[q[i] % len(prompts)]
        elif labels is not None:
            body = REDUNDANT_STATEMENTS[q[i]].format(CLASS_NAMES[labels[i]])
        else:
            body = (IMAGE_QUESTIONS if selectors[i] == IMAGE else AUDIO_QUESTIONS)[q[i]]
        text = PREFIXES[pre[i]] + body + SUFFIXES[suf[i]]
        texts.append(text[:1].upper() + text[1:] if cap[i] else text)
    return texts


def generate(num_examples: int, seed: int, *, image_size: int = 16, audio_rate: int = 8000,
             audio_samples: int = 2048, task: str = "default") -> tuple[list[dict], np.ndarray]:
    """Generates examples of the task; deterministic in all arguments.

    Returns (examples, latents): examples are stored-example dicts ('image' uint8 [H,W,3],
    'audio' float32 [n] with n in [audio_samples//2, audio_samples], 'text' str, 'label'
    int); latents is int64 [num_examples, 3] of (A, B, S) with S 0=image, 1=audio. For
    task='redundant', A = B = label and S is the class the text names (also the label).
    For 'multilabel' the examples have 'labels' (int32 ids of {A, B, C}) instead of
    'label' and latents are (A, B, C); for 'regression' they have 'target' (float32 [1])
    instead, and latents are (A, -1, S): the pitch is continuous. For 'paired' the latents
    are the code's digits (first = the label). For 'describe' the examples also have
    'target_text' ("<A> and <B>"); latents are (A, B, -1).
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if audio_samples < 2 * _FADE:
        raise ValueError(f"audio_samples={audio_samples} is too short; use >= {2 * _FADE}")
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"config.data.synthetic.task={task!r} is not one of {list(SYNTHETIC_TASKS)}")
    if task == "paired":
        return _generate_paired(num_examples, seed, image_size=image_size, audio_rate=audio_rate,
                                audio_samples=audio_samples)
    if task == "describe":
        return _generate_describe(num_examples, seed, image_size=image_size, audio_rate=audio_rate,
                                  audio_samples=audio_samples)
    if task in ("multilabel", "regression"):
        return _generate_variant(num_examples, seed, image_size=image_size, audio_rate=audio_rate,
                                 audio_samples=audio_samples, task=task)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, NUM_CLASSES, num_examples)
    b = rng.integers(0, NUM_CLASSES, num_examples)
    s = rng.integers(0, 2, num_examples)
    if task == "redundant":
        b = s = a
    labels = np.where(s == IMAGE, a, b) if task == "default" else a
    images = _draw_images(rng, a, image_size)
    audio, lengths = _make_audio(rng, pitch_frequencies(audio_rate)[b], audio_rate, audio_samples)
    texts = _make_texts(rng, s, labels if task == "redundant" else None)
    examples = [
        {"image": images[i], "audio": audio[i, : lengths[i]].copy(), "text": texts[i],
         "label": int(labels[i])}
        for i in range(num_examples)
    ]
    return examples, np.stack([a, b, s], axis=1)


def _generate_variant(num_examples: int, seed: int, *, image_size: int, audio_rate: int,
                      audio_samples: int, task: str) -> tuple[list[dict], np.ndarray]:
    """The 'multilabel' and 'regression' variants (see the module docstring)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, NUM_CLASSES, num_examples)
    c = rng.integers(0, NUM_CLASSES, num_examples)  # multilabel: the class the text names
    if task == "multilabel":
        b = rng.integers(0, NUM_CLASSES, num_examples)
        freqs = pitch_frequencies(audio_rate)[b]
    else:
        position = rng.random(num_examples)  # the pitch, as a position on the notes' mel range
        lo, hi = hz_to_mel(pitch_frequencies(audio_rate)[[0, -1]])
        freqs = mel_to_hz(lo + position * (hi - lo))
        b, c = np.full(num_examples, -1), c % 2  # c: which question the (nuisance) text asks
    images = _draw_images(rng, a, image_size)
    audio, lengths = _make_audio(rng, freqs, audio_rate, audio_samples)
    texts = _make_texts(rng, c % 2, c if task == "multilabel" else None)
    examples = []
    for i in range(num_examples):
        example = {"image": images[i], "audio": audio[i, : lengths[i]].copy(), "text": texts[i]}
        if task == "multilabel":
            example["labels"] = np.unique([a[i], b[i], c[i]]).astype(np.int32)
        else:
            example["target"] = np.asarray([position[i]], np.float32)
        examples.append(example)
    return examples, np.stack([a, b, c], axis=1)


def _generate_describe(num_examples: int, seed: int, *, image_size: int, audio_rate: int,
                       audio_samples: int) -> tuple[list[dict], np.ndarray]:
    """The 'describe' task (see the module docstring)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, NUM_CLASSES, num_examples)
    b = rng.integers(0, NUM_CLASSES, num_examples)
    images = _draw_images(rng, a, image_size)
    audio, lengths = _make_audio(rng, pitch_frequencies(audio_rate)[b], audio_rate, audio_samples)
    texts = _make_texts(rng, np.zeros(num_examples, np.int64), prompts=DESCRIBE_PROMPTS)
    examples = [{"image": images[i], "audio": audio[i, : lengths[i]].copy(), "text": texts[i],
                 "label": int(a[i]), "target_text": DESCRIBE_TARGET.format(CLASS_NAMES[a[i]], CLASS_NAMES[b[i]])}
                for i in range(num_examples)]
    return examples, np.stack([a, b, np.full(num_examples, -1)], axis=1)


def _generate_paired(num_examples: int, seed: int, *, image_size: int, audio_rate: int,
                     audio_samples: int) -> tuple[list[dict], np.ndarray]:
    """The 'paired' task (see the module docstring)."""
    rng = np.random.default_rng(seed)
    # Random permutations of all codes, one after another: unique while num_examples <= NUM_CODES.
    codes = np.concatenate([rng.permutation(NUM_CODES) for _ in range(-(-num_examples // NUM_CODES))]
                           + [np.zeros(0, np.int64)])[:num_examples]
    digits = np.stack([codes // NUM_CLASSES ** (CODE_DIGITS - 1 - i) % NUM_CLASSES
                       for i in range(CODE_DIGITS)], axis=1)
    images = _draw_code_images(rng, digits, image_size)
    audio = _make_note_sequences(rng, digits, audio_rate, audio_samples)
    texts = _make_code_texts(rng, digits)
    examples = [{"image": images[i], "audio": audio[i], "text": texts[i], "label": int(digits[i, 0])}
                for i in range(num_examples)]
    return examples, digits


def _draw_code_images(rng: np.random.Generator, digits: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: the digits' glyphs in CODE_DIGITS fixed slots, each moved by
    up to a pixel, with _draw_images' colours and noise."""
    n, k = digits.shape
    scale = max(1, size // (6 * k + 2))  # the glyphs of the k slots and their gaps fill the width
    glyphs = GLYPHS.repeat(scale, axis=1).repeat(scale, axis=2)
    gh, gw = glyphs.shape[1:]
    slot = (size - 2) // k  # 1-pixel margins for the jitter
    if slot < gw + 1 or gh + 2 > size:
        raise ValueError(f"image_size={size} is too small for {k} glyphs of {gw} pixels; use >= {k * 6 + 2}")
    mask = np.zeros((n, size, size), bool)
    top = (size - gh) // 2
    for j in range(k):
        y = top + rng.integers(-1, 2, n)
        x = 1 + j * slot + (slot - gw) // 2 + rng.integers(-1, 2, n)
        rows = y[:, None, None] + np.arange(gh)[None, :, None]
        cols = x[:, None, None] + np.arange(gw)[None, None, :]
        mask[np.arange(n)[:, None, None], rows, cols] |= glyphs[digits[:, j]]
    return _ink(rng, mask)


def _make_note_sequences(rng: np.random.Generator, digits: np.ndarray, rate: int, samples: int) -> np.ndarray:
    """float32 [n, samples]: the digits' notes one after another, each in its third of the
    clip (random onset, duration, amplitude and phase within it, a little noise)."""
    n, k = digits.shape
    seg = samples // k
    freqs = pitch_frequencies(rate)
    out = np.zeros((n, samples), np.float32)
    for j in range(k):
        part, _ = _make_audio(rng, freqs[digits[:, j]], rate, seg)
        out[:, j * seg:(j + 1) * seg] = part  # _make_audio's clips are silent past their length
    return np.clip(out + rng.uniform(0.002, 0.01, (n, 1)) * rng.standard_normal(out.shape), -1, 1).astype(np.float32)


def _make_code_texts(rng: np.random.Generator, digits: np.ndarray) -> list[str]:
    """The code written out: 'code 7 3 1' (one of PAIRED_STATEMENTS, digits spaced)."""
    q = rng.integers(0, len(PAIRED_STATEMENTS), len(digits))
    return [PAIRED_STATEMENTS[q[i]].format(" ".join(str(d) for d in digits[i])) for i in range(len(digits))]


def make_spec(*, image_size: int, audio_rate: int, audio_samples: int,
              num_examples: int = 0, task: str = "default") -> dict:
    """The spec.json of a synthetic split (contract format)."""
    spec = {
        "format": FORMAT,
        "num_examples": num_examples,
        "num_classes": NUM_CLASSES,
        "class_names": list(CLASS_NAMES),
        "modalities": {
            "image": {"height": image_size, "width": image_size, "channels": 3},
            "audio": {"sample_rate": audio_rate, "max_samples": audio_samples},
            "text": {"max_bytes": MAX_TEXT_BYTES},
        },
    }
    if task == "multilabel":
        spec["tasks"] = ["multilabel"]
    elif task == "regression":  # no class labels: the target is the pitch
        spec.update(tasks=["regression"], target_size=1, num_classes=0, class_names=[])
    elif task == "paired":  # the label is the code's first digit; the texts spell three digits
        spec["modalities"]["text"]["max_bytes"] = PAIRED_TEXT_BYTES
    elif task == "describe":  # byte tokens of the longest target, BOS and EOS included
        spec["tasks"] = ["classification", "generate"]
        spec["modalities"]["text"]["max_bytes"] = DESCRIBE_TEXT_BYTES
        spec["target_text"] = {"max_tokens": DESCRIBE_TARGET_BYTES + 2}
    return spec


def default_cache_dir(cache_dir: str = "") -> str:
    """cache_dir, or $MMJAX_CACHE, or ~/.cache/mmjax."""
    return cache_dir or os.environ.get("MMJAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "mmjax")


def _params(config_data) -> dict:
    """Everything the generated files depend on (hashed into the cache folder name)."""
    syn = config_data.synthetic
    params = {
        "version": VERSION,
        "image_size": int(config_data.image_size),
        "audio_rate": int(config_data.audio_rate),
        "audio_samples": int(config_data.audio_samples),
        "num_train": int(syn.num_train),
        "num_eval": int(syn.num_eval),
        "seed": int(syn.seed),
    }
    task = str(syn.task)
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"config.data.synthetic.task={task!r} is not one of {list(SYNTHETIC_TASKS)}")
    if task != "default":  # only then, so existing caches of the default task stay valid
        params["task"] = task
    return params


def _split_seed(base: int, split: str) -> int:
    """Unrelated generator seeds for the splits, so train and eval never share examples."""
    digest = hashlib.sha256(f"mmjax-synthetic:{base}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _num_shards(num_examples: int) -> int:
    return int(np.clip(-(-num_examples // 5000), 1, 8))


def _is_complete(directory: str, splits) -> bool:
    return all(os.path.isfile(os.path.join(directory, s, SPEC_FILE)) for s in splits)


def ensure_synthetic(cache_dir: str, config_data) -> dict[str, str]:
    """Returns {'train': dir, 'eval': dir} of the synthetic splits, generating them once.

    The folder is cache_dir/synthetic-<hash of the generation parameters>. It is built in a
    temporary folder next to it and renamed into place, so a crash leaves no half-written
    data set, and if another process finishes first its copy is kept.
    """
    params = _params(config_data)
    for key in ("num_train", "num_eval"):  # config.validate checks these too; direct callers may not
        if params[key] < 1:
            raise ValueError(f"config.data.synthetic.{key}={params[key]} makes an empty data set; set it to >= 1")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = default_cache_dir(cache_dir)
    target = os.path.join(root, f"synthetic-{digest}")
    splits = {"train": params["num_train"], "eval": params["num_eval"]}
    paths = {split: os.path.join(target, split) for split in splits}
    if _is_complete(target, splits):
        return paths
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".synthetic-{digest}-tmp-", dir=root)
    except OSError as e:
        raise ValueError(f"config.data.cache_dir={root!r} (where the synthetic data are written): cannot write "
                         f"there ({e.strerror or e}); set --config.data.cache_dir (or $MMJAX_CACHE) to a writable "
                         "folder") from None
    try:
        for split, count in splits.items():
            examples, _ = generate(count, _split_seed(params["seed"], split),
                                   image_size=params["image_size"],
                                   audio_rate=params["audio_rate"],
                                   audio_samples=params["audio_samples"],
                                   task=params.get("task", "default"))
            spec = make_spec(image_size=params["image_size"], audio_rate=params["audio_rate"],
                             audio_samples=params["audio_samples"], task=params.get("task", "default"))
            records = [codec.encode(e) for e in examples]
            del examples
            writer.write_dataset(os.path.join(tmp, split), records, spec, _num_shards(count))
        with open(os.path.join(tmp, "params.json"), "w") as f:
            json.dump(params, f, indent=2)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target, splits):  # not a lost race: something else is there
                raise ValueError(
                    f"{target} exists but is incomplete; delete it and run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
