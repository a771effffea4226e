"""Evaluators as config (mmjax/evaluators/): a second evaluator on a second data set is a
config entry, each runs at its own cadence, and bad entries name the key to fix."""
import json

import ml_collections
import numpy as np
import pytest

from mmjax import evaluators, train
from mmjax.data import sources
from mmjax.objectives import Objective


def _rows(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def test_a_second_evaluator_on_a_second_data_set_is_a_config_change(tiny_config, tmp_path):
    config = tiny_config()  # total_steps 6, eval_every 3
    # The second data set: the synthetic training split, a built directory of its own.
    train_dir = sources.open_source("synthetic", "train", config.data).directory
    with config.evals.unlocked():
        config.evals.train_set = ml_collections.ConfigDict(dict(kind="task", data=train_dir, every=2, prefix=""))
    final = train.train(config, str(tmp_path))

    assert set(final) == {"eval/loss", "eval/accuracy", "eval/train_set/loss", "eval/train_set/accuracy"}
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [3, 6]  # config.eval_every
    assert [r["step"] for r in rows if "eval/train_set/accuracy" in r] == [2, 4, 6]  # its own every
    assert final["eval/train_set/loss"] != final["eval/loss"]  # two data sets, two results
    assert all(np.isfinite(v) for v in final.values())


def test_entries_add_the_eval_without_shorthand_and_open_each_data_set_once(tiny_config):
    config = tiny_config(eval_without="audio,text")
    with config.evals.unlocked():
        config.evals.again = ml_collections.ConfigDict(dict(kind="task", data="synthetic", every=0, prefix=""))
    entries = evaluators.entries(config)
    assert list(entries) == ["again", "eval", "eval_without"]  # config.evals by name, then the shorthand
    assert entries["eval_without"].kind == "without_modality"
    assert entries["eval_without"].prefix == "eval/" and tuple(entries["eval_without"].modalities) == ("audio", "text")
    assert evaluators.data_names(config) == ["synthetic"]


def test_an_unknown_kind_names_the_entry(tiny_config):
    config = tiny_config()
    config.evals.eval.kind = "caption"
    with pytest.raises(ValueError, match=r"config.evals.eval.kind='caption' is not one of \['task', 'without_modality', "
                                         r"'retrieval', 'zeroshot', 'linear_probe', 'generate'\]"):
        evaluators.build(config, context=None)  # refused before anything is compiled


@pytest.mark.parametrize("modalities, message", [
    (("text",), r"config.evals.w.modalities=\('text',\) must name modalities of config.modalities=\('image', 'audio'\)"),
    ((), r"config.evals.w.modalities=\(\) must name modalities"),
])
def test_without_modality_names_its_modalities_key(tiny_config, modalities, message):
    config = tiny_config(modalities="image,audio")
    entry = ml_collections.ConfigDict(dict(kind="without_modality", data="", every=0, prefix="", modalities=modalities))
    context = evaluators.Context(config, None, Objective(), None, None, {})
    with pytest.raises(ValueError, match=message):  # refused before anything is compiled
        evaluators.KINDS["without_modality"].from_config("w", entry, context)
