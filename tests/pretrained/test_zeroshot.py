"""Issue 13's zero-shot done-when on the tiny fixtures: with both towers loaded from a CLIP /
SigLIP checkpoint, the 'zeroshot' evaluator at step 0 (the checkpoint's own tokenizer,
projections and prompts) predicts what transformers' model predicts on the same images
(fixtures/<family>/zeroshot.json, written once by make_zeroshot.py; no torch here)."""
import json

import jax
import numpy as np
import pytest

import zeroshot_data
from mmjax import evaluators, media, sharding, trainer
from mmjax.config import schema
from mmjax.data import codec, sources, writer
from mmjax.models.multimodal import build_model
from mmjax.objectives import Objective
from mmjax.pretrained import towers
from parity import fixture


def _eval_set(directory, checkpoint: str) -> str:
    """zeroshot_data's images and labels as a data set, at the checkpoint's size (its processor's
    resize leaves them as they are); the text is never read by the evaluator."""
    records = [codec.encode({"image": image, "text": "a photo", "label": int(label)})
               for image, label in zip(zeroshot_data.images(), zeroshot_data.labels())]
    spec = {"format": "mmjax-v1", "num_classes": len(zeroshot_data.CLASSES), "class_names": list(zeroshot_data.CLASSES),
            "modalities": {"image": {"height": 32, "width": 32, "channels": 3, "processor": checkpoint,
                                      "resize": media.image_resize(checkpoint).to_json()},
                            "text": {"max_bytes": 8}}}
    writer.write_dataset(str(directory), records, spec)
    return str(directory)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_zero_shot_at_step_0_predicts_what_transformers_predicts(tiny_config, tmp_path, family):
    spec = "hf:" + fixture(family)
    data = _eval_set(tmp_path / "eval", spec)
    config = tiny_config(modalities="('image','text')", model__image__depth=2, model__text__depth=2,
                         model__image__init_from=spec, model__text__init_from=spec,
                         loss__task="none", loss__contrastive="softmax" if family == "clip" else "sigmoid",
                         loss__contrastive_pair="('image','text')", data__image_size=32,
                         data__text_length=zeroshot_data.TEXT_LENGTH, model__dtype="float32",
                         data__eval=data, batch_size=16)  # 24 images: the last batch is padded
    with config.evals.unlocked():
        config.evals.zs = schema.evaluator("zeroshot", prompts=zeroshot_data.PROMPTS)  # classes: the spec's
    towers.configure(config)  # the checkpoint's architecture, tokenizer and head style
    assert config.data.tokenizer == spec and config.loss.contrastive_head == family

    source = sources.open_source(data, "eval", config.data)
    model = build_model(config, source.num_classes)
    tx, _ = trainer.make_optimizer(config)
    mesh = sharding.make_mesh(config.mesh)  # 8 fake devices
    abstract, _, init_fn = trainer.sharded_state_shapes(model, tx, trainer.batch_shapes(config, config.batch_size), mesh)
    state = towers.load_params(init_fn(jax.random.key(0)), config)  # step 0: the checkpoint's parameters
    context = evaluators.Context(config, model, Objective.from_config(config), mesh, abstract, {data: source})
    zs = {e.name: e for e in evaluators.build(config, context)}["zs"]

    with open(fixture(family) + "/zeroshot.json") as f:
        want = json.load(f)
    assert min(want["margins"]) > 1e-3  # no prediction rests on a rounding-level tie
    predicted, labels = zs.predictions(state)
    np.testing.assert_array_equal(labels, zeroshot_data.labels())
    np.testing.assert_array_equal(predicted, want["predictions"])
    assert zs.run(state) == {"eval/zs/accuracy": want["accuracy"]}
    assert len(set(want["predictions"])) > 1  # the models do tell the classes apart
