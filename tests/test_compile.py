"""AOT fit checks for TPU topologies on this CPU machine (skipped where libtpu is missing)."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (pip install -e '.[tpu]')")


def compile_cli(*args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.run([sys.executable, "-m", "mmjax.compile", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@needs_libtpu
def test_base_config_fits_a_small_slice():
    result = compile_cli("--config=configs/base.py", "--topology=v5e:2x2")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "topology v5e:2x2: 4 x TPU v5 lite, mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in out
    assert "parameters            318,922" in out
    assert "FITS" in out and "of 16.00 GiB HBM" in out
    assert "FLOPs / step / device" in out


@needs_libtpu
def test_too_big_for_the_chip_says_so():
    # 64 MiB of HBM would be plenty for this model's weights but not with a batch of
    # 4096 long audio clips per chip: the report must say it does not fit.
    result = compile_cli("--config=configs/base.py", "--topology=v5e:2x2", "--config.batch_size=16384",
                         "--config.data.audio_samples=65536")
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "DOES NOT FIT" in result.stdout


def test_compile_usage_error():
    result = compile_cli("--config=configs/base.py")
    assert result.returncode == 2 and "usage: python -m mmjax.compile" in result.stderr


@needs_libtpu
def test_compile_mesh_error_names_the_config():
    result = compile_cli("--config=configs/base.py", "--topology=v5e:2x2", "--config.mesh.tensor=3")
    assert result.returncode == 2 and "config.mesh" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu is installed")
def test_compile_without_libtpu_says_how_to_install_it():
    result = compile_cli("--config=configs/base.py", "--topology=v5e:2x2")
    assert result.returncode == 2
    assert "libtpu is not installed: pip install -e '.[tpu]'" in result.stderr


@needs_libtpu
@pytest.mark.pod
def test_pod_config_fits_v5e_256():
    result = compile_cli("--config=configs/pod_v5e_256.py", "--topology=v5e:16x16", timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "256 x TPU v5 lite" in result.stdout and "FITS" in result.stdout
