"""mmjax/hardware.py: the peak table, the config override and the cached CPU measurement."""
import json

import ml_collections
import pytest

from mmjax import hardware


@pytest.mark.parametrize("kind, dtype, tflops", [
    ("TPU v4", "bfloat16", 275), ("TPU v5 lite", "bfloat16", 197), ("TPU v5p", "float32", 459),
    ("TPU v6 lite", "bfloat16", 918), ("NVIDIA H100 80GB HBM3", "bfloat16", 989),
    ("NVIDIA H200", "float32", 494), ("NVIDIA A100-SXM4-40GB", "bfloat16", 312),
])
def test_table_peaks(kind, dtype, tflops):
    assert hardware.table_peak(kind, dtype) == pytest.approx(tflops * 1e12)


def test_unknown_kind_has_no_peak():
    assert hardware.table_peak("Quantum Abacus 9000") is None


def config(peak_tflops=0.0, cache_dir=""):
    return ml_collections.ConfigDict(dict(peak_tflops=peak_tflops, model=dict(dtype="float32"),
                                          data=dict(cache_dir=cache_dir)))


def test_config_override_wins():
    peak = hardware.peak_flops_per_device(config(peak_tflops=2.5))
    assert peak.flops == 2.5e12 and peak.source == "config.peak_tflops"


def test_cpu_peak_is_measured_once_then_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda n, *a, **k: calls.append(n) or 1e11)
    peak = hardware.peak_flops_per_device(config(cache_dir=str(tmp_path)))
    assert peak.flops == pytest.approx(1e11 / 8)  # the host's peak shared by conftest's 8 CPU devices
    assert "measured" in peak.source and calls
    calls.clear()
    assert hardware.peak_flops_per_device(config(cache_dir=str(tmp_path))).flops == peak.flops
    assert not calls  # read from the cache
    assert list(json.load(open(tmp_path / "peak_flops.json")).values()) == [1e11]
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda n, *a, **k: 5e10)
    assert hardware.cpu_host_peak(str(tmp_path), refresh=True) == 1e11  # a slower re-measure keeps the best


def test_real_matmul_measurement_is_positive():
    assert hardware.measure_matmul_flops(64, repeats=1) > 0
