"""Shared by the parity tests: the fixtures, and an mmjax encoder built from a loaded
checkpoint's config values (imported by the tests in this folder)."""
import os

import jax
import numpy as np
from flax.core import meta

import inputs
from mmjax import config as config_lib
from mmjax.models.multimodal import ENCODERS

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
BASE_CONFIG = os.path.join(HERE, "..", "..", "configs", "base.py")
IMAGE_TOL, TEXT_TOL, AUDIO_TOL = 1e-4, 1e-4, 1e-3


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


_RAW: dict = {}


def raw_inputs(tmp_path_factory) -> dict:
    """{'image': PNG path, 'audio': WAV path, 'texts': JSON path}: inputs.py's files, written
    once per test process into its temporary folder (not committed)."""
    base = str(tmp_path_factory.getbasetemp())
    if base not in _RAW:
        _RAW[base] = inputs.write(str(tmp_path_factory.mktemp("inputs")))
    return _RAW[base]


def reference(name: str) -> dict:
    with np.load(os.path.join(fixture(name), "reference.npz")) as f:
        return dict(f)


def build(modality: str, values: dict, *, scan: bool = True, **data):
    """The encoder config.model.<modality> = values['model'] describes (float32), with
    config.data from values['data'] and the keyword overrides."""
    config = config_lib.load_config_file(BASE_CONFIG)
    config.model.dtype = "float32"
    config.model.scan = scan
    sub = config.model[modality]
    for key, value in values["model"].items():
        sub[key] = value
    sub.init_from = "hf:test"
    for key, value in {**values["data"], **data}.items():
        config.data[key] = value
    return ENCODERS[modality][sub.kind].from_config(config)


def assert_same_tree(module, params, *args, **kwargs):
    """The loaded params have exactly the names and shapes the module initialises."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
    abstract = meta.unbox(abstract)
    want = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    got = {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    assert got == want


def close(actual, expected, tol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = float(np.max(np.abs(actual - expected)))
    assert err <= tol, f"max abs difference {err:.2e} > {tol:.0e}"
    return err
