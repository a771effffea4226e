"""Writes tiny random transformers checkpoints and their reference outputs for the parity tests.

    pip install -e '.[bench]'          # torch, transformers, sentencepiece
    python tests/pretrained/make_fixtures.py [--out tests/pretrained/fixtures]

For each family (vit, clip, siglip, bert, whisper) it saves a folder exactly as a user's
`save_pretrained` would (config.json, model.safetensors, the processor and tokenizer files),
then runs transformers' own processor + model on the raw inputs that `inputs.py` writes (a PNG,
a few strings, a WAV; the tests write the same bytes to a temporary folder, so they are not
committed) and stores what they give in `<family>/reference.npz`. For CLIP and SigLIP it also
stores the zero-shot scores `zero_shot_logits` (transformers' logits_per_image) of three 32x32
images `zero_shot_images` (uint8, given to the processor without resizing) against the strings.
The tests compare mmjax's loaded encoders against these arrays, so CI checks parity without
torch. Width 32 and two layers keep every folder under 300 kB.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np
import scipy.io.wavfile
import torch
import transformers
from PIL import Image

import inputs

HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = inputs.TEXTS
WORDS = sorted({w for t in TEXTS for w in t.split()} | {"photo", "of", "the", "bird", "cats", "dogs"})
AUDIO_RATE = inputs.AUDIO_RATE


# ---------------------------------------------------------------------------- raw inputs
def read_inputs(directory: str):
    paths = inputs.write(directory)
    image = Image.open(paths["image"]).convert("RGB")
    rate, pcm = scipy.io.wavfile.read(paths["audio"])
    assert rate == AUDIO_RATE
    with open(paths["texts"]) as f:
        texts = json.load(f)
    return image, pcm.astype(np.float32) / 32768.0, texts


def zero_shot_images(image: Image.Image) -> np.ndarray:
    """uint8 [3, 32, 32, 3]: the PNG at the models' size, mirrored, and inverted."""
    small = np.asarray(image.resize((32, 32), Image.BICUBIC))
    return np.stack([small, small[:, ::-1], 255 - small])


# ---------------------------------------------------------------------------- tokenizers
def bert_tokenizer(directory: str) -> transformers.PreTrainedTokenizerBase:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=16)


def clip_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """Byte-level BPE as CLIP's: every letter with and without the end-of-word marker, and
    merges that rebuild the test words."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [*letters, *(c + "</w>" for c in letters)]
    merges = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if (pieces[0], pieces[1]) not in merges:
                merges.append((pieces[0], pieces[1]))
                vocab.append(merged)
            pieces = [merged, *pieces[2:]]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return transformers.CLIPTokenizer(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))}, merges=merges,
                                      model_max_length=16)


def siglip_tokenizer(workdir: str) -> transformers.PreTrainedTokenizerBase:
    """A SentencePiece unigram model trained on the test strings (SigLIP's tokenizer kind)."""
    import sentencepiece as spm  # only this script needs the trainer

    corpus = os.path.join(workdir, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(list(TEXTS) * 20 + WORDS * 20))
    prefix = os.path.join(workdir, "spiece")
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, vocab_size=30, model_type="unigram", hard_vocab_limit=False,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                                   normalization_rule_name="identity",  # no 240 kB NFKC table
                                   minloglevel=2)
    return transformers.SiglipTokenizer(vocab_file=prefix + ".model", model_max_length=16)


# ---------------------------------------------------------------------------- families
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16)
MEAN, STD = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]


def make_vit(out: str, raw) -> dict:
    image, _, _ = raw
    model = transformers.ViTModel(transformers.ViTConfig(**VISION, layer_norm_eps=1e-12), add_pooling_layer=True).eval()
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    result = model(pixel_values=pixels)
    return dict(pixel_values=pixels, last_hidden_state=result.last_hidden_state, pooler_output=result.pooler_output)


