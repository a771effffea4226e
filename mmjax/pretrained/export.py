"""Starting a run from an export, and freezing parts of the model (mmjax.pretrained re-exports these).

config.init_from=E (a folder written by `python -m mmjax.export`) replaces the freshly
initialised parameters with the export's, at step 0 only (a resumed run keeps its
checkpoint). config.init_from_prefix limits that to one sub-tree, such as 'image' (the
image encoder); '' loads every parameter. config.frozen lists parameter-path prefixes
('image', 'text/pos_embed', ...) whose parameters never change: the optimizer gives them
zero updates and keeps no state (no Adam moments) for them, except LoRA adapters
('.../lora_a', '.../lora_b'; config.model.<modality>.lora_rank): a frozen prefix above them
freezes the base weights only, so frozen=('image',) with model.image.lora_rank=8 trains just
the image tower's adapters. A prefix that itself names an adapter freezes it.

Parameter paths are the export's names: '/'-joined keys of the parameter tree, e.g.
'image/patch_embed/kernel'. A prefix matches whole path components.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
import optax
from flax.core.meta import AxisMetadata

from mmjax import predict as predict_lib
from mmjax.config import UserError
from mmjax.models.layers import LORA_PARAMS
from mmjax.pretrained import towers

FROZEN, TRAINED = "frozen", "trained"


def param_name(path) -> str:
    """A tree path -> 'image/patch_embed/kernel' (dict keys only, so boxed trees name alike)."""
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def matches(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix.rstrip("/") + "/")


def is_adapter(name: str) -> bool:
    """Whether a parameter path ('image/.../attn/query/lora_a') is a LoRA adapter's."""
    return name.rsplit("/", 1)[-1] in LORA_PARAMS


def freezes(name: str, prefix: str) -> bool:
    """Whether config.frozen's `prefix` freezes parameter `name`: it matches, and an adapter
    is frozen only by a prefix that reaches it (ends in lora_a or lora_b)."""
    return matches(name, prefix) and (not is_adapter(name) or is_adapter(prefix.rstrip("/")))


def _top_names(names) -> str:
    return ", ".join(sorted({n.split("/")[0] for n in names}))


# ---------------------------------------------------------------- frozen parameters
def frozen_labels(params, prefixes: Sequence[str]):
    """A tree like params of 'frozen' / 'trained'; UserError if a prefix matches nothing."""
    names = [param_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    for prefix in prefixes:
        if not prefix or not any(matches(n, prefix) for n in names):
            raise UserError(f"config.frozen: {prefix!r} matches no parameter; parameter paths start "
                            f"with {_top_names(names)} (e.g. {names[0]!r})")
    # A boxed parameter (init time: nn.LogicallyPartitioned) gets one label for the whole box,
    # so the optimizer state holds a bare MaskedNode there, not a box around one.
    return jax.tree_util.tree_map_with_path(
        lambda p, _: FROZEN if any(freezes(param_name(p), f) for f in prefixes) else TRAINED, params,
        is_leaf=lambda x: isinstance(x, AxisMetadata))


def freeze(tx: optax.GradientTransformation, frozen: Sequence[str]) -> optax.GradientTransformation:
    """tx for the trained parameters; zero updates and no optimizer state for the frozen ones."""
    frozen = tuple(frozen)
    if not frozen:
        return tx
    return optax.multi_transform({TRAINED: tx, FROZEN: optax.set_to_zero()},
                                 lambda params: frozen_labels(params, frozen))


# ---------------------------------------------------------------- loading an export
def read_export_params(export_dir: str) -> dict[str, np.ndarray]:
    """{name: numpy array} of an export (numpy only: no model code, no Orbax)."""
    try:
        spec = predict_lib.read_spec(export_dir)
        tensors, _ = predict_lib.read_safetensors(os.path.join(export_dir, spec["params_file"]))
    except (ValueError, OSError) as e:
        raise UserError(f"config.init_from={export_dir!r}: {e}") from None
    return tensors


def load_into(state, config):
    """state with config.init_from's parameters (those under config.init_from_prefix) in place
    of the fresh ones, placed with the state's own shardings; unchanged if init_from is ''."""
    if any(config.model[m].init_from for m in config.modalities):
        try:
            state = towers.load_params(state, config)
        except ValueError as e:
            raise UserError(f"config.model.<modality>.init_from: {e}") from None
    export_dir = config.init_from
    if not export_dir:
        return state
    prefix = str(config.init_from_prefix)
    tensors = read_export_params(export_dir)
    chosen = {k: v for k, v in tensors.items() if matches(k, prefix)}
    if not chosen:
        raise UserError(f"config.init_from_prefix={prefix!r} matches no parameter of {export_dir}; "
                        f"its parameter paths start with {_top_names(tensors)}")
    leaves = {param_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
    for name, value in sorted(chosen.items()):
        if name not in leaves:
            raise UserError(f"config.init_from: the export's parameter {name!r} has no counterpart in "
                            f"this model (its paths start with {_top_names(leaves)}); check the model "
                            "config or narrow config.init_from_prefix")
        if tuple(value.shape) != tuple(leaves[name].shape):
            raise UserError(f"config.init_from: parameter {name!r} has shape {list(value.shape)} in "
                            f"{export_dir} but {list(leaves[name].shape)} in this model; use the "
                            "export's model config for that part or narrow config.init_from_prefix")
    # LoRA adapters a (merged, adapter-free) export lacks keep their fresh init (B = 0).
    missing = sorted(n for n in leaves if matches(n, prefix) and n not in chosen and not is_adapter(n))
    if missing:
        raise UserError(f"config.init_from: this model's parameter {missing[0]!r} is not in "
                        f"{export_dir}; narrow config.init_from_prefix")

    def place(path, leaf):
        value = chosen.get(param_name(path))
        if value is None:
            return leaf
        value = np.asarray(value).astype(leaf.dtype)  # a bfloat16 export into float32 params
        # Every process holds the whole array; each device takes its own shard of it.
        return jax.make_array_from_callback(value.shape, leaf.sharding, lambda index: value[index])

    return state.replace(params=jax.tree_util.tree_map_with_path(place, state.params))
