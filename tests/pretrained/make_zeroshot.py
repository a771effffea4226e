"""Writes fixtures/{clip,siglip}/zeroshot.json: transformers' zero-shot predictions on
zeroshot_data.py's images, the CLIP way (one torch run; the tests need no torch).

    python tests/pretrained/make_zeroshot.py        # after make_fixtures.py; torch + transformers

Each class's text embedding is get_text_features of every prompt (padded to TEXT_LENGTH),
L2-normalised, averaged over the prompts and normalised again; an image's prediction is the
class whose embedding has the highest cosine similarity with get_image_features (the logit
scale and bias do not move the argmax). Stored: the predictions, the accuracy against the
labels, and each image's margin between its best and second-best class (the test checks
that no prediction hangs on a float-rounding tie).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers

import zeroshot_data

HERE = os.path.dirname(os.path.abspath(__file__))


def predictions(folder: str, no_resize: dict) -> dict:
    model = transformers.AutoModel.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    prompts = [p.format(c) for c in zeroshot_data.CLASSES for p in zeroshot_data.PROMPTS]
    with torch.no_grad():
        enc = processor.tokenizer(prompts, padding="max_length", max_length=zeroshot_data.TEXT_LENGTH,
                                  return_tensors="pt")
        text = model.get_text_features(**enc)
        text = getattr(text, "pooler_output", text)
        pixels = processor.image_processor(list(zeroshot_data.images()), do_resize=False, return_tensors="pt",
                                           **no_resize)["pixel_values"]
        image = model.get_image_features(pixel_values=pixels)
        image = getattr(image, "pooler_output", image)
    text = torch.nn.functional.normalize(text, dim=-1).reshape(len(zeroshot_data.CLASSES), len(zeroshot_data.PROMPTS), -1)
    classes = torch.nn.functional.normalize(text.mean(1), dim=-1)
    scores = (torch.nn.functional.normalize(image, dim=-1) @ classes.T).numpy()
    top2 = np.sort(scores, axis=1)[:, -2:]
    predicted = scores.argmax(1)
    return {"predictions": predicted.tolist(),
            "accuracy": float(np.mean(predicted == zeroshot_data.labels())),
            "margins": (top2[:, 1] - top2[:, 0]).tolist(),
            "transformers": transformers.__version__}


def main() -> None:
    for family, no_resize in (("clip", dict(do_center_crop=False)), ("siglip", {})):
        folder = os.path.join(HERE, "fixtures", family)
        result = predictions(folder, no_resize)
        with open(os.path.join(folder, "zeroshot.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(f"{family}: accuracy {result['accuracy']:.3f}, smallest margin {min(result['margins']):.2e}")


if __name__ == "__main__":
    main()