def make_bert(out: str, raw) -> dict:
    _, _, texts = raw
    tokenizer = bert_tokenizer(out)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, type_vocab_size=2, **TEXT)
    model = transformers.BertModel(config).eval()  # eval: BERT's dropout is 0.1
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    enc = tokenizer(list(texts), padding="max_length", max_length=16, return_tensors="pt")
    result = model(**enc)
    return dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                last_hidden_state=result.last_hidden_state, pooler_output=result.pooler_output)


def _contrastive(model, processor, out: str, raw, padding, **no_resize) -> dict:
    image, _, texts = raw
    model.save_pretrained(out)
    processor.save_pretrained(out)
    enc = processor(text=list(texts), images=image, padding=padding, return_tensors="pt")
    result = model(**enc)
    images = zero_shot_images(image)
    pixels = processor.image_processor(list(images), do_resize=False, return_tensors="pt", **no_resize)["pixel_values"]
    zero_shot = model(**{**enc, "pixel_values": pixels}).logits_per_image
    arrays = dict(pixel_values=enc["pixel_values"], input_ids=enc["input_ids"],
                  logits_per_image=result.logits_per_image, image_embeds=result.image_embeds,
                  text_embeds=result.text_embeds,
                  vision_last_hidden_state=result.vision_model_output.last_hidden_state,
                  vision_pooler_output=result.vision_model_output.pooler_output,
                  text_last_hidden_state=result.text_model_output.last_hidden_state,
                  text_pooler_output=result.text_model_output.pooler_output)
    arrays.update(zero_shot_images=images, zero_shot_logits=zero_shot)
    if "attention_mask" in enc:
        arrays["attention_mask"] = enc["attention_mask"]
    return arrays


def make_clip(out: str, raw) -> dict:
    tokenizer = clip_tokenizer()
    config = transformers.CLIPConfig(
        text_config=dict(**TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=VISION, projection_dim=24)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # not the init value (mmjax's softmax head starts there too), so loading it is tested
        model.logit_scale.fill_(3.0)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                      image_mean=MEAN, image_std=STD)
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _contrastive(model, processor, out, raw, padding=True, do_center_crop=False)


def make_siglip(out: str, raw) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = siglip_tokenizer(tmp)
        text = dict(**TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
        config = transformers.SiglipConfig(text_config=text,
                                           vision_config=VISION)
        model = transformers.SiglipModel(config).eval()
        with torch.no_grad():  # random bias/scale that are not the init values, so loading them is tested
            model.logit_scale.fill_(2.0)
            model.logit_bias.fill_(-3.0)
        image_processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN,
                                                            image_std=STD)
        processor = transformers.SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        return _contrastive(model, processor, out, raw, padding="max_length")


def make_whisper(out: str, raw) -> dict:
    _, wave, _ = raw
    config = transformers.WhisperConfig(
        vocab_size=64, d_model=32, encoder_layers=2, encoder_attention_heads=2, decoder_layers=1,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=100, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, suppress_tokens=[], begin_suppress_tokens=[])
    model = transformers.WhisperModel(config).eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=2, sampling_rate=AUDIO_RATE)
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    features = extractor(wave, sampling_rate=AUDIO_RATE, return_tensors="pt")["input_features"]
    hidden = model.encoder(input_features=features).last_hidden_state
    return dict(input_features=features, last_hidden_state=hidden)


FAMILIES = {"vit": make_vit, "bert": make_bert, "clip": make_clip, "siglip": make_siglip, "whisper": make_whisper}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "fixtures"))
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        raw = read_inputs(tmp)
    for name, make in FAMILIES.items():
        directory = os.path.join(args.out, name)
        os.makedirs(directory, exist_ok=True)
        with torch.no_grad():
            arrays = make(directory, raw)
        np.savez(os.path.join(directory, "reference.npz"),
                 **{k: v.detach().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in arrays.items()})
        size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
        print(f"{name}: {directory} ({size / 1024:.0f} kB; transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
