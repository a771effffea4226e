"""Every test runs on CPU with 8 fake devices, so meshes like (2, 2, 2) work."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pathlib  # noqa: E402

import pytest  # noqa: E402

from mmjax import config as config_lib  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent

# configs/base.py shrunk to test size: a few hundred examples, one layer per stack.
TINY_OVERRIDES = {
    "total_steps": "6",
    "batch_size": "16",
    "log_every": "1",
    "eval_every": "3",
    "checkpoint_every": "3",
    "optim.warmup_steps": "2",
    "data.synthetic.num_train": "128",
    "data.synthetic.num_eval": "40",
    "model.image.depth": "1",
    "model.text.depth": "1",
    "model.audio.depth": "1",
    "fusion.depth": "1",
}


@pytest.fixture
def tiny_args():
    """The same tiny run as command-line arguments; append more to override them."""
    return ["--config=configs/base.py", *(f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items())]


@pytest.fixture
def tiny_config(tmp_path_factory):
    """A factory: configs/base.py at test size, cached synthetic data, extra overrides."""
    cache = tmp_path_factory.getbasetemp() / "synthetic-cache"

    def make(**overrides):
        config = config_lib.load_config_file(str(ROOT / "configs" / "base.py"))
        config_lib.apply_overrides(config, {**TINY_OVERRIDES, **{k.replace("__", "."): str(v) for k, v in overrides.items()}})
        config.data.cache_dir = str(cache)
        config_lib.validate(config)
        return config

    return make
