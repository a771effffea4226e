"""configs/seed.py: the seed model's parameter count, layer by layer, against the
formulas Keras uses for its layers (computed here from the shapes, independently of
mmjax), and the count its docstring states."""
import math
import pathlib
import re

import jax
import numpy as np
import optax
import pytest

from mmjax import config as config_lib
from mmjax import trainer
from mmjax.models.multimodal import build_model

ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_CLASSES = 10


# Keras layer parameter formulas.
def conv2d(kernel, channels_in, filters):
    return kernel * kernel * channels_in * filters + filters


def embedding(vocab, dim):
    return vocab * dim


def lstm(input_dim, units):
    return 4 * (units * (input_dim + units) + units)


def dense(inputs, units):
    return inputs * units + units


def pooled(size, kernel=3, pool=2):  # 'valid' Conv2D then MaxPooling2D
    return (size - kernel + 1) // pool


def count(tree):
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def test_seed_parameter_count_matches_keras_formulas():
    config = config_lib.load_config_file(str(ROOT / "configs" / "seed.py"))
    model = build_model(config, NUM_CLASSES)
    shapes = trainer.batch_shapes(config, 2)
    dummy = {k: jax.ShapeDtypeStruct(s, dt) for k, (s, dt) in shapes.items()}
    params = jax.eval_shape(lambda b: model.init(jax.random.key(0), b, train=False), dummy)["params"]

    d = config.data
    frames = math.ceil(d.audio_samples / config.model.audio.hop)  # spectrogram frames (16)
    image_flat = pooled(d.image_size) ** 2 * 32
    audio_flat = pooled(frames) * pooled(config.model.audio.n_mels) * 32
    expected = {
        "image": conv2d(3, 3, 32),
        "text": embedding(258, 64) + lstm(64, 64),
        "audio": conv2d(3, 1, 32),
        "head": dense(image_flat + 64 + audio_flat, NUM_CLASSES),
    }
    assert (image_flat, audio_flat) == (1568, 3360)
    assert {k: count(params[k]) for k in expected} == expected
    assert count(params.get("fusion", {})) == 0  # plain concatenation
    total = count(params)
    assert total == sum(expected.values()) == 100_682

    text = (ROOT / "configs" / "seed.py").read_text()
    assert re.search(r"10 classes: ([\d,]+)", text).group(1) == f"{total:,}"


def test_seed_optimizer_is_plain_keras_adam():
    """optim.kind='adam': updates equal optax.adam with Keras' defaults, at a constant lr."""
    config = config_lib.load_config_file(str(ROOT / "configs" / "seed.py"))
    assert config.optim.kind == "adam"
    tx, schedule = trainer.make_optimizer(config)
    reference = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-7)
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    state, ref_state = tx.init(params), reference.init(params)
    for step in range(3):
        # Large gradients: AdamW's clipping, decay or warmup would all show.
        grads = jax.tree.map(lambda p: 1e3 * rng.normal(size=p.shape).astype(np.float32), params)
        updates, state = tx.update(grads, state, params)
        expected, ref_state = reference.update(grads, ref_state, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), updates, expected)
        params = optax.apply_updates(params, updates)
        assert float(schedule(step * 1000)) == 1e-3


def test_optimizer_kind_is_checked():
    config = config_lib.load_config_file(str(ROOT / "configs" / "base.py"))
    assert config.optim.kind == "adamw"
    config_lib.apply_overrides(config, {"optim.kind": "sgd"})
    with pytest.raises(config_lib.UserError, match=r"config.optim.kind: 'sgd' is not one of adamw, adam"):
        config_lib.validate(config)
