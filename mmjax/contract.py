"""The batch contract between data and models, in code: every name both sides agree on.

A batch is a dict of arrays with a leading batch dimension [B]:

    image         uint8   [B, H, W, 3]
    text          int32   [B, L]      token ids, PAD_ID after the last token
    audio         float32 [B, S]      waveform in [-1, 1], zero after audio_length
    audio_length  int32   [B]         real samples of each waveform
    label         int32   [B]         classification; float32 [B, C] for multilabel
    target        float32 [B, T]      regression
    target_tokens int32   [B, T]      generate: [BOS, ids..., EOS, pad...] (media.encode_target)
    target_length int32   [B]         generate: real ids of target_tokens, BOS and EOS included
    present_<m>   bool    [B]         optional: is modality m there (absent key: all present)
    weight        float32 [B]         eval only: 0 for padding rows

This module imports nothing but numpy, so the data side, the models and the standalone
predictor can all depend on it.
"""

from __future__ import annotations

import numpy as np

# Canonical modality order: modality embeddings are indexed by position in it, so a model
# trained on a subset keeps compatible parameter shapes.
MODALITIES = ("image", "text", "audio")

# Text batches are padded with this id after the last token (tokenizers' ids start above it).
PAD_ID = 0

# Batch keys besides the modalities themselves.
AUDIO_LENGTH = "audio_length"
LABEL = "label"
TARGET = "target"
TARGET_TOKENS = "target_tokens"
TARGET_LENGTH = "target_length"
WEIGHT = "weight"

# Objectives (config.loss.task); 'none' trains a contrastive loss only.
# 'generate' trains a text decoder on each example's target text (teacher-forced).
LABELLED_TASKS = ("classification", "multilabel", "regression", "generate")
TASKS = (*LABELLED_TASKS, "none")
# The batch key each labelled task reads its target from.
TARGET_KEY = {"classification": LABEL, "multilabel": LABEL, "regression": TARGET, "generate": TARGET_TOKENS}
# The field a built data set stores it under (multilabel keeps a list of class ids; generate
# keeps the raw string, tokenized by the pipeline with the run's tokenizer, as 'text' is).
STORED_FIELD = {"classification": "label", "multilabel": "labels", "regression": "target",
                "generate": "target_text"}

CONTRASTIVE = ("none", "sigmoid", "softmax")
CONTRASTIVE_HEADS = ("mmjax", "clip", "siglip")  # config.loss.contrastive_head (models/heads.py HEAD_STYLES)
CONTRASTIVE_POOLS = ("mean", "map")  # config.loss.contrastive_pool (contrastive_head 'mmjax')
CHUNKED = ("auto", "yes", "no")  # config.loss.contrastive_chunked (mmjax/contrastive.py)
# config.fusion.balance: modality balancing (mmjax/trainer/balance.py); both methods read
# the per-modality heads (config.fusion.aux_weight > 0).
BALANCE = ("none", "ogm_ge", "gradient_blending")
OGM_TASKS = ("classification", "multilabel")  # tasks with a probability of the true target
DTYPES = ("float32", "bfloat16", "auto")  # config.model.dtype; 'auto' resolves per platform
EXPORT_DTYPES = ("float32", "bfloat16")  # an export's compute dtype (no 'auto': it is fixed)
REMAT_POLICIES = ("none", "full", "dots")
OPTIMIZERS = ("adamw", "adam")


def presence_key(modality: str) -> str:
    """The optional batch key that flags, per example, whether `modality` is there."""
    return f"present_{modality}"


# The HTK mel scale, shared by the on-device log-mel front end, the synthetic tones and
# frequency-mask augmentation, so all three agree on what a mel bin is.
def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)
