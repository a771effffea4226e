"""Building blocks whose parameters and activations carry logical axis names: attention,
MLP, transformer and cross-attention blocks, scanned stacks, embeddings, conv stages.

Parameter names used here: 'embed', 'mlp', 'heads', 'kv', 'length', 'vocab' (plus
'layers', added by nn.scan). Activation names: 'act_batch', 'act_length', 'act_embed',
'act_heads', 'act_kv', 'act_mlp'. sharding.py maps both to mesh axes, so changing the
parallelism never touches this file.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Axes = tuple[str | None, ...]

JNP_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Per-block rematerialisation: None = no remat; otherwise the jax.checkpoint policy
# (a policy of None under nn.remat saves nothing and recomputes the whole block).
REMAT_POLICY = {  # config.model.remat (contract.REMAT_POLICIES) -> policy
    "none": None,
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

BLC = ("act_batch", "act_length", "act_embed")  # the activation between blocks

# LoRA (config.model.<modality>.lora_rank / lora_alpha / lora_targets): a DenseGeneral with
# lora_rank > 0 adds (lora_alpha / lora_rank) * (x A) B to x W, with parameters 'lora_a'
# [in..., rank] (random, like a kernel) and 'lora_b' [rank, out...] (zeros: the model at
# init is the base model). The rank axis has no logical name (it is small; replicated).
LORA_PARAMS = ("lora_a", "lora_b")
LORA_LAYERS = {"query": "q", "key": "k", "value": "v", "out": "o", "fc1": "mlp", "fc2": "mlp"}  # layer -> target


def lora_scale(rank: int, alpha: float) -> float:
    """The adapter's multiplier alpha / rank (the LoRA paper's: changing the rank keeps the
    update's size, so lora_alpha need not be retuned)."""
    return float(alpha) / int(rank)


def merge_lora(kernel, lora_a, lora_b, scale: float):
    """kernel + scale * A B, for numpy or jax arrays: kernel [lead..., in..., out...], lora_a
    [lead..., in..., r], lora_b [lead..., r, out...] (lead: the 'layers' axis of a scanned
    stack, or none). Returns the kernel dtype."""
    lead = lora_a.ndim + lora_b.ndim - 2 - kernel.ndim
    rank = lora_a.shape[-1]
    a = lora_a.reshape(*lora_a.shape[:lead], -1, rank)
    b = lora_b.reshape(*lora_b.shape[:lead], rank, -1)
    return (kernel + scale * (a @ b).reshape(kernel.shape)).astype(kernel.dtype)


