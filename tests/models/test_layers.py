"""Tests for mmjax/models/layers.py: masks, attention, stacks (scan/loop, remat), dtypes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import layers
from mmjax.models.layers import TransformerSpec, TransformerStack

B, T, D = 2, 6, 16


def spec(**overrides) -> TransformerSpec:
    values = dict(width=D, depth=2, heads=2, mlp=32)
    values.update(overrides)
    return TransformerSpec(**values)


def inputs(seed: int = 0):
    x = jax.random.normal(jax.random.key(seed), (B, T, D))
    key_mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=bool)
    return x, key_mask


def test_attention_mask_shape_and_empty_rows():
    key_mask = jnp.array([[True, False, True], [False, False, False]])
    mask = layers.attention_mask(key_mask)
    assert mask.shape == (2, 1, 1, 3) and mask.dtype == bool
    np.testing.assert_array_equal(mask[0, 0, 0], [True, False, True])
    np.testing.assert_array_equal(mask[1, 0, 0], [True, True, True])  # no valid key
    query_mask = jnp.array([[True, False], [True, True]])
    mask = layers.attention_mask(key_mask, query_mask)
    assert mask.shape == (2, 1, 2, 3)
    assert bool(jnp.all(jnp.any(mask, axis=-1)))  # every row attends somewhere


def test_attention_ignores_masked_keys_and_stays_finite():
    x, key_mask = inputs()
    mha = layers.MultiHeadAttention(heads=2)
    params = mha.init(jax.random.key(1), x, x, layers.attention_mask(key_mask))
    out = mha.apply(params, x, x, layers.attention_mask(key_mask))
    garbage = x.at[0, 4:].set(100.0)  # change only the masked keys/values of row 0
    out2 = mha.apply(params, x, garbage, layers.attention_mask(key_mask))
    np.testing.assert_allclose(out, out2, atol=1e-5)
    empty = layers.attention_mask(jnp.zeros((B, T), dtype=bool))
    assert bool(jnp.all(jnp.isfinite(mha.apply(params, x, x, empty))))


def test_scan_and_loop_have_same_params_and_outputs():
    x, key_mask = inputs()
    loop, scan = TransformerStack(spec()), TransformerStack(spec(scan=True))
    p_loop = loop.init(jax.random.key(0), x, key_mask, train=False)["params"]
    p_scan = scan.init(jax.random.key(0), x, key_mask, train=False)["params"]
    count = lambda p: sum(leaf.size for leaf in jax.tree_util.tree_leaves(p))
    assert count(p_loop) == count(p_scan)
    # Stacking the loop's layers reproduces the scanned layout and its outputs.
    unboxed = nn.unbox(p_loop)
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), unboxed["layer_0"], unboxed["layer_1"])
    p_scan2 = {"layers": stacked, "ln_final": unboxed["ln_final"]}
    assert jax.tree_util.tree_structure(p_scan2) == jax.tree_util.tree_structure(nn.unbox(p_scan))
    out_loop = loop.apply({"params": unboxed}, x, key_mask, train=False)
    out_scan = scan.apply({"params": p_scan2}, x, key_mask, train=False)
    np.testing.assert_allclose(out_loop, out_scan, atol=1e-5)


def test_scanned_params_have_leading_layers_axis():
    x, key_mask = inputs()
    params = TransformerStack(spec(scan=True)).init(jax.random.key(0), x, key_mask, train=False)
    specs = nn.get_partition_spec(params)["params"]
    assert tuple(specs["layers"]["attn"]["query"]["kernel"]) == ("layers", "embed", "heads", "kv")
    assert tuple(specs["layers"]["mlp"]["fc1"]["kernel"]) == ("layers", "embed", "mlp")
    assert tuple(specs["ln_final"]["scale"]) == ("embed",)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_policies_match_no_remat(scan):
    x, key_mask = inputs()
    params = TransformerStack(spec(scan=scan)).init(jax.random.key(0), x, key_mask, train=False)

    def loss_and_grads(remat):
        model = TransformerStack(spec(scan=scan, remat=remat))
        loss = lambda p: jnp.mean(model.apply(p, x, key_mask, train=False) ** 2)
        return jax.jit(jax.value_and_grad(loss))(params)

    ref_loss, ref_grads = loss_and_grads("none")
    for remat in ("full", "dots"):
        loss, grads = loss_and_grads(remat)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
    x, key_mask = inputs()
    model = TransformerStack(spec(dtype="bfloat16"))
    params = model.init(jax.random.key(0), x, key_mask, train=False)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    out = model.apply(params, x, key_mask, train=False)
    assert out.dtype == jnp.bfloat16 and out.shape == (B, T, D)
    assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))


def test_dropout_only_in_training():
    x, key_mask = inputs()
    model = TransformerStack(spec(dropout=0.5, scan=True))
    params = model.init(jax.random.key(0), x, key_mask, train=False)
    eval1 = model.apply(params, x, key_mask, train=False)
    eval2 = model.apply(params, x, key_mask, train=False)
    np.testing.assert_array_equal(eval1, eval2)
    train1 = model.apply(params, x, key_mask, train=True, rngs={"dropout": jax.random.key(1)})
    train2 = model.apply(params, x, key_mask, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(train1, eval1) and not np.allclose(train1, train2)


def test_position_embedding_prefix_and_too_long():
    pos = layers.PositionEmbedding(max_length=4)
    params = pos.init(jax.random.key(0), jnp.zeros((1, 4, D)))
    table = nn.unbox(params)["params"]["embedding"]
    np.testing.assert_allclose(pos.apply(params, jnp.zeros((1, 3, D)))[0], table[:3])
    with pytest.raises(ValueError, match="position table holds 4"):
        pos.apply(params, jnp.zeros((1, 5, D)))


def test_spec_validation_messages():
    """How the keys fit together is checked here; each key alone by the config schema."""
    class Sub:
        width, depth, heads, mlp, final_norm = 10, 1, 4, 8, True
        norm, ln_eps, activation, attn_bias, causal = "pre", 1e-6, "gelu_tanh", True, False

    class Model:
        dropout, dtype, remat, scan, attention, unroll = 0.0, "float32", "none", False, "auto", "auto"

    with pytest.raises(ValueError, match=r"config.model.text.width=10 must be divisible"):
        TransformerSpec.from_config(Sub, Model, "config.model.text")
    Sub.width = 8
    assert TransformerSpec.from_config(Sub, Model, "config.model.text").attention == "einsum"  # CPU


def test_einsum_attention_matches_dot_product_attention():
    x, key_mask = inputs()
    mask = layers.attention_mask(key_mask)
    dpa = layers.MultiHeadAttention(heads=2, kind="dpa")
    params = dpa.init(jax.random.key(1), x, x, mask)
    einsum = layers.MultiHeadAttention(heads=2, kind="einsum")
    for kv in (x, x + 0.5):  # self-attention (fused QKV matmul) and separate keys/values
        np.testing.assert_allclose(einsum.apply(params, x, kv, mask), dpa.apply(params, x, kv, mask), atol=1e-5)
    out = einsum.apply(params, x, x, layers.attention_mask(jnp.zeros((B, T), dtype=bool)))
    assert bool(jnp.all(jnp.isfinite(out)))


def test_fused_qkv_equals_three_projections():
    x, _ = inputs()
    mha = layers.MultiHeadAttention(heads=2)
    params = mha.init(jax.random.key(1), x, x, None)
    params = jax.tree.map(lambda p: p + 0.1, nn.unbox(params))  # non-zero biases
    np.testing.assert_allclose(mha.apply(params, x, x, None), mha.apply(params, x, x + 0.0, None), atol=1e-5)


def test_attention_and_unroll_choices_resolve_by_platform():
    assert layers.attention_kind("auto") == "einsum"  # the tests run on CPU
    assert layers.attention_kind("dpa") == "dpa"
    assert layers.resolve_unroll("auto") is True and layers.resolve_unroll("no") is False


def test_auto_settings_pick_bfloat16_fused_attention_and_loops_on_accelerators(monkeypatch):
    assert layers.compute_dtype("auto") == jnp.float32  # the tests run on CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert layers.compute_dtype("auto") == jnp.bfloat16
    assert layers.attention_kind("auto") == "dpa" and layers.resolve_unroll("auto") is False
    assert layers.compute_dtype("float32") == jnp.float32


def test_unrolled_scan_has_the_same_params_and_outputs():
    x, key_mask = inputs()
    looped, unrolled = TransformerStack(spec(scan=True)), TransformerStack(spec(scan=True, unroll=True))
    params = looped.init(jax.random.key(0), x, key_mask, train=False)
    assert jax.tree.map(jnp.shape, unrolled.init(jax.random.key(0), x, key_mask, train=False)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(unrolled.apply(params, x, key_mask, train=False),
                               looped.apply(params, x, key_mask, train=False), atol=1e-5)


def test_token_lookup_by_gather_equals_one_hot():
    ids = jnp.array([[2, 5, 0], [7, 7, 1]])
    one_hot = layers.TokenEmbedding(10, 4)
    params = one_hot.init(jax.random.key(0), ids)
    gather = layers.TokenEmbedding(10, 4, lookup="gather")
    np.testing.assert_allclose(gather.apply(params, ids), one_hot.apply(params, ids), atol=1e-6)
