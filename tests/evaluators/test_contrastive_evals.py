"""kinds 'retrieval', 'zeroshot' and 'linear_probe' (issue 13 item 3): their metrics against
numpy references, in-process on 8 fake devices with a tiny contrastive model (the eval set's
last batch padded, so padding rows must be dropped)."""
import jax
import ml_collections
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import evaluators, sharding, trainer
from mmjax.config import schema
from mmjax.data import pipeline, sources
from mmjax.evaluators import linear_probe, retrieval
from mmjax.media import make_tokenizer, tokenize
from mmjax.models.multimodal import build_model
from mmjax.objectives import Objective


def _reference_recall(x, y, k):
    """Brute force: sort every query's candidates by score; is its own partner in the top k?"""
    x, y = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    order = np.argsort(-(x @ y.T), axis=1)
    return float(np.mean([i in order[i, :k] for i in range(len(x))]))


def test_recalls_match_a_numpy_reference_and_leave_out_examples_lacking_a_modality():
    rng = np.random.default_rng(0)
    n, e = 60, 8
    image = rng.normal(size=(n, e))
    text = image + rng.normal(scale=1.2, size=(n, e))  # noisy partners: recall between 0 and 1
    audio = rng.normal(size=(n, e))
    present = {"image": np.ones(n, bool), "text": rng.random(n) < 0.7, "audio": np.ones(n, bool)}
    gathered = {"embeddings": {"image": image, "text": text, "audio": audio}, "present": present}
    got = retrieval.recalls(gathered, (("image", "text"), ("image", "audio")), (1, 5, 10), "eval/r/")
    assert sorted(got) == sorted(f"eval/r/{a}_to_{b}/recall@{k}" for a, b in
                                 (("image", "text"), ("text", "image"), ("image", "audio"), ("audio", "image"))
                                 for k in (1, 5, 10))
    keep = present["text"]
    for k in (1, 5, 10):
        assert got[f"eval/r/image_to_text/recall@{k}"] == _reference_recall(image[keep], text[keep], k)
        assert got[f"eval/r/text_to_image/recall@{k}"] == _reference_recall(text[keep], image[keep], k)
        assert got[f"eval/r/audio_to_image/recall@{k}"] == _reference_recall(audio, image, k)
    assert 0 < got["eval/r/image_to_text/recall@1"] < got["eval/r/image_to_text/recall@10"] < 1
    assert got["eval/r/image_to_audio/recall@1"] < 0.1  # unrelated embeddings: chance is 1/60


def test_recall_is_instance_level_exact_copies_rank_first():
    x = np.random.default_rng(1).normal(size=(1500, 4))  # more rows than one scoring chunk
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert (retrieval.partner_ranks(x, x) == 0).all()


def _context(config):
    mesh = sharding.make_mesh(config.mesh, jax.devices())  # 8 fake devices: the batch is split 8 ways
    source = sources.open_source(config.data.eval, "eval", config.data)
    model = build_model(config, source.num_classes)
    tx, _ = trainer.make_optimizer(config)
    abstract, _, init_fn = trainer.sharded_state_shapes(model, tx, trainer.batch_shapes(config, config.batch_size), mesh)
    state = init_fn(jax.random.key(0))
    return evaluators.Context(config, model, Objective.from_config(config), mesh, abstract,
                              {config.data.eval: source}), state, source


def _contrastive_config(tiny_config, **evals):
    config = tiny_config(modalities="('image','text')", loss__task="none", loss__contrastive="sigmoid",
                         loss__contrastive_pair="('image','text')", data__synthetic__task="paired",
                         data__image_size="20", model__image__patch="4", fusion__kind="concat")
    with config.evals.unlocked():
        config.evals = ml_collections.ConfigDict({name: schema.evaluator(kind, **values)
                                                  for name, (kind, values) in evals.items()})
    return config


def _by_hand(context, state, source):
    """Every real eval example's embeddings and label, the model applied batch by batch."""
    config, model = context.config, context.model
    apply = jax.jit(lambda params, batch: model.apply({"params": params}, batch, train=False, aux=True)[1])
    rows = {"image": [], "text": [], "label": []}
    for batch in pipeline.eval_batches(source, config, global_batch=config.batch_size):
        keep = batch.pop("weight") > 0
        aux = apply(state.params, batch)
        for m in ("image", "text"):
            rows[m].append(np.asarray(aux["embeddings"][m])[keep])
        rows["label"].append(batch["label"][keep])
    return {k: np.concatenate(v) for k, v in rows.items()}