def quick_gelu(x: Array) -> Array:
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with."""
    return x * jax.nn.sigmoid(1.702 * x)


# config.model.<modality>.activation: the MLP nonlinearity. 'gelu_tanh' (the tanh
# approximation, Flax's nn.gelu default) is what every mmjax model used before this
# option; 'gelu' is the exact erf form (BERT, ViT, Whisper), 'quick_gelu' CLIP's.
ACTIVATIONS = {
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": quick_gelu,
    "relu": nn.relu,
}
DEFAULT_LN_EPS = 1e-6  # Flax's LayerNorm epsilon, used by every model before the option existed


def resolve_dtype_name(name: str) -> str:
    """config.model.dtype -> 'float32' | 'bfloat16'; 'auto' is bfloat16 on TPU/GPU (where
    its matmuls run at several times the float32 rate) and float32 on the CPU. The config
    schema checked the name."""
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


def compute_dtype(name: str) -> Any:
    """Maps config.model.dtype to a jnp dtype."""
    return JNP_DTYPES[resolve_dtype_name(name)]


def constrain(x: Array, names: Axes) -> Array:
    """Sharding hint for an activation (a no-op outside nn.logical_axis_rules)."""
    return nn.with_logical_constraint(x, names)


def boxed(init: Any, names: Axes) -> Any:
    """An initializer whose parameter carries logical axis names."""
    return nn.with_logical_partitioning(init, names)


class DenseGeneral(nn.Module):
    """Dense layer contracting the last `n_in` input dims, with float32 params whose
    logical names are `kernel_axes` (input dims, then output dims); the bias is named
    by the output dims.

    Written here rather than using nn.DenseGeneral: that one initialises a flat kernel
    and reshapes it after boxing, which applies the 3-name sharding constraint to a 2D
    array and fails under a mesh.
    """

    features: tuple[int, ...]
    kernel_axes: Axes
    n_in: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32
    weights_only: bool = False  # return (kernel, bias or None) in dtype instead of applying them
    lora_rank: int = 0  # > 0: a LoRA adapter of this rank (see LORA_PARAMS)
    lora_alpha: float = 16.0

    @nn.compact
    def __call__(self, x: Array) -> Array | tuple[Array, Array | None]:
        n_in, n_out = self.n_in, len(self.features)
        if len(self.kernel_axes) != n_in + n_out:
            raise ValueError(f"kernel_axes {self.kernel_axes} need {n_in + n_out} names")
        in_shape = x.shape[x.ndim - n_in :]
        init = nn.initializers.lecun_normal(
            in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out))
        )
        kernel = self.param(
            "kernel", boxed(init, self.kernel_axes), in_shape + tuple(self.features), jnp.float32
        )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias",
                boxed(nn.initializers.zeros_init(), self.kernel_axes[n_in:]),
                tuple(self.features),
                jnp.float32,
            ).astype(self.dtype)
        lora = self._lora(in_shape) if self.lora_rank else None
        if self.weights_only:
            if lora is not None:  # the effective kernel; gradients reach A and B through it
                kernel = merge_lora(kernel, *lora, lora_scale(self.lora_rank, self.lora_alpha))
            return kernel.astype(self.dtype), bias
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        x = x.astype(self.dtype)
        y = jax.lax.dot_general(x, kernel.astype(self.dtype), (contract, ((), ())))
        if lora is not None:
            a, b = (w.astype(self.dtype) for w in lora)
            low = jax.lax.dot_general(x, a, (contract, ((), ()))) * lora_scale(self.lora_rank, self.lora_alpha)
            y = y + jax.lax.dot_general(low.astype(self.dtype), b, (((low.ndim - 1,), (0,)), ((), ())))
        return y if bias is None else y + bias

    def _lora(self, in_shape: tuple[int, ...]) -> tuple[Array, Array]:
        """The adapter's A [in..., rank] (LeCun normal over the input dims) and B [rank, out...]
        (zeros), named like the kernel's input / output dims with an unnamed rank axis."""
        n_in, rank = self.n_in, int(self.lora_rank)
        init_a = nn.initializers.lecun_normal(in_axis=tuple(range(n_in)), out_axis=n_in)
        a = self.param("lora_a", boxed(init_a, self.kernel_axes[:n_in] + (None,)), in_shape + (rank,), jnp.float32)
        b = self.param("lora_b", boxed(nn.initializers.zeros_init(), (None,) + self.kernel_axes[n_in:]),
                       (rank,) + tuple(self.features), jnp.float32)
        return a, b


def dense(
    features: int | Sequence[int],
    kernel_axes: Axes,
    *,
    dtype: Any,
    n_in: int = 1,
    use_bias: bool = True,
    weights_only: bool = False,
    lora_rank: int = 0,
    lora_alpha: float = 16.0,
    name: str | None = None,
) -> DenseGeneral:
    """A DenseGeneral layer; `features` may be one int or a tuple of output dims."""
    features = (features,) if isinstance(features, int) else tuple(features)
    return DenseGeneral(features, tuple(kernel_axes), n_in, use_bias, dtype, weights_only,
                        lora_rank=lora_rank, lora_alpha=lora_alpha, name=name)


