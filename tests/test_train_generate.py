"""loss.task='generate' end to end: the describe task -> the train loop -> the generate
evaluator's metrics, for both decoder kinds; and the describe data themselves."""
import json

import ml_collections
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import media, train
from mmjax.data import preprocess, synthetic, targets


def test_describe_targets_name_the_digit_and_the_note():
    examples, latents = synthetic.generate(50, 3, task="describe")
    for example, (a, b, _) in zip(examples, latents):
        assert example["target_text"] == f"{synthetic.CLASS_NAMES[a]} and {synthetic.CLASS_NAMES[b]}"
        assert example["label"] == a and example["text"]
    spec = synthetic.make_spec(image_size=16, audio_rate=8000, audio_samples=2048, task="describe")
    longest = max(media.target_tokens_needed(e["target_text"]) for e in examples)
    assert "generate" in spec["tasks"] and longest <= targets.target_max_tokens(spec) == 17
    assert max(len(e["text"].encode()) for e in examples) <= spec["modalities"]["text"]["max_bytes"]


def test_pipeline_tokenizes_the_target_with_the_run_tokenizer():
    example = synthetic.generate(1, 0, task="describe")[0][0]
    fields = targets.batch_fields({"tasks": ["generate"]}, "generate", 12)
    assert fields == {"target_tokens": ((12,), np.int32), "target_length": ((), np.int32)}
    row = preprocess.preprocess_example(example, ("image",), image_size=16, audio_samples=2048, text_length=8,
                                        task="generate", target_fields=fields)
    vocab = media.target_vocab()
    assert row["target_tokens"][0] == vocab.bos_id and row["target_length"] == 12  # cut, still ends with EOS
    assert row["target_tokens"][11] == vocab.eos_id
    assert media.decode_target(row["target_tokens"]) == example["target_text"][:10]
    with pytest.raises(ValueError, match=r"config.data.target_length=1 leaves no room"):
        targets.batch_fields(None, "generate", 1)


@pytest.mark.parametrize("kind", ["prefix", "cross"])
def test_describe_trains_and_reports_text_metrics(tiny_config, tmp_path, kind):
    config = tiny_config(data__synthetic__task="describe", loss__task="generate", decoder__kind=kind,
                         data__target_length=18, decoder__depth=1, decoder__width=32, total_steps=30,
                         eval_every=30, checkpoint_every=30, optim__lr=3e-3)
    config.evals = ml_collections.ConfigDict({"eval": config_lib.evaluator("generate", prefix="eval/")})
    final = train.train(config, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    names = {"eval/exact_match", "eval/token_accuracy", "eval/wer", "eval/bleu", "eval/loss"}
    assert names <= set(final) and all(np.isfinite(final[n]) for n in names)
    assert 0 <= final["eval/exact_match"] <= 1 and final["eval/token_accuracy"] > 0.3
    assert any("train/token_accuracy" in r for r in rows)


def test_generate_evaluator_needs_the_generate_task(tiny_config):
    config = tiny_config()
    config.evals = ml_collections.ConfigDict({"gen": config_lib.evaluator("generate")})
    with pytest.raises(config_lib.UserError, match=r"config.evals.gen.kind: 'generate' decodes text"):
        config_lib.validate(config)


def test_targets_longer_than_target_length_are_named():
    spec = {"tasks": ["generate"], "target_text": {"max_tokens": 40}}
    assert targets.cut_targets_note(spec, "generate", 32, "D") == (
        "target texts of D need up to 40 tokens but data.target_length=32: longer ones are cut; "
        "set --config.data.target_length=40 to keep them whole")
    assert targets.cut_targets_note(spec, "generate", 40, "D") is None
    assert targets.cut_targets_note(spec, "classification", 8, "D") is None
