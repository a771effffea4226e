"""mmjax/flops.py: the reference workload's parameters and FLOPs, and XLA's own count."""
import pathlib

import jax
import jax.numpy as jnp
import pytest

from mmjax import config as config_lib
from mmjax import flops, sharding, train
from mmjax.models.multimodal import build_model, count_params

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(name: str, **overrides):
    config = config_lib.load_config_file(str(ROOT / "configs" / name))
    config_lib.apply_overrides(config, {k.replace("__", "."): str(v) for k, v in overrides.items()})
    config_lib.validate(config)
    return config


def param_count(config) -> int:
    model = build_model(config, 10)
    batch = {k: jnp.zeros(s, dt) for k, (s, dt) in train.batch_shapes(config, 2).items()}
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
    return count_params(jax.eval_shape(lambda: model.init(rngs, batch, train=False))["params"])


def test_bench_config_is_the_reference_model():
    config = load("bench.py")
    assert param_count(config) == 10_105_098
    assert flops.train_flops_per_example(config) == 4_949_044_224  # "about 4.95 GFLOPs"
    parts = flops.forward_flops(config)
    assert set(parts) == {"image", "text", "audio", "fusion", "head"}
    assert parts["fusion"] > parts["image"] > parts["audio"] > parts["text"] > parts["head"] > 0
    assert "4.95 GFLOPs per training example" in flops.describe(config)


def test_base_config_keeps_its_parameter_count():
    assert param_count(load("base.py")) == 318_922


def test_one_hot_lookup_counts_as_a_matmul():
    gather = flops.forward_flops(load("bench.py"))["text"]
    one_hot = flops.forward_flops(load("bench.py", model__text__lookup="one_hot"))["text"]
    assert one_hot - gather == 2 * 32 * 8192 * 256


@pytest.mark.parametrize("overrides", [
    {},  # joint fusion, transformer encoders
    {"fusion__kind": "concat"},
    {"fusion__kind": "bottleneck", "fusion__fusion_layer": 1},
    {"fusion__kind": "cross"},
    {"model__image__kind": "cnn", "model__text__kind": "lstm", "model__audio__kind": "cnn"},
])
def test_analytic_flops_agree_with_xla_cost_analysis(tiny_config, overrides):
    """XLA also counts elementwise work (norms, softmax, AdamW), so the match is loose."""
    config = tiny_config(model__scan=False, batch_size=8, **overrides)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    model = build_model(config, 10)
    tx, schedule = train.make_optimizer(config)
    abstract, shardings, _ = train.sharded_state_shapes(model, tx, train.batch_shapes(config, 8), mesh)
    step, _ = train.compile_steps(model, tx, schedule, jax.random.key(0), config, mesh, abstract, shardings)
    cost = step.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"] / 8
    ours = flops.train_flops_per_example(config)
    assert 0.6 < ours / xla < 1.6, (ours, xla)
