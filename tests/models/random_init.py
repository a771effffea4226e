"""Cheap random parameters for model tests (imported by the tests in this folder)."""
import jax
import numpy as np


def random_variables(module, *args, seed=0, **kwargs):
    """The module's variables (boxed, as init returns them) filled with cheap numpy
    random values: compiling a real init costs seconds per model on a CPU, and these
    tests need some parameters, not a good initialisation. LayerNorm scales are near 1,
    weights ~ N(0, 1/fan_in), everything else ~ N(0, 0.1)."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        if jax.tree_util.keystr(path).endswith("['scale'].value"):
            value = 1.0 + 0.1 * noise
        elif leaf.ndim >= 2:
            value = noise / np.sqrt(leaf.shape[-2])
        else:
            value = 0.1 * noise
        return np.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)
