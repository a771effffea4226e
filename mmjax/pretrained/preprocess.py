"""A checkpoint's own preprocessing of raw files, as its processor files define it: images
(resize, centre crop; mean/std normalisation happens in the model, see ViTEncoder's
pixel_mean/pixel_std), text (its tokenizer.json through the `tokenizers` package, or its
SentencePiece model) and audio (read as float waveforms; Whisper's log-mel front end runs
in the model, mmjax/models/whisper.py). The definitions live in mmjax/media.py, shared with
the data build and the predictor; this module applies them at the checkpoint's own sizes.

    image = load_image('cat.png', Checkpoint(folder).image_processor())   # uint8 [H, W, 3]
    ids = Tokenizer(folder).encode(['a photo of a cat'], length=16)      # int32 [B, 16]
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from mmjax import media

Tokenizer = media.CheckpointTokenizer


def load_image(path_or_image, processor: dict) -> np.ndarray:
    """An image file (or PIL image) -> uint8 [H, W, 3] as the processor resizes and crops it."""
    image = path_or_image if isinstance(path_or_image, Image.Image) else media.open_image(path_or_image)
    return media.ImageResize.from_processor(processor).apply(image, media.processor_size(processor))
