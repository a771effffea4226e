"""python -m mmjax.embed: a pretrained tower's last hidden states for raw files.

    python -m mmjax.embed --model=hf:/models/whisper-tiny --audio=clip.wav --out=h.npy
    python -m mmjax.embed --model=hf:/models/bert-base --text="a photo of a cat" --out=h.npy --pooled
    python -m mmjax.embed --model=bv:siglip.npz --image=cat.png --out=h.npy
    python -m mmjax.embed --model=hf:DIR --modality=image --manifest=files.txt --out=DIR/
    python -m mmjax.embed --model=exports/base --text="a photo of a cat" --out=h.npy

Writes float32 [tokens, width] (the same tensor as transformers' last_hidden_state; for
text only the real tokens, not the padding), or with --pooled the pooled vector [width]
(the tower's pooler_output; Whisper has none: the mean over the tokens of real audio).
The inputs go through the checkpoint's own preprocessing (mmjax/pretrained/preprocess.py).
An mmjax export folder (python -m mmjax.export) gives its run's encoder for that modality,
with the export's preprocessing (the predictor's, mmjax/predict.py); --pooled is the
tower's pooling where its config has one, else the mean over its real tokens.
A manifest has one input per line (a file path, or for --modality=text a string) and
--out is then a folder that receives 000000.npy, 000001.npy, ... in order.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from mmjax import media, predict
from mmjax.pretrained import hf, preprocess, towers


def model_input(tower: towers.Tower, value: str) -> dict:
    """One raw input (file path or string) -> the encoder's batch of one."""
    import jax.numpy as jnp

    if tower.source == "export":  # the predictor's preprocessing, as the export's predictions use it
        preprocessor = predict.Preprocessor.from_export(tower.values["export"]["preprocess"], tower.path)
        row = preprocessor.row(**{tower.modality: value})
        return {key: jnp.asarray(np.asarray(field)[None]) for key, field in row.items()}
    data = tower.values["data"]
    if tower.modality == "image":
        if tower.source == "hf":
            processor = hf.Checkpoint(tower.path).image_processor()
        else:  # big_vision: resized to the model's size, pixels in [-1, 1] in the model
            size = int(data["image_size"])
            processor = {"size": {"height": size, "width": size}, "resample": 2}
        processor = processor or {"size": {"height": data["image_size"], "width": data["image_size"]}}
        return {"image": jnp.asarray(preprocess.load_image(value, processor)[None])}
    if tower.modality == "text":
        if tower.source != "hf":
            raise ValueError(f"{tower.path}: a big_vision checkpoint holds no tokenizer; embed its text tower "
                             "from its transformers folder instead")
        tokenizer = preprocess.Tokenizer(tower.path)
        length = tokenizer.max_length if 0 < tokenizer.max_length <= data["text_length"] else data["text_length"]
        return {"text": jnp.asarray(tokenizer.encode([value], length))}
    wave = media.load_wav(value, int(data["audio_rate"]))
    return {"audio": jnp.asarray(wave[None]), "audio_length": jnp.asarray([len(wave)], jnp.int32)}


def embed(tower: towers.Tower, value: str, pooled: bool) -> np.ndarray:
    tokens, mask, pooled_out = tower(model_input(tower, value))
    if pooled:
        if pooled_out is None and tower.source == "export":
            return tokens[0][mask[0]].mean(axis=0)
        if pooled_out is None:
            raise ValueError(f"{tower.path}: this {tower.modality} tower has no pooled output")
        return pooled_out[0]
    if tower.modality == "text":
        return tokens[0][mask[0]]
    return tokens[0]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmjax.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="hf:DIR (transformers folder or hub name), bv:FILE.npz or an mmjax export folder")
    p.add_argument("--out", required=True, help="the .npy file (a folder with --manifest)")
    inputs = {"image": "an image file", "text": "a text string", "audio": "a WAV file",
              "manifest": "one input per line (needs --modality and an --out folder)"}
    for name, text in inputs.items():
        p.add_argument(f"--{name}", help=text)
    p.add_argument("--modality", choices=("image", "text", "audio"), help="the tower, for --manifest")
    p.add_argument("--pooled", action="store_true", help="write the pooled vector instead of the tokens")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        given = [(m, getattr(args, m)) for m in ("image", "text", "audio") if getattr(args, m) is not None]
        if args.manifest:
            if given or not args.modality:
                raise ValueError("--manifest needs --modality and no --image/--text/--audio")
            modality = args.modality
            with open(args.manifest) as f:
                inputs = [line.rstrip("\n") for line in f if line.strip()]
            base = os.path.dirname(os.path.abspath(args.manifest))
            if modality != "text":
                inputs = [v if os.path.isabs(v) else os.path.join(base, v) for v in inputs]
        elif len(given) == 1:
            modality, inputs = given[0][0], [given[0][1]]
        else:
            raise ValueError("give exactly one of --image, --text, --audio (or --manifest with --modality)")
        tower = towers.Tower.load(args.model, modality)
        if args.manifest:
            os.makedirs(args.out, exist_ok=True)
            for i, value in enumerate(inputs):
                np.save(os.path.join(args.out, f"{i:06d}.npy"), embed(tower, value, args.pooled))
        else:
            np.save(args.out, embed(tower, inputs[0], args.pooled))
    except (ValueError, OSError) as e:
        print(f"mmjax.embed: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
