"""kind 'generate': decodes the eval set with config.decode (mmjax/decoding.py) and scores
the text against each example's target: '<prefix>exact_match' (decoded text == target
text), '<prefix>wer' (word error rate over the corpus, jiwer), '<prefix>bleu' (corpus
BLEU-4, 0-100, sacrebleu; with effective order, so a corpus of texts under four words is
scored on the n-grams it has rather than 0) and, teacher-forced, '<prefix>token_accuracy' and '<prefix>loss'.

Texts on both sides come from token ids (media.decode_target with the run's tokenizer), so
the reference is the target as the model was trained on it (cut at data.target_length).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jiwer
import ml_collections
import numpy as np
from sacrebleu.metrics import BLEU

from mmjax import decoding, media
from mmjax.contract import TARGET_LENGTH, TARGET_TOKENS, WEIGHT
from mmjax.evaluators.base import Context
from mmjax.evaluators.embedding import EmbeddingEvaluator
from mmjax.objectives import generate_sums

IDS = "ids"
_BLEU = BLEU(effective_order=True)
SUMS = ("loss", "correct_tokens", "tokens")  # per-example teacher-forced sums (generate_sums' own names)


class GenerateEvaluator(EmbeddingEvaluator):
    def __init__(self, name: str, cfg: ml_collections.ConfigDict, context: Context):
        super().__init__(name, cfg, context)
        config = context.config
        if config.loss.task != "generate" or context.model.decoder is None:
            raise ValueError(f"config.evals.{name}.kind='generate' needs --config.loss.task=generate")
        self.settings = decoding.DecodeSettings.from_config(config)
        self.decode = decoding.decode_fn(context.model, self.settings)
        self.tokenizer = media.make_tokenizer(config.data.tokenizer)

    def outputs(self, state, batch: dict) -> dict:
        logits = self.context.model.apply({"params": state.params}, batch, train=False)
        per_row = _per_example(logits, batch[TARGET_TOKENS], batch[TARGET_LENGTH], jnp.ones_like(batch[WEIGHT]))
        return {IDS: self.decode(state.params, batch), TARGET_TOKENS: batch[TARGET_TOKENS], **per_row}

    def metrics(self, gathered: dict) -> dict:
        return text_metrics([media.decode_target(row, self.tokenizer) for row in gathered[IDS]],
                            [media.decode_target(row, self.tokenizer) for row in gathered[TARGET_TOKENS]],
                            gathered, self.prefix)


def _per_example(logits, tokens, lengths, weights) -> dict:
    """generate_sums of each row on its own ({name: [B]}): vmapped over rows of one."""
    def one(lg, tk, ln, w):
        sums = generate_sums(lg[None], tk[None], ln[None], w[None])
        return {k: sums[k] for k in SUMS}
    return jax.vmap(one)(logits, tokens, lengths, weights)


def text_metrics(hypotheses: list[str], references: list[str], sums: dict, prefix: str) -> dict[str, float]:
    """exact_match, wer, bleu of the decoded texts; token_accuracy and loss of the
    teacher-forced per-example sums (None: left out)."""
    n = len(references)
    out = {f"{prefix}exact_match": float(np.mean([h == r for h, r in zip(hypotheses, references)])) if n else 0.0}
    # jiwer refuses empty references; a corpus of only empty ones scores 0 errors if all match.
    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    out[f"{prefix}wer"] = float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])) if pairs else 0.0
    out[f"{prefix}bleu"] = float(_BLEU.corpus_score(hypotheses, [references]).score) if n else 0.0
    if sums is not None:
        out[f"{prefix}token_accuracy"] = float(np.sum(sums["correct_tokens"]) / max(np.sum(sums["tokens"]), 1.0))
        out[f"{prefix}loss"] = float(np.mean(sums["loss"])) if n else 0.0
    return out
