"""A checkpoint's own preprocessing of raw files, as its processor files define it: images
(resize, centre crop; mean/std normalisation happens in the model, see ViTEncoder's
pixel_mean/pixel_std), text (its tokenizer.json through the `tokenizers` package, or its
SentencePiece model) and audio (read as float waveforms; Whisper's log-mel front end runs
in the model, mmjax/models/whisper.py).

    image = load_image('cat.png', Checkpoint(folder).image_processor())   # uint8 [H, W, 3]
    ids = Tokenizer(folder).encode(['a photo of a cat'], length=16)      # int32 [B, 16]
"""
from __future__ import annotations

import json
import os
import re
import string

import numpy as np
from PIL import Image

from mmjax import media

RESAMPLE = {0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
            3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING}


def resize_shape(height: int, width: int, size: dict) -> tuple[int, int]:
    """(height, width) an image processor's `size` asks for: explicit height/width, or the
    shortest edge set to size['shortest_edge'] keeping the aspect ratio (the long edge rounded down)."""
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        short, long = sorted((height, width))
        new_short, new_long = int(size["shortest_edge"]), int(int(size["shortest_edge"]) * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    raise ValueError(f"image processor size {size} is not supported (height/width or shortest_edge)")


def load_image(path_or_image, processor: dict) -> np.ndarray:
    """An image file (or PIL image) -> uint8 [H, W, 3] as the processor resizes and crops it."""
    image = path_or_image if isinstance(path_or_image, Image.Image) else media.open_image(path_or_image)
    image = image.convert("RGB")
    if processor.get("do_resize", True) and processor.get("size"):
        height, width = resize_shape(image.height, image.width, processor["size"])
        image = image.resize((width, height), RESAMPLE[int(processor.get("resample", 3))])
    if processor.get("do_center_crop", False) and processor.get("crop_size"):
        crop_h, crop_w = int(processor["crop_size"]["height"]), int(processor["crop_size"]["width"])
        top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(image, np.uint8)


class Tokenizer:
    """A checkpoint's tokenizer: tokenizer.json (the `tokenizers` package) or spiece.model
    (sentencepiece, with the end token appended as SigLIP's tokenizer does); real ids, padded
    with the checkpoint's pad id to `length`."""

    def __init__(self, folder: str):
        self.folder = folder
        config_file = os.path.join(folder, "tokenizer_config.json")
        self.config = json.load(open(config_file)) if os.path.isfile(config_file) else {}
        self.max_length = int(self.config.get("model_max_length", 0) or 0)
        json_file, spm_file = os.path.join(folder, "tokenizer.json"), os.path.join(folder, "spiece.model")
        if os.path.isfile(json_file):
            from tokenizers import Tokenizer as FastTokenizer

            self.kind, self.impl = "json", FastTokenizer.from_file(json_file)
            pad, eos = self.config.get("pad_token"), self.config.get("eos_token")
            self.pad_id = self.impl.token_to_id(pad) if pad else 0
            self.eos_id = self.impl.token_to_id(eos) if eos else None
        elif os.path.isfile(spm_file):
            import sentencepiece

            self.kind, self.impl = "spm", sentencepiece.SentencePieceProcessor(model_file=spm_file)
            self.pad_id = self.impl.piece_to_id(self.config.get("pad_token", "</s>"))
            self.eos_id = self.impl.piece_to_id(self.config.get("eos_token", "</s>"))
        else:
            raise ValueError(f"{folder}: neither tokenizer.json nor spiece.model")

    def normalise(self, text: str) -> str:
        """SigLIP's tokenizer first lowercases (do_lower_case), drops punctuation and collapses spaces."""
        if self.config.get("tokenizer_class") == "SiglipTokenizer":
            if self.config.get("do_lower_case", True):
                text = text.lower()
            text = text.translate(str.maketrans("", "", string.punctuation))
            text = re.sub(r"\s+", " ", text).strip()
        return text

    def encode(self, texts: list[str], length: int | None = None) -> np.ndarray:
        """int32 [B, length] (length: the tokenizer's model_max_length by default); longer
        sequences are cut (keeping the end token of a SentencePiece one)."""
        length = length or self.max_length
        rows = []
        for text in texts:
            if self.kind == "json":
                ids = self.impl.encode(text).ids
            else:
                ids = self.impl.encode(self.normalise(text))[: length - 1] + [self.eos_id]
            rows.append(ids[:length] + [self.pad_id] * (length - len(ids)))
        return np.asarray(rows, np.int32)