def layer_norm(dtype: Any, name: str | None = None, eps: float = DEFAULT_LN_EPS) -> nn.LayerNorm:
    """LayerNorm over 'embed' (Flax computes its statistics in at least float32)."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=boxed(nn.initializers.ones_init(), ("embed",)),
        bias_init=boxed(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    """Hyper-parameters of a transformer stack (hashable, so modules can hold it)."""

    width: int
    depth: int
    heads: int
    mlp: int
    dropout: float = 0.0
    dtype: str = "float32"
    remat: str = "none"
    scan: bool = False
    final_norm: bool = True  # LayerNorm after the last block
    attention: str = "dpa"  # 'dpa' | 'einsum' (resolved from config.model.attention)
    unroll: bool = False  # scanned stacks: unroll the loop (same parameters; resolved from config.model.unroll)
    norm: str = "pre"  # LayerNorm placement: 'pre' (x + f(LN(x))) | 'post' (LN(x + f(x)), BERT)
    ln_eps: float = DEFAULT_LN_EPS  # epsilon of every LayerNorm in the stack
    activation: str = "gelu_tanh"  # MLP nonlinearity, a key of ACTIVATIONS
    attn_bias: bool = True  # biases on the attention's q/k/v/out projections
    causal: bool = False  # each position attends only to itself and earlier ones (CLIP's text tower)
    lora_rank: int = 0  # LoRA adapters (0: none) on the projections lora_targets names (LORA_LAYERS)
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, sub: Any, model: Any, where: str, *, lora: bool = False) -> "TransformerSpec":
        """Reads width/depth/heads/mlp/final_norm from `sub` (e.g. config.model.image) and
        dropout/dtype/remat/scan/attention/unroll from `model` (config.model); `where` names
        `sub` in error messages. lora=True (the modality towers, whose `sub` has the keys)
        also reads lora_rank/lora_alpha/lora_targets. The schema checked each key; this
        checks that they fit together as a transformer."""
        adapters = {}
        if lora and int(sub.lora_rank) > 0:
            adapters = dict(lora_rank=int(sub.lora_rank), lora_alpha=float(sub.lora_alpha),
                            lora_targets=tuple(str(t) for t in sub.lora_targets))
        spec = cls(
            width=int(sub.width),
            depth=int(sub.depth),
            heads=int(sub.heads),
            mlp=int(sub.mlp),
            dropout=float(model.dropout),
            dtype=str(model.dtype),
            remat=str(model.remat),
            scan=bool(model.scan),
            final_norm=bool(sub.final_norm),
            attention=attention_kind(str(model.attention)),
            unroll=resolve_unroll(str(model.unroll)),
            norm=str(sub.norm),
            ln_eps=float(sub.ln_eps),
            activation=str(sub.activation),
            attn_bias=bool(sub.attn_bias),
            causal=bool(sub.causal),
            **adapters,
        )
        if spec.width <= 0 or spec.depth <= 0 or spec.heads <= 0 or spec.mlp <= 0:
            raise ValueError(f"{where}: width, depth, heads and mlp must be positive")
        if spec.width % spec.heads:
            raise ValueError(
                f"{where}.width={spec.width} must be divisible by {where}.heads={spec.heads}"
            )
        return spec


def attention_mask(key_mask: Array, query_mask: Array | None = None) -> Array:
    """Boolean mask [B, 1, T, S] (True = attend) from padding masks [B, S] / [B, T].

    A row with no valid key (all-padding input, or a padded query) would be a softmax
    over nothing; fused kernels can return NaN there. Such rows attend to every key
    instead: finite values at positions that are padding anyway.
    """
    key_mask = key_mask.astype(bool)
    if query_mask is None:
        mask = key_mask[:, None, None, :]
    else:
        mask = query_mask.astype(bool)[:, None, :, None] & key_mask[:, None, None, :]
    empty_row = ~jnp.any(mask, axis=-1, keepdims=True)
    return mask | empty_row


def causal_mask(length: int, key_mask: Array | None = None) -> Array:
    """Boolean mask [B or 1, 1, T, T]: query t attends to keys s <= t (that are valid)."""
    allowed = jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
    if key_mask is None:
        return allowed
    mask = key_mask.astype(bool)[:, None, None, :] & allowed
    empty_row = ~jnp.any(mask, axis=-1, keepdims=True)  # as in attention_mask: finite, never read
    return mask | (empty_row & allowed)


# config.model.attention: how the attention core is computed (both give the same numbers).
#   'dpa'    jax.nn.dot_product_attention: fused kernels on GPU (cuDNN) and TPU;
#   'einsum' heads-major batched matmuls + float32 softmax, written out: on XLA:CPU its
#            score matmul runs ~3x faster than dpa's token-major one;
#   'auto'   'einsum' when JAX's default backend is the CPU, else 'dpa'.
# (The names are the schema's choices for config.model.attention, which checks them.)
def attention_kind(name: str) -> str:
    """Resolves config.model.attention ('auto' by the platform) to 'dpa' or 'einsum'."""
    if name == "auto":
        return "einsum" if jax.default_backend() == "cpu" else "dpa"
    return name


# config.model.unroll: whether a scanned layer stack (model.scan) runs as a loop or
# unrolled. Parameters are stacked ('layers' axis) either way, so checkpoints move freely
# between the two. Unrolled lets XLA:CPU schedule across layers (~15% faster steps
# there); on TPU/GPU the loop compiles faster and saves memory.
def resolve_unroll(name: str) -> bool:
    """config.model.unroll ('auto' | 'yes' | 'no') -> bool; 'auto' unrolls when JAX's
    default backend is the CPU."""
    return name == "yes" or (name == "auto" and jax.default_backend() == "cpu")


def einsum_attention(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
    """softmax(q k^T / sqrt(H)) v with q [B, T, N, H], k and v [B, S, N, H], mask
    [B, 1, T, S] (True = attend); heads moved ahead of positions so both matmuls are
    plain batched matmuls, logits and softmax in float32. Returns [B, T, N, H]."""
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # [B, N, T|S, H]
    return jnp.swapaxes(heads_major_attention(q, k, v, mask), 1, 2)


def heads_major_attention(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
    """einsum_attention on heads-major operands: q [..., T, H], k and v [..., S, H] ->
    [..., T, H] with any leading axes ([B, N] here; a KV cache's [B * N]), so a cache kept
    in this layout is read without a transpose; mask broadcasts to [..., T, S]."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("...th,...sh->...ts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("...ts,...sh->...th", probs, v)


class MultiHeadAttention(nn.Module):
    """Multi-head attention: jax.nn.dot_product_attention (fused by XLA/cuDNN) or the
    written-out einsum form (kind='einsum', faster on CPU); see attention_kind."""

    heads: int
    dtype: Any = jnp.float32
    kind: str = "dpa"
    use_bias: bool = True  # biases on the q/k/v/out projections
    lora_rank: int = 0  # adapters on the projections lora_targets names ('q', 'k', 'v', 'o')
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ()

    def _rank(self, name: str) -> int:
        return self.lora_rank if LORA_LAYERS[name] in self.lora_targets else 0

    @nn.compact
    def __call__(self, x: Array, kv: Array, mask: Array | None) -> Array:
        """x: queries [B, T, D]; kv: keys/values [B, S, D]; mask: [B, 1, T, S] bool."""
        width = x.shape[-1]
        head_dim = width // self.heads
        qkv_axes = ("embed", "heads", "kv")
        heads_act = ("act_batch", "act_length", "act_heads", "act_kv")

        def project(name: str, inputs: Array) -> Array:
            layer = dense((self.heads, head_dim), qkv_axes, dtype=self.dtype, use_bias=self.use_bias,
                          lora_rank=self._rank(name), lora_alpha=self.lora_alpha, name=name)
            return constrain(layer(inputs), heads_act)

        if x is kv:  # self-attention: one matmul against the three kernels side by side
            q, k, v = self._fused_qkv(x, head_dim, qkv_axes, heads_act)
        else:
            q, k, v = project("query", x), project("key", kv), project("value", kv)
        if self.kind == "einsum":
            out = einsum_attention(q, k, v, mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        out = constrain(out, heads_act)
        return dense(width, ("heads", "kv", "embed"), n_in=2, dtype=self.dtype, use_bias=self.use_bias,
                     lora_rank=self._rank("out"), lora_alpha=self.lora_alpha, name="out")(out)

    def _fused_qkv(self, x: Array, head_dim: int, axes: Axes, heads_act: Axes) -> tuple[Array, Array, Array]:
        """q, k, v [B, T, N, H] from one [D, 3, N, H] matmul. The parameters stay the
        separate 'query', 'key' and 'value' kernels (checkpoints do not change); one
        larger matmul keeps the cores busier than three small ones, forward and backward."""
        weights = [
            dense((self.heads, head_dim), axes, dtype=self.dtype, use_bias=self.use_bias, weights_only=True,
                  lora_rank=self._rank(n), lora_alpha=self.lora_alpha, name=n)(x)
            for n in ("query", "key", "value")
        ]
        kernel = jnp.stack([w for w, _ in weights], axis=1)
        y = jnp.einsum("btd,dcnh->cbtnh", x.astype(self.dtype), kernel)
        if weights[0][1] is not None:
            y = y + jnp.stack([b for _, b in weights])[:, None, None]
        return tuple(constrain(y[i], heads_act) for i in range(3))


class MLP(nn.Module):
    """Two-layer MLP (GELU by default; see ACTIVATIONS), hidden dimension sharded as 'mlp'."""

    hidden: int
    dropout: float = 0.0
    deterministic: bool = True
    dtype: Any = jnp.float32
    activation: str = "gelu_tanh"
    lora_rank: int = 0  # adapters on fc1 and fc2 (the caller passes 0 unless 'mlp' is a target)
    lora_alpha: float = 16.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        lora = dict(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha)
        h = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="fc1", **lora)(x)
        h = constrain(ACTIVATIONS[self.activation](h), ("act_batch", "act_length", "act_mlp"))
        h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
        return dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2", **lora)(h)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + Attn(LN(x)), then x + MLP(LN(x)); with spec.norm='post'
    (BERT): LN(x + Attn(x)), then LN(x + MLP(x)). The parameters are named alike.

    Takes and returns (x, None) and keeps `deterministic` as an attribute so the same
    class works in a Python loop, under nn.remat and as an nn.scan body.
    """

    spec: TransformerSpec
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array | None) -> tuple[Array, None]:
        dtype = compute_dtype(self.spec.dtype)
        drop = nn.Dropout(self.spec.dropout, deterministic=self.deterministic)
        spec = self.spec
        attn = MultiHeadAttention(spec.heads, dtype=dtype, kind=spec.attention, use_bias=spec.attn_bias,
                                  lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha,
                                  lora_targets=spec.lora_targets, name="attn")
        mlp_rank = spec.lora_rank if "mlp" in spec.lora_targets else 0
        mlp = MLP(spec.mlp, spec.dropout, self.deterministic, dtype, spec.activation,
                  lora_rank=mlp_rank, lora_alpha=spec.lora_alpha, name="mlp")
        ln_attn, ln_mlp = layer_norm(dtype, "ln_attn", spec.ln_eps), layer_norm(dtype, "ln_mlp", spec.ln_eps)
        x = constrain(x, BLC)
        if spec.norm == "post":
            x = ln_attn(x + drop(attn(x, x, mask)))
            x = constrain(ln_mlp(x + drop(mlp(x))), BLC)
            return x, None
        h = ln_attn(x)
        x = x + drop(attn(h, h, mask))
        x = constrain(x + drop(mlp(ln_mlp(x))), BLC)
        return x, None


def repeat_layers(
    block: type[nn.Module],
    spec: TransformerSpec,
    depth: int,
    carry: Any,
    *args: Any,
    train: bool,
    **block_kwargs: Any,
) -> Any:
    """Applies `depth` copies of `block(spec, deterministic=..., **block_kwargs)` to
    `carry`; `args` (masks and the like) are passed unchanged to every copy.

    Call it inside a compact method: under spec.scan the copies are one nn.scan named
    'layers' whose parameters gain a leading logical axis 'layers'; otherwise they are
    'layer_0', 'layer_1', ... The block takes (carry, *args) and returns (carry, None).
    With spec.remat != 'none' each block is rematerialised with that policy.
    """
    if spec.remat != "none":
        # CSE prevention is only needed outside scan (scan already blocks it).
        block = nn.remat(block, policy=REMAT_POLICY[spec.remat], prevent_cse=not spec.scan)
    if spec.scan:
        scanned = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args),
            length=depth,
            unroll=depth if spec.unroll else 1,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        carry, _ = scanned(spec, deterministic=not train, name="layers", **block_kwargs)(carry, *args)
        return carry
    for i in range(depth):
        carry, _ = block(spec, deterministic=not train, name=f"layer_{i}", **block_kwargs)(carry, *args)
    return carry


class TransformerStack(nn.Module):
    """`spec.depth` TransformerBlocks (scanned or looped, optionally rematerialised),
    then an optional final LayerNorm.

    Under scan the block parameters are stacked as 'layers/...' with a leading
    logical axis 'layers'; in a loop they are 'layer_0', 'layer_1', ...
    """

    spec: TransformerSpec
    final_norm: bool = True

    @nn.compact
    def __call__(self, x: Array, key_mask: Array | None = None, *, train: bool) -> Array:
        """x: [B, T, D]; key_mask: [B, T] bool (True = real token) or None."""
        spec = self.spec
        if spec.causal:
            mask = causal_mask(x.shape[1], key_mask)
        else:
            mask = None if key_mask is None else attention_mask(key_mask)
        x = x.astype(compute_dtype(spec.dtype))
        x = repeat_layers(TransformerBlock, spec, spec.depth, x, mask, train=train)
        if self.final_norm:
            x = layer_norm(compute_dtype(spec.dtype), "ln_final", spec.ln_eps)(x)
        return constrain(x, BLC)


class CrossAttentionBlock(nn.Module):
    """Queries x [B, T, D] attend to inputs kv [B, S, D], then an MLP (both pre-LN,
    residual). Rows whose key_mask is all False get no attention update at all, so a
    query never reads padding."""

    spec: TransformerSpec
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, kv: Array, key_mask: Array) -> Array:
        dtype = compute_dtype(self.spec.dtype)
        drop = nn.Dropout(self.spec.dropout, deterministic=self.deterministic)
        x = constrain(x.astype(dtype), BLC)
        q = layer_norm(dtype, "ln_query")(x)
        kv = layer_norm(dtype, "ln_kv")(constrain(kv.astype(dtype), BLC))
        h = MultiHeadAttention(self.spec.heads, dtype=dtype, kind=self.spec.attention, name="attn")(q, kv, attention_mask(key_mask))
        has_keys = jnp.any(key_mask, axis=-1)[:, None, None]
        x = x + drop(h) * has_keys.astype(dtype)
        h = layer_norm(dtype, "ln_mlp")(x)
        h = MLP(self.spec.mlp, self.spec.dropout, self.deterministic, dtype, name="mlp")(h)
        return constrain(x + drop(h), BLC)


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of x [B, N, D] over its valid positions (mask [B, N]), computed in float32
    and returned in x's dtype; a row with no valid position gives zeros."""
    m = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
    return (total / jnp.maximum(jnp.sum(m, axis=1), 1.0)).astype(x.dtype)


class ConvStage(nn.Module):
    """Conv2D (kernel x kernel, 'VALID', ReLU) -> MaxPool (pool x pool, stride pool),
    channels last, like Keras' Conv2D + MaxPooling2D defaults. The kernel is named
    (None, None, None, 'embed') and the bias ('embed',)."""

    features: int
    kernel: int
    pool: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [B, H, W, C] -> [B, (H - kernel + 1) // pool, (W - kernel + 1) // pool, features]."""
        shape = (self.kernel, self.kernel, x.shape[-1], self.features)
        init = nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3)
        kernel = self.param("kernel", boxed(init, (None, None, None, "embed")), shape, jnp.float32)
        bias = self.param("bias", boxed(nn.initializers.zeros_init(), ("embed",)), (self.features,), jnp.float32)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = nn.relu(y + bias.astype(self.dtype))
        window = (self.pool, self.pool)
        return nn.max_pool(y, window, strides=window, padding="VALID")


def conv_output_size(size: int, kernel: int, pool: int, stages: int) -> int:
    """Spatial size after `stages` ConvStages (0 or less: the input is too small)."""
    for _ in range(stages):
        size = (size - kernel + 1) // pool
    return size


class PositionEmbedding(nn.Module):
    """Adds a learned table [max_length, D] ('length', 'embed'); shorter inputs use its
    first rows, so a sequence's valid positions do not depend on how much padding
    follows them."""

    max_length: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [B, L, D] with L <= max_length."""
        length, width = x.shape[-2], x.shape[-1]
        if length > self.max_length:
            raise ValueError(
                f"input has {length} positions but the position table holds "
                f"{self.max_length}; raise the matching config.data size"
            )
        table = self.param(
            "embedding",
            boxed(nn.initializers.normal(stddev=0.02), ("length", "embed")),
            (self.max_length, width),
            jnp.float32,
        )
        # Broadcast to the activation's shape and sharding first, so the table is
        # all-gathered once rather than resharded against the batch-sharded input.
        pos = jnp.broadcast_to(table[:length].astype(x.dtype), x.shape)
        return x + constrain(pos, BLC)


class TokenEmbedding(nn.Module):
    """Token ids [B, L] -> vectors [B, L, D] from a ('vocab', 'embed') table.

    Looked up as a one-hot matmul by default: with a vocabulary sharded over 'tensor' a
    gather would be resharded by full rematerialisation, while the matmul partitions
    cleanly (and costs 2 * vocab * D flops per token, small for byte-level vocabularies).
    lookup='gather' (config.model.text.lookup) reads rows instead: the better choice for
    a large vocabulary that is not split over 'tensor'.
    """

    vocab_size: int
    width: int
    dtype: Any = jnp.float32
    lookup: str = "one_hot"  # or 'gather': an indexed read, cheaper for large vocabularies

    @nn.compact
    def __call__(self, ids: Array) -> Array:
        table = self.param(
            "embedding",
            boxed(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.vocab_size, self.width),
            jnp.float32,
        )
        if self.lookup == "gather":
            return constrain(jnp.take(table.astype(self.dtype), ids, axis=0), BLC)
        one_hot = jax.nn.one_hot(ids, self.vocab_size, dtype=self.dtype)
        return constrain(one_hot @ table.astype(self.dtype), BLC)
