"""Tests for the fusion cores: shapes, masking, sharding on a 2x2x2 mesh, and MBT's
reduction to late fusion."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from mmjax import config as config_lib
from mmjax import sharding
from mmjax.models import fusion as fusion_lib

from random_init import random_variables

B, WIDTH = 4, 16
KINDS = sorted(fusion_lib.FUSIONS)


def fusion_config(kind, **fusion):
    values = dict(kind=kind, width=WIDTH, depth=2, heads=2, mlp=32, pool="mean",
                  fusion_layer=1, num_bottlenecks=2, num_latents=4)
    values.update(fusion)
    config = config_lib.defaults()
    config.update(dict(model=dict(dtype="float32", remat="none", scan=False, dropout=0.0), fusion=values))
    return config


def make_core(kind, **fusion):
    config = fusion_config(kind, **fusion)
    return fusion_lib.FUSIONS[kind].from_config(config)


def features(seed=0):
    """Three modalities with different token counts and widths; text has padding."""
    rng = np.random.default_rng(seed)
    text_mask = np.ones((B, 5), bool)
    text_mask[0, 3:] = False
    text_mask[2, 1:] = False
    return {
        "image": (jnp.asarray(rng.normal(size=(B, 4, WIDTH)), jnp.float32), jnp.ones((B, 4), bool)),
        "text": (jnp.asarray(rng.normal(size=(B, 5, 8)), jnp.float32), jnp.asarray(text_mask)),
        "audio": (jnp.asarray(rng.normal(size=(B, 6, WIDTH)), jnp.float32), jnp.ones((B, 6), bool)),
    }


def init_apply(core, feats):
    variables = random_variables(core, feats, train=False)
    return variables, jax.jit(lambda v, f: core.apply(v, f, train=False))


@pytest.fixture(scope="module", params=KINDS)
def built(request):
    core = make_core(request.param)
    feats = features()
    variables, apply = init_apply(core, feats)
    return request.param, core, feats, variables, apply


def test_output_shape_and_finite(built):
    kind, _, feats, variables, apply = built
    out = apply(variables, feats)
    width = 32 if kind == "concat" else WIDTH  # concat ends in fusion.mlp hidden units
    assert out.shape == (B, width) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_masked_tokens_and_absent_modalities_are_ignored(built):
    """Garbage in masked positions, or in a modality absent for an example (mask all
    False), never changes the output; a present modality's content does."""
    _, _, feats, variables, apply = built
    reference = apply(variables, feats)
    text, text_mask = feats["text"]
    garbage = dict(feats, text=(jnp.where(text_mask[..., None], text, 50.0), text_mask))
    np.testing.assert_allclose(apply(variables, garbage), reference, atol=1e-5)

    audio, audio_mask = feats["audio"]
    absent = audio_mask.at[1].set(False)  # example 1 has no audio
    without = apply(variables, dict(feats, audio=(audio, absent)))
    changed = apply(variables, dict(feats, audio=(audio.at[1].set(7.0), absent)))
    np.testing.assert_allclose(changed, without, atol=1e-5)
    assert not np.allclose(without[1], reference[1], atol=1e-4)  # audio did matter
    np.testing.assert_allclose(without[0], reference[0], atol=1e-5)  # other rows untouched


def test_every_param_has_logical_names_and_shards_on_mesh(built):
    """On a 2x2x2 mesh heads shard over 'tensor'; sharded outputs match unsharded."""
    kind, core, feats, variables, apply = built
    specs = nn.get_partition_spec(variables)
    is_spec = lambda s: isinstance(s, PartitionSpec)  # noqa: E731
    for spec, leaf in zip(jax.tree.leaves(specs, is_leaf=is_spec), jax.tree.leaves(nn.unbox(variables))):
        assert len(spec) == leaf.ndim and any(n is not None for n in spec), (spec, leaf.shape)
    reference = apply(variables, feats)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), sharding.MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        placed = jax.device_put(variables, sharding.logical_shardings(variables, mesh))
        feats_placed = jax.device_put(feats, jax.sharding.NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
        out = jax.jit(lambda v, f: core.apply(v, f, train=False))(placed, feats_placed)
    np.testing.assert_allclose(out, reference, atol=1e-5)
    if kind != "concat":
        query = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(placed)
                 if "['query']['kernel']" in jax.tree_util.keystr(path)]
        assert query and all(q.sharding.spec[-2] == "tensor" for q in query)


def _only(feats, keep):
    """The features with every modality but `keep` absent."""
    return {m: (x, mask & (m == keep)) for m, (x, mask) in feats.items()}


def test_bottleneck_at_full_depth_is_late_fusion():
    """fusion_layer == depth: no bottleneck, the output is the mean of what each
    modality gives alone; with fusion_layer < depth the modalities interact."""
    feats = features()
    variables, apply = init_apply(make_core("bottleneck", depth=1, fusion_layer=1), feats)
    assert "bottleneck" not in variables["params"]
    alone = [apply(variables, _only(feats, m)) for m in feats]
    np.testing.assert_allclose(apply(variables, feats), np.mean(alone, axis=0), atol=1e-5)

    # Two layers: the first writes each modality into the bottleneck, the second reads it.
    variables, apply = init_apply(make_core("bottleneck", depth=2, fusion_layer=0), feats)
    assert variables["params"]["bottleneck"].value.shape == (2, WIDTH)
    alone = [apply(variables, _only(feats, m)) for m in feats]
    assert not np.allclose(apply(variables, feats), np.mean(alone, axis=0), atol=1e-3)


def test_bottleneck_scan_and_loop_have_the_same_params():
    feats = features()
    loop = make_core("bottleneck", fusion_layer=0)
    scan = loop.clone(spec=dataclasses.replace(loop.spec, scan=True, remat="full"))
    v_loop, v_scan = (jax.eval_shape(lambda: c.init(jax.random.key(0), feats, train=False)) for c in (loop, scan))
    count = lambda v: sum(x.size for x in jax.tree.leaves(v))  # noqa: E731
    assert count(v_loop) == count(v_scan) > 0
    layers_spec = nn.get_partition_spec(v_scan)["params"]["fusion_layers"]["layers"]
    assert layers_spec["image"]["attn"]["query"]["kernel"][0] == "layers"


def test_concat_flatten_and_plain_concatenation():
    feats = features()
    core = make_core("concat", pool="flatten", depth=0)
    variables, apply = init_apply(core, feats)
    out = apply(variables, feats)
    assert out.shape == (B, 4 * WIDTH + 5 * 8 + 6 * WIDTH) and not variables
    text, mask = feats["text"]
    np.testing.assert_allclose(out[:, 4 * WIDTH: 4 * WIDTH + 40], (text * mask[..., None]).reshape(B, -1))


@pytest.mark.parametrize(
    "kind, key, value, message",
    [
        ("bottleneck", "fusion_layer", 3, r"config.fusion.fusion_layer=3 must be in \[0, config.fusion.depth=2\]"),
    ],
)
def test_config_errors_name_the_key(kind, key, value, message):
    with pytest.raises(ValueError, match=message):
        make_core(kind, **{key: value})
