"""Export and predict of a loss.task='generate' run, for both decoder kinds: a tiny run
trained on a built data set with target_text, its export's `generate` function, and the
predictor on the same raw files writing the strings the in-process eval decoding wrote.
The cross run uses a SentencePiece tokenizer that only its target text needs (image-only
model), so the export must carry it."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from export_run import tiny_config
from mmjax import decoding, export, media, predict, train
from mmjax.data import build, pipeline, sources
from mmjax.models.multimodal import build_model

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _manifest(folder, name: str, count: int, seed: int) -> str:
    """`count` 16x16 PNGs of a colour with noise, each with its colour's name as target_text."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder / name, exist_ok=True)
    rows = []
    for i in range(count):
        word = list(COLOURS)[i % len(COLOURS)]
        pixels = np.clip(np.array(COLOURS[word]) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name / f"{i}.png")
        rows.append({"image": f"{name}/{i}.png", "target_text": word})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _trained(root, kind: str, tokenizer: str = "bytes") -> dict:
    """Builds train/eval from manifests, trains a few steps, exports for CPU."""
    manifests = {split: _manifest(root, split, n, seed) for split, n, seed in (("train", 32, 0), ("eval", 12, 1))}
    quiet = lambda *a, **k: None  # noqa: E731
    for split, manifest in manifests.items():
        build.build(manifest, str(root / f"{split}_ds"), tokenizer=tokenizer, workers=1, progress=False, log=quiet)
    config = tiny_config(str(root / "cache"), loss__task="generate", decoder__kind=kind, modalities="('image',)",
                         data__train=str(root / "train_ds"), data__eval=str(root / "eval_ds"),
                         data__tokenizer=tokenizer, data__target_length=8, total_steps=4, eval_every=4,
                         checkpoint_every=4)
    workdir = str(root / "run")
    train.train(config, workdir)
    spec = export.export(workdir, str(root / "E"), platforms=("cpu",), log=quiet)
    return dict(config=config, workdir=workdir, export=str(root / "E"), spec=spec, manifest=manifests["eval"])


def _sentencepiece(root) -> str:
    import sentencepiece

    rng = np.random.default_rng(0)
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choice(list(COLOURS), 4)) for _ in range(200)) + "\n")
    sentencepiece.SentencePieceTrainer.train(input=str(root / "corpus.txt"), model_prefix=str(root / "spm"),
                                             vocab_size=16, model_type="unigram", hard_vocab_limit=False,
                                             minloglevel=2)
    return str(root / "spm.model")


@pytest.fixture(scope="module", params=["prefix", "cross"])
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"generate_{request.param}")
    tokenizer = "bytes" if request.param == "prefix" else _sentencepiece(root)
    return _trained(root, request.param, tokenizer)


def _eval_decoding(run) -> list[str]:
    """What the run's eval decodes: decoding.decode_fn (the 'generate' evaluator's) on the
    pipeline's eval batches, with the checkpoint's parameters."""
    config, params, _, _ = export.restore_params(run["workdir"])
    model = build_model(config, 1)
    settings = decoding.DecodeSettings.from_config(config)
    tokenizer = media.make_tokenizer(config.data.tokenizer)
    source = sources.open_source(config.data.eval, "eval", config.data)
    texts = []
    for batch in pipeline.eval_batches(source, config, global_batch=8):
        ids = np.asarray(decoding.generate(model, {"params": params}, batch, settings))
        texts += [media.decode_target(row, tokenizer) for row, w in zip(ids, batch["weight"]) if w]
    return texts


def test_the_export_carries_a_generate_function_and_its_decoding(run):
    spec = run["spec"]
    assert spec["task"] == "generate" and spec["function_file"] == predict.GENERATE_FILE
    assert spec["generate"]["max_length"] == 7 and spec["outputs"] == {"tokens": [None, 7]}
    assert spec["generate"]["decode"]["beam_size"] == 1 and "preprocess" in spec and "text" not in spec["preprocess"]
    tokenizer = run["config"].data.tokenizer
    if tokenizer == "bytes":
        assert spec["generate"]["tokenizer"] == "bytes"
        assert spec["generate"]["vocab"] == {"size": 260, "bos_id": 258, "eos_id": 259, "pad_id": 0}
    else:  # copied although the model reads no text: the target text needs it
        assert spec["generate"]["tokenizer"] == predict.TOKENIZER_FILE
        copied = os.path.join(run["export"], predict.TOKENIZER_FILE)
        assert open(copied, "rb").read() == open(tokenizer, "rb").read()
        size = media.make_tokenizer(tokenizer).vocab_size
        assert spec["generate"]["vocab"] == {"size": size + 2, "bos_id": size, "eos_id": size + 1, "pad_id": 0}
    assert set(spec["inputs"]) == {"image", "present_image"}  # no target fields
    assert predict.GENERATE_FILE in predict.read_spec(run["export"])[predict.FILES]
    exported = predict.deserialize_function(os.path.join(run["export"], predict.GENERATE_FILE))
    assert not isinstance(exported.out_avals[0].shape[0], int)  # the batch size is symbolic


def test_the_predictor_writes_the_strings_eval_decoding_wrote(run, tmp_path):
    expected = _eval_decoding(run)
    predictor = predict.Predictor(run["export"], batch_size=5)  # other batches than eval's: a symbolic size
    out = str(tmp_path / "preds.jsonl")
    summary = predict.predict_manifest(predictor, run["manifest"], out, log=lambda *a, **k: None)
    rows = [json.loads(line) for line in open(out)]
    assert [r["text"] for r in rows] == expected and len(expected) == 12
    truth = [json.loads(line)["target_text"] for line in open(run["manifest"])]
    assert [r["target_text"] for r in rows] == truth
    assert summary["accuracy"] == np.mean([t == e for t, e in zip(truth, expected)])


def test_single_inputs_print_the_generated_text(run, capsys):
    image = os.path.join(os.path.dirname(run["manifest"]), "eval", "0.png")
    assert predict.main([f"--export={run['export']}", f"--image={image}"]) == 0
    predictor = predict.Predictor(run["export"])
    assert capsys.readouterr().out == predictor.generate([predictor.example(image=image)])[0] + "\n"
    with pytest.raises(predict.PredictError, match="it writes text"):
        predictor.probabilities([])
