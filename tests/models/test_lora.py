"""LoRA adapters (config.model.<modality>.lora_rank / lora_alpha / lora_targets): the parameter
tree, the identity at init, training only the adapters of a frozen tower, and the export that
merges them into the base kernels."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, TINY_OVERRIDES
from mmjax import config as config_lib
from mmjax import export, predict, pretrained, sharding, train, trainer
from mmjax.config import UserError
from mmjax.contract import AUDIO_LENGTH
from mmjax.models import layers
from mmjax.models.multimodal import build_model

ALL_TARGETS = "('q','k','v','o','mlp')"


def _names(tree) -> dict[str, tuple]:
    return {pretrained.param_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _shapes(config) -> dict[str, tuple]:
    """Parameter name -> shape, traced only (nothing compiled or computed)."""
    model = build_model(config, 10)
    batch = {k: jax.ShapeDtypeStruct(s, dt) for k, (s, dt) in trainer.batch_shapes(config, 2).items()}
    init = lambda r, b: nn.unbox(model.init({"params": r, "dropout": r}, b, train=False)["params"])  # noqa: E731
    return _names(jax.eval_shape(init, jax.eval_shape(jax.random.key, 0), batch))


def _init(config, seed: int = 0):
    model = build_model(config, 10)
    batch = {k: jnp.zeros(s, dt) for k, (s, dt) in trainer.batch_shapes(config, 2).items()}
    params = jax.jit(lambda r: model.init({"params": r, "dropout": r}, batch, train=False)["params"])(
        jax.random.key(seed))
    return model, jax.tree.map(np.asarray, nn.unbox(params))


def _batch(config, n: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch = {}
    for k, (shape, dtype) in trainer.batch_shapes(config, n).items():
        if k == AUDIO_LENGTH:
            batch[k] = np.full(shape, config.data.audio_samples, dtype)
        elif k == "label":
            continue
        elif np.dtype(dtype) == np.uint8:
            batch[k] = rng.integers(0, 256, shape).astype(dtype)
        elif np.issubdtype(np.dtype(dtype), np.integer):
            batch[k] = rng.integers(2, 100, shape).astype(dtype)  # text ids
        elif np.dtype(dtype) == np.bool_:
            batch[k] = np.ones(shape, bool)
        else:
            batch[k] = rng.normal(size=shape).astype(dtype)
    return batch


def _sharded_state(config):
    """(abstract TrainState, init_fn) as train.py builds them."""
    tx, _ = trainer.make_optimizer(config)
    shapes = trainer.batch_shapes(config, config.batch_size)
    abstract, _, init_fn = trainer.sharded_state_shapes(build_model(config, 10), tx, shapes, sharding.make_mesh(config.mesh))
    return abstract, init_fn


def _without_adapters(params):
    flat = export.flatten_params(params)
    return export.unflatten_params({k: v for k, v in flat.items() if k.rsplit("/", 1)[-1] not in layers.LORA_PARAMS})


def test_schema_lists_the_keys_and_checks_them(tiny_config):
    config = tiny_config()
    assert config.model.image.lora_rank == 0 and config.model.text.lora_alpha == 16.0
    assert tuple(config.model.audio.lora_targets) == ("q", "v")
    with pytest.raises(UserError, match="config.model.image.lora_targets"):
        tiny_config(model__image__lora_targets="('q','x')")
    with pytest.raises(UserError, match="config.model.image.lora_rank"):
        tiny_config(model__image__lora_rank=4, model__image__kind="cnn")
    with pytest.raises(UserError, match="config.model.text.lora_rank"):
        tiny_config(model__text__lora_rank=-1)


@pytest.mark.parametrize("scan", [True, False])
def test_lora_rank_zero_keeps_the_tree_and_adapters_add_only_lora_params(tiny_config, scan):
    base = _shapes(tiny_config(model__scan=scan))
    assert not any("lora" in n for n in base)
    off = _shapes(tiny_config(model__scan=scan, model__image__lora_alpha=4.0, model__image__lora_targets=ALL_TARGETS))
    assert off == base  # lora_rank=0: other lora keys change nothing

    lora = _shapes(tiny_config(model__scan=scan, model__image__lora_rank=4))
    extra = {n: s for n, s in lora.items() if n not in base}
    assert {n: lora[n] for n in base} == base
    assert extra and all(n.startswith("image/") and n.rsplit("/", 1)[-1] in layers.LORA_PARAMS for n in extra)
    assert {n.split("/")[-2] for n in extra} == {"query", "value"}  # the default targets
    lead = (1,) if scan else ()  # the 'layers' axis of a scanned stack (depth 1)
    a = next(s for n, s in extra.items() if n.endswith("query/lora_a"))
    b = next(s for n, s in extra.items() if n.endswith("query/lora_b"))
    width, heads = tiny_config().model.image.width, tiny_config().model.image.heads
    assert a == lead + (width, 4) and b == lead + (4, heads, width // heads)


@pytest.mark.parametrize("scan", [True, False])
def test_at_init_the_lora_model_is_the_base_model(tiny_config, scan):
    kw = dict(model__scan=scan, model__image__lora_rank=4, model__image__lora_targets=ALL_TARGETS,
              model__text__lora_rank=2, model__audio__lora_rank=3, model__audio__lora_targets="('k','o','mlp')")
    config = tiny_config(**kw)
    model, params = _init(config)
    base_model = build_model(tiny_config(model__scan=scan), 10)
    batch = _batch(config)
    with_lora = model.apply({"params": params}, batch, train=False)
    without = base_model.apply({"params": _without_adapters(params)}, batch, train=False)
    np.testing.assert_array_equal(np.asarray(with_lora), np.asarray(without))
    # B starts at zero; A is random
    flat = export.flatten_params(params)
    assert all(not v.any() for k, v in flat.items() if k.endswith("lora_b"))
    assert all(v.std() > 0 for k, v in flat.items() if k.endswith("lora_a"))


def test_dense_adapter_is_the_merged_kernel():
    """A nonzero adapter: x W + s (x A) B equals x (W + s A B), both in the applied and the
    weights_only (fused q/k/v) form."""
    layer = layers.dense((2, 3), ("embed", "heads", "kv"), dtype=jnp.float32, lora_rank=2, lora_alpha=5.0)
    x = jax.random.normal(jax.random.key(0), (4, 6))
    params = layer.init(jax.random.key(1), x)["params"]
    params = dict(nn.unbox(params))
    params["lora_b"] = jax.random.normal(jax.random.key(2), params["lora_b"].shape)
    merged = layers.merge_lora(params["kernel"], params["lora_a"], params["lora_b"], 5.0 / 2)
    y = layer.apply({"params": params}, x)
    np.testing.assert_allclose(y, jnp.einsum("bd,dnh->bnh", x, merged) + params["bias"], atol=1e-5)
    fused = layers.dense((2, 3), ("embed", "heads", "kv"), dtype=jnp.float32, lora_rank=2, lora_alpha=5.0,
                         weights_only=True)
    kernel, _ = fused.apply({"params": params}, x)
    np.testing.assert_allclose(kernel, merged, atol=1e-6)


# ---------------------------------------------------------------- a frozen tower + LoRA, trained and exported
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_run")
    cache = tmp_path_factory.getbasetemp() / "synthetic-cache"
    config = config_lib.load_config_file(str(ROOT / "configs" / "base.py"))
    overrides = {**TINY_OVERRIDES, "frozen": "('image',)", "model.image.lora_rank": "4",
                 "model.image.lora_targets": "('q','k','v','o','mlp')", "optim.lr": "0.01"}
    config_lib.apply_overrides(config, overrides)
    config.data.cache_dir = str(cache)
    config_lib.validate(config)
    workdir = str(root / "run")
    train.train(config, workdir)
    export.export(workdir, str(root / "E"), platforms=("cpu",), log=lambda *a: None)
    return dict(config=config, workdir=workdir, export=str(root / "E"))


def test_a_frozen_tower_trains_only_its_adapters(lora_run):
    config = lora_run["config"]
    abstract, init_fn = _sharded_state(config)
    moments = {pretrained.param_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract.opt_state)}
    image_moments = {n for n in moments if "image" in n.split("/")}
    # Adam's moments exist for the image tower's adapters and nothing else of it
    assert image_moments and all(n.rsplit("/", 1)[-1] in layers.LORA_PARAMS for n in image_moments)

    init_rng, _ = jax.random.split(jax.random.key(config.seed))
    initial = export.flatten_params(jax.device_get(init_fn(init_rng).params))
    _, params, step, _ = export.restore_params(lora_run["workdir"])
    assert step == config.total_steps
    after = export.flatten_params(params)
    image = [n for n in after if n.startswith("image/")]
    adapters = [n for n in image if n.rsplit("/", 1)[-1] in layers.LORA_PARAMS]
    for name in image:
        if name not in adapters:
            np.testing.assert_array_equal(after[name], initial[name], err_msg=name)  # base weights bit-identical
    assert all(not np.array_equal(after[n], initial[n]) for n in adapters if n.endswith("lora_b"))
    assert any(not np.array_equal(after[n], initial[n]) for n in after if n.startswith("fusion/"))


def test_merged_export_predicts_what_the_adapted_model_does(lora_run):
    config = lora_run["config"]
    folder = lora_run["export"]
    spec = json.load(open(os.path.join(folder, "export.json")))
    assert spec["config"]["model"]["image"]["lora_rank"] == 0
    assert spec["source"]["lora_merged"]["image"]["rank"] == 4
    tensors, _ = predict.read_safetensors(os.path.join(folder, "params.safetensors"))
    assert not any("lora" in n for n in tensors)

    _, params, _, _ = export.restore_params(lora_run["workdir"])
    flat = export.flatten_params(params)
    assert any(np.abs(v).max() > 0 for k, v in flat.items() if k.endswith("lora_b"))  # a real merge
    batch = _batch(config, n=5, seed=1)
    expected = build_model(config, 10).apply({"params": params}, batch, train=False)
    exported = jax.export.deserialize(bytearray(open(os.path.join(folder, "predict.jax_exported"), "rb").read()))
    specs = export.input_specs(config)
    got = exported.call({k: jnp.asarray(v) for k, v in tensors.items()},
                        {k: jnp.asarray(batch[k]) if k in batch else jnp.ones((5,), bool) for k in specs})
    np.testing.assert_allclose(np.asarray(got["logits"]), np.asarray(expected, np.float32), atol=1e-5)


def test_an_adapter_free_export_loads_into_a_lora_model(lora_run, tiny_config):
    config = tiny_config(init_from=lora_run["export"], init_from_prefix="image", model__image__lora_rank=2)
    _, init_fn = _sharded_state(config)
    state = init_fn(jax.random.key(0))
    fresh, loaded = (export.flatten_params(s.params) for s in (state, pretrained.load_into(state, config)))
    tensors, _ = predict.read_safetensors(os.path.join(lora_run["export"], "params.safetensors"))
    for name, value in loaded.items():
        if name.rsplit("/", 1)[-1] in layers.LORA_PARAMS:
            np.testing.assert_array_equal(value, fresh[name])  # adapters keep their init
        elif name.startswith("image/"):
            np.testing.assert_array_equal(value, tensors[name])
