"""What users expect of mmjax.train on a cluster: the persistent compilation cache, the
W&B writer, the profiler window and the host prefix of log lines."""
import glob
import json
import os
import sys
import types

import jax
import jax.numpy as jnp
import pytest

from mmjax import compilation_cache, metrics, train
from mmjax.config import UserError


@pytest.fixture
def jax_cache_dir():
    """Sets jax's own cache directory for one test (the test session has one), then restores it."""
    before = jax.config.jax_compilation_cache_dir
    yield lambda path: jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_compilation_cache_dir", before)


def test_compile_cache_directory_follows_the_setting(monkeypatch, jax_cache_dir):
    jax_cache_dir(None)
    monkeypatch.delenv("MMJAX_CACHE", raising=False)
    assert compilation_cache.directory("auto", "W") == os.path.join("W", "compile_cache")
    monkeypatch.setenv("MMJAX_CACHE", "/c")
    assert compilation_cache.directory("auto", "W") == "/c/compile"
    assert compilation_cache.directory("off", "W") is None and compilation_cache.directory("", "W") is None
    assert compilation_cache.directory("/mine", "W") == "/mine"
    jax_cache_dir("/jax")  # as JAX_COMPILATION_CACHE_DIR=/jax does
    assert compilation_cache.directory("auto", "W") == "/jax" and compilation_cache.directory("/mine", "W") == "/mine"


def test_compile_cache_stores_small_cpu_programs_and_restores_jax_settings(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    with compilation_cache.persistent(str(tmp_path / "cache"), "unused") as path:
        assert jax.config.jax_compilation_cache_dir == path
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
    assert os.listdir(path)  # even a program that compiles in milliseconds is kept
    assert jax.config.jax_compilation_cache_dir == before
    with compilation_cache.persistent("off", "unused") as path:
        assert path is None and jax.config.jax_compilation_cache_dir == before


class FakeWandb(types.ModuleType):
    """Stands in for the wandb package (not a test dependency): records what the writer does."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self
        return types.SimpleNamespace(log=lambda row, step: fake.logged.append((step, row)), summary={},
                                     finish=lambda: fake.finished.append(True))


def test_wandb_writer_and_profiler_window_in_a_run(tiny_config, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = tiny_config(total_steps=4, eval_every=4, checkpoint_every=4, compile_cache="off",
                         profile_steps="(1,3)", wandb__project="mmjax-test", wandb__mode="offline")
    workdir = tmp_path / "run"
    train.train(config, str(workdir))
    (init,) = fake.inits
    assert init["project"] == "mmjax-test" and init["mode"] == "offline" and init["name"] == "run"
    assert init["dir"] == str(workdir) and init["config"]["total_steps"] == 4
    assert init["id"] == (workdir / metrics.WandbWriter.ID_FILE).read_text()  # a resume goes on in the same run
    losses = [step for step, row in fake.logged if "train/loss" in row]
    assert losses == [1, 2, 3, 4] and any("eval/loss" in row for _, row in fake.logged) and fake.finished
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in rows if "train/loss" in r] == losses  # the same rows as metrics.jsonl
    # The trace TensorBoard's profile plugin reads: WORKDIR/profile/plugins/profile/<run>/<host>.xplane.pb
    traces = glob.glob(str(workdir / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_wandb_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    settings = {"project": "p", "entity": "", "name": "", "mode": "online"}
    with pytest.raises(UserError, match=r"config.wandb.project is set but wandb is not installed: "
                                        r"pip install 'mmjax\[wandb\]'"):
        metrics.WandbWriter(str(tmp_path), settings)


def test_log_lines_name_the_host_on_several_hosts(monkeypatch, capsys):
    assert metrics.host_prefix() == ""  # one process: no prefix
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert metrics.host_prefix() == "[host 1/4] "
    writer = metrics.ProgressWriter(10, prefix=metrics.host_prefix())
    writer.write(5, {"train/loss": 1.5, "eval/loss": 2.0})
    writer.note(5, "stopped early")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("[host 1/4] ") for line in lines)
