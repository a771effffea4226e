"""kind 'retrieval': instance-level recall@k over the whole data set, in both directions of
each pair: '<prefix><a>_to_<b>/recall@<k>'. Every example's contrastive embedding of a is a
query, the b embeddings of all examples are the candidates, and the hit is the example's own
b. An example that lacks a or b (present_<m> false) is neither query nor candidate for that
pair. The rank of the true partner counts the candidates scoring strictly higher (ties go to
the query), so recall@k = fraction of queries with fewer than k such candidates.

Entry keys: pairs (empty: the contrastive loss's pairs, mmjax.config.schema.contrastive_pairs) and ks (default (1, 5, 10)).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from mmjax.config.schema import contrastive_pairs
from mmjax.evaluators.base import Context
from mmjax.evaluators.embedding import PRESENT, EmbeddingEvaluator, normalise

_CHUNK = 1024  # query rows scored at once: memory stays O(chunk * N), not O(N^2)


def configured_pairs(cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> tuple:
    """The entry's pairs, or the loss's."""
    if cfg.pairs:
        return tuple(tuple(p) for p in cfg.pairs)
    return tuple((a, b) for a, b, _ in contrastive_pairs(config.loss)) or (tuple(config.loss.contrastive_pair),)


class Retrieval(EmbeddingEvaluator):
    def __init__(self, name: str, cfg: ml_collections.ConfigDict, context: Context):
        super().__init__(name, cfg, context)
        self.pairs = configured_pairs(cfg, context.config)
        self.ks = tuple(int(k) for k in cfg.ks)
        needed = sorted({m for p in self.pairs for m in p})
        lacking = [m for m in needed if m not in self.embedded]
        if lacking:
            raise ValueError(f"config.evals.{name}.pairs={self.pairs} need contrastive embeddings of {lacking}, "
                             f"but the model embeds {list(self.embedded)}; set config.loss.contrastive and its pairs")
        self.modalities = tuple(needed)

    def outputs(self, state, batch: dict) -> dict:
        _, aux = self.context.model.apply({"params": state.params}, batch, train=False, aux=True)
        return {"embeddings": {m: aux["embeddings"][m] for m in self.modalities},
                PRESENT: {m: aux["present"][m] for m in self.modalities}}

    def metrics(self, gathered: dict) -> dict:
        return recalls(gathered, self.pairs, self.ks, self.prefix)


def recalls(gathered: dict, pairs, ks, prefix: str) -> dict[str, float]:
    """'<prefix><a>_to_<b>/recall@<k>' of gathered {'embeddings': {m: [N, E]}, 'present': {m: [N]}}."""
    out = {}
    for a, b in pairs:
        keep = np.asarray(gathered[PRESENT][a], bool) & np.asarray(gathered[PRESENT][b], bool)
        emb_a, emb_b = (normalise(gathered["embeddings"][m][keep]) for m in (a, b))
        for x, y, (q, c) in ((emb_a, emb_b, (a, b)), (emb_b, emb_a, (b, a))):
            ranks = partner_ranks(x, y)
            for k in ks:
                out[f"{prefix}{q}_to_{c}/recall@{k}"] = float(np.mean(ranks < k)) if len(ranks) else 0.0
    return out


def partner_ranks(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """int [N]: for query i, how many candidates score strictly higher than candidate i."""
    n = len(queries)
    ranks = np.empty(n, np.int64)
    for lo in range(0, n, _CHUNK):
        scores = queries[lo:lo + _CHUNK] @ candidates.T
        own = scores[np.arange(len(scores)), np.arange(lo, lo + len(scores))]
        ranks[lo:lo + _CHUNK] = np.sum(scores > own[:, None], axis=1)
    return ranks
