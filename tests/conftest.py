"""Every test runs on CPU with 8 fake devices, so meshes like (2, 2, 2) work."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session, shared by the xdist workers and
# every subprocess they start (they inherit the environment): the tests train the same tiny
# programs over and over, in process and in fresh processes, and a cached executable is the
# one a fresh compile would give. Made once by the process that starts pytest, removed at its
# exit, so no run sees another run's entries. A test can still point a run elsewhere.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="mmjax-tests-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    # The train and eval steps of the tiny runs compile in about a second on an idle CPU.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
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


def pytest_collection_modifyitems(config, items):
    """pyproject.toml runs xdist with --dist loadgroup: the tests that share a costly fixture
    (a module-scoped one, or export_run's trained-and-exported run, cached per process) go to
    one worker together, so it is built once instead of once on each worker; the other tests
    are handed out one by one. Groups go first, largest first."""
    for item in items:
        module = item.getparent(pytest.Module)
        if module is None:
            continue
        if hasattr(module.obj, "exported_run"):
            group = "exported_run"
        elif any(d.scope == "module" and d.baseid == module.nodeid
                 for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs):
            group = module.nodeid
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))