def test_retrieval_and_zeroshot_on_the_whole_eval_set_equal_the_model_applied_by_hand(tiny_config):
    prompts = ("a photo of {}.", "{}")
    config = _contrastive_config(tiny_config, ret=("retrieval", {}),
                                 zs=("zeroshot", dict(prompts=prompts, classes=("nil", "uno", "dos") + ("x",) * 7)))
    context, state, source = _context(config)
    built = evaluators.build(config, context)
    metrics = {k: v for e in built for k, v in e.run(state).items()}
    assert sorted(metrics) == sorted([e.metric_names() for e in built][0] + [e.metric_names() for e in built][1])
    assert source.num_examples % config.batch_size  # the last batch has padding rows

    ref = _by_hand(context, state, source)
    assert len(ref["label"]) == source.num_examples
    for k in (1, 5, 10):  # the pair from config.loss.contrastive_pair
        assert metrics[f"eval/ret/image_to_text/recall@{k}"] == _reference_recall(ref["image"], ref["text"], k)
        assert metrics[f"eval/ret/text_to_image/recall@{k}"] == _reference_recall(ref["text"], ref["image"], k)

    # Zero-shot: the class names' prompts through the tokenizer and the text tower, averaged.
    tokenizer = make_tokenizer(config.data.tokenizer)
    names = ("nil", "uno", "dos") + ("x",) * 7
    tokens = np.stack([tokenize(p.format(c), config.data.text_length, tokenizer) for c in names for p in prompts])
    apply = jax.jit(lambda params, text: context.model.apply(
        {"params": params}, {"image": np.zeros((len(text), 20, 20, 3), np.uint8), "text": text},
        train=False, aux=True)[1]["embeddings"]["text"])
    text = np.asarray(apply(state.params, tokens)).reshape(len(names), len(prompts), -1)
    text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    classes = text.mean(1) / np.linalg.norm(text.mean(1), axis=-1, keepdims=True)
    predicted = np.argmax(ref["image"] @ classes.T, axis=1)
    assert metrics["eval/zs/accuracy"] == pytest.approx(np.mean(predicted == ref["label"]), abs=1e-12)


def test_linear_probe_fits_the_fused_features_the_head_reads(tiny_config):
    config = _contrastive_config(tiny_config, probe=("linear_probe", dict(l2=1e-2)),
                                 emb=("linear_probe", dict(features="contrastive", max_train_examples=40)))
    context, state, source = _context(config)
    probe, emb = sorted(evaluators.build(config, context), key=lambda e: e.name != "probe")
    metrics = {**probe.run(state), **emb.run(state)}
    assert set(metrics) == {"eval/probe/accuracy", "eval/emb/accuracy"}

    # The features are the head's input: the head's LayerNorm + Dense on them gives the logits.
    batch = next(iter(pipeline.eval_batches(source, config, global_batch=config.batch_size)))
    gathered = probe.gather(state, [batch])
    logits = np.asarray(context.model.apply({"params": state.params}, {k: v for k, v in batch.items()}, train=False))
    head = jax.jit(lambda p, x: context.model.head.apply({"params": p["head"]}, x))
    np.testing.assert_allclose(np.asarray(head(state.params, gathered["features"])), logits, rtol=1e-5, atol=1e-6)

    # The closed form by hand: ridge as least squares on the stacked system [X; sqrt(l2 N) I].
    train = probe.gather(state, pipeline.eval_batches(probe.train_source, config, global_batch=config.batch_size))
    x, y = np.c_[train["features"], np.ones(len(train["features"]))], 2 * np.eye(10)[train["label"]] - 1
    lam = np.sqrt(1e-2 * len(x)) * np.eye(x.shape[1])
    w, *_ = np.linalg.lstsq(np.r_[x, lam], np.r_[y, np.zeros((x.shape[1], 10))], rcond=None)
    fitted = linear_probe.fit_ridge(train["features"], train["label"], 10, 1e-2)
    np.testing.assert_allclose(fitted, w, atol=1e-8)
    test = probe.gather(state, pipeline.eval_batches(source, config, global_batch=config.batch_size))
    assert len(test["label"]) == source.num_examples
    # Predicted with the fitted weights themselves: with lstsq's (equal to 1e-8), an example on a
    # class boundary could flip and fail the exact comparison.
    expected = np.mean(linear_probe.predict_ridge(fitted, test["features"]) == test["label"])
    assert metrics["eval/probe/accuracy"] == pytest.approx(expected, abs=1e-12)


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    x = np.eye(4)[labels] * 3 + rng.normal(scale=0.3, size=(200, 4))
    w = linear_probe.fit_ridge(x[:150], labels[:150], 4, 1e-3)
    assert (linear_probe.predict_ridge(w, x[150:]) == labels[150:]).all()


@pytest.mark.parametrize("kind, values, message", [
    ("retrieval", dict(pairs=(("image", "audio"),)), r"config.evals.bad.pairs=\(\('image', 'audio'\),\) need "
                                                     r"contrastive embeddings of \['audio'\]"),
    ("zeroshot", dict(modality="audio"), r"zero-shot needs contrastive embeddings of text and of modality='audio'"),
    ("linear_probe", dict(features="contrastive"), r"features='contrastive' but the model has no contrastive head"),
])
def test_bad_entries_name_the_key_to_fix(tiny_config, kind, values, message):
    config = _contrastive_config(tiny_config)
    if kind == "linear_probe":
        config.loss.contrastive, config.loss.task = "none", "classification"
    context = evaluators.Context(config, build_model(config, 10), Objective.from_config(config), None, None,
                                 {config.data.eval: sources.open_source("synthetic", "eval", config.data)})
    with pytest.raises(ValueError, match=message):  # refused before anything is compiled
        evaluators.KINDS[kind].from_config("bad", schema.evaluator(kind, **values), context)


def test_schema_checks_the_pairs_key(tiny_config):
    config = _contrastive_config(tiny_config, ret=("retrieval", dict(pairs=(("image", "image"),))))
    with pytest.raises(schema.UserError, match=r"evals.ret.pairs.*two different modalities"):
        config_lib.validate(config)
