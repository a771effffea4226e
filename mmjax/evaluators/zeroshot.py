"""kind 'zeroshot': classifies the examples of one modality (entry key `modality`, default
'image') by the cosine similarity of their contrastive embedding to each class's text
embedding, reporting '<prefix>accuracy'. A class's text embedding is CLIP's prompt
ensemble: every template of `prompts` filled with the class name, tokenized by the run's
tokenizer (config.data.tokenizer, e.g. a checkpoint's 'hf:DIR') at data.text_length, embedded
by the text tower and the contrastive head, L2-normalised, averaged over the prompts and
normalised again. The logit head's scale and bias (positive scale) do not change the
argmax, so the prediction is what the model's own logits give. Class names: `classes`, else
the data set's spec.json class_names (label order). Examples without the modality
(present_<m> false) are left out.

The prompts go through the same compiled step as the data: batches of config.batch_size
rows with the prompt tokens in 'text', the class id in 'label' (so the gathered rows can be
grouped by class in any order) and zeros elsewhere.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from mmjax.contract import WEIGHT, presence_key
from mmjax.data import pipeline
from mmjax.evaluators.base import Context
from mmjax.evaluators.embedding import PRESENT, EmbeddingEvaluator, normalise
from mmjax.media import make_tokenizer, tokenize
from mmjax.trainer.state import batch_shapes

LABEL = "label"


class ZeroShot(EmbeddingEvaluator):
    def __init__(self, name: str, cfg: ml_collections.ConfigDict, context: Context):
        super().__init__(name, cfg, context)
        config = context.config
        self.modality = str(cfg.modality)
        if self.modality == "text" or not {self.modality, "text"} <= set(self.embedded):
            raise ValueError(f"config.evals.{name}: zero-shot needs contrastive embeddings of text and of "
                             f"modality={self.modality!r}, but the model embeds {list(self.embedded)}; "
                             "set config.loss.contrastive and a pair with text")
        self.classes = tuple(cfg.classes) or tuple(self.source.spec.get("class_names", ()))
        if not self.classes:
            raise ValueError(f"config.evals.{name}.classes is empty and the data set's spec.json has no "
                             "class_names; name the classes in label order")
        self.shapes = batch_shapes(config, config.batch_size, eval=True, spec=self.source.spec)
        if LABEL not in self.shapes or self.shapes[LABEL][0] != (config.batch_size,):
            raise ValueError(f"config.evals.{name}: zero-shot needs integer class labels; the data's batches "
                             f"have no 'label' of one class per example (config.loss.task={config.loss.task!r})")
        tokenizer = make_tokenizer(config.data.tokenizer)
        self.prompt_tokens = np.stack([tokenize(p.format(c), config.data.text_length, tokenizer)
                                       for c in self.classes for p in cfg.prompts])
        self.prompt_labels = np.repeat(np.arange(len(self.classes), dtype=np.int32), len(cfg.prompts))

    def outputs(self, state, batch: dict) -> dict:
        _, aux = self.context.model.apply({"params": state.params}, batch, train=False, aux=True)
        return {"embeddings": {m: aux["embeddings"][m] for m in (self.modality, "text")},
                PRESENT: {self.modality: aux["present"][self.modality]}, LABEL: batch[LABEL]}

    def prompt_batches(self):
        """This host's share of the prompt rows, in batches of the compiled step's shape."""
        index, count = jax.process_index(), jax.process_count()
        total, rows = len(self.prompt_tokens), self.context.config.batch_size
        host = rows // count
        for lo in range(0, total, rows):
            batch = {k: np.zeros((host, *shape[1:]), dtype) for k, (shape, dtype) in self.shapes.items()}
            take = np.arange(lo + index * host, lo + (index + 1) * host)  # host-contiguous rows of the global batch
            real = take < total
            batch["text"][real] = self.prompt_tokens[take[real]]
            batch[LABEL][real] = self.prompt_labels[take[real]]
            batch[WEIGHT] = real.astype(np.float32)
            if presence_key("text") in batch:
                batch[presence_key("text")][:] = True
            yield batch

    def class_embeddings(self, state) -> np.ndarray:
        """[C, E]: each class's prompt-ensemble text embedding, unit norm."""
        rows = self.gather(state, self.prompt_batches())
        text, labels = normalise(rows["embeddings"]["text"]), rows[LABEL]
        means = np.stack([text[labels == c].mean(0) for c in range(len(self.classes))])
        return normalise(means)

    def predictions(self, state) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class, label) of every example that has the modality."""
        config = self.context.config
        classes = self.class_embeddings(state)
        data = self.gather(state, pipeline.eval_batches(self.source, config, global_batch=config.batch_size))
        keep = data[PRESENT][self.modality]
        scores = normalise(data["embeddings"][self.modality][keep]) @ classes.T
        return np.argmax(scores, axis=1), data[LABEL][keep]

    def run(self, state) -> dict[str, float]:
        predicted, labels = self.predictions(state)
        return {f"{self.prefix}accuracy": float(np.mean(predicted == labels)) if len(labels) else 0.0}

    def metrics(self, gathered: dict) -> dict:  # names only: run() computes the value
        return {f"{self.prefix}accuracy": 0.0}
