"""mmjax/export.py and mmjax/pretrained.py: the export folder, its errors, and runs that start
from an export (config.init_from, config.frozen)."""
import json
import os

import jax
import numpy as np
import pytest

from export_run import exported_run, tiny_config
from mmjax import export, predict, pretrained, sharding, train, trainer
from mmjax.config import UserError
from mmjax.models.multimodal import build_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return exported_run(tmp_path_factory)


def test_export_from_empty_workdir_is_a_clear_error(tmp_path, capsys):
    # export.main is what python -m mmjax.export runs; an exception other than a UserError
    # would escape here and fail the test, as a traceback would in a process of its own.
    (tmp_path / "empty").mkdir()
    status = export.main([f"--workdir={tmp_path / 'empty'}", f"--out={tmp_path / 'E'}"])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("mmjax.export")]
    assert status == 2 and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("mmjax.export: error: --workdir=") and "has no checkpoints" in lines[0]
    assert "Traceback" not in stderr and not os.path.exists(tmp_path / "E")


def test_export_of_a_missing_step_names_the_steps_there(run, tmp_path, capsys):
    assert export.main([f"--workdir={run['workdir']}", "--step=4", f"--out={tmp_path / 'E'}"]) == 2
    assert "mmjax.export: error: --step=4: " in capsys.readouterr().err
    assert export.main([f"--workdir={run['workdir']}", f"--out={run['export']}"]) == 2
    assert "already holds an export; pass --overwrite" in capsys.readouterr().err


def test_export_folder_holds_params_function_and_preprocessing_spec(run, tmp_path):
    folder = run["export"]
    assert sorted(os.listdir(folder)) == ["export.json", "params.safetensors", "predict.jax_exported"]
    assert not [f for f in os.listdir(os.path.dirname(folder)) if f.startswith(".")]  # no temp left
    spec = json.load(open(os.path.join(folder, "export.json")))
    config = run["config"]
    assert spec["format"] == predict.FORMAT and spec["modalities"] == ["image", "text", "audio"]
    assert spec["class_names"][:3] == ["zero", "one", "two"] and spec["platforms"] == ["cpu", "cuda", "tpu"]
    assert spec["inputs"]["image"] == {"shape": [None, 16, 16, 3], "dtype": "uint8"}
    assert spec["inputs"]["text"]["shape"] == [None, config.data.text_length]
    assert spec["inputs"]["present_audio"] == {"shape": [None], "dtype": "bool"}
    assert spec["preprocess"]["audio"]["sample_rate"] == 8000
    assert spec["preprocess"]["audio"]["spectrogram"]["n_mels"] == config.model.audio.n_mels
    assert spec["preprocess"]["text"]["tokenizer"] == "bytes" and spec["source"]["step"] == 6
    assert spec["config"]["model"]["image"]["kind"] == "vit"

    _, params, _, _ = export.restore_params(run["workdir"])
    tensors, _ = predict.read_safetensors(os.path.join(folder, "params.safetensors"))
    flat = export.flatten_params(params)
    assert set(tensors) == set(flat) and {k.split("/")[0] for k in tensors} == {"image", "text", "audio", "fusion", "head"}
    for name, value in flat.items():
        np.testing.assert_array_equal(tensors[name], value)

    exported = jax.export.deserialize(bytearray(open(os.path.join(folder, "predict.jax_exported"), "rb").read()))
    assert set(exported.platforms) == {"cpu", "cuda", "tpu"}
    assert "b" in str(exported.in_avals[-1].shape)  # the batch size is symbolic

    # --overwrite replaces it, atomically
    export.export(run["workdir"], str(tmp_path / "E"), platforms=("cpu",), log=lambda *a: None)
    before = open(tmp_path / "E" / "params.safetensors", "rb").read()
    export.export(run["workdir"], str(tmp_path / "E"), platforms=("cpu",), overwrite=True, log=lambda *a: None)
    assert open(tmp_path / "E" / "params.safetensors", "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["E"]


# ---------------------------------------------------------------- init_from and frozen
def _fresh_state(config):
    model = build_model(config, 10)
    tx, _ = trainer.make_optimizer(config)
    mesh = sharding.make_mesh(config.mesh)
    abstract, _, init_fn = trainer.sharded_state_shapes(model, tx, trainer.batch_shapes(config, config.batch_size), mesh)
    return abstract, init_fn(jax.random.key(1))


def _flat(tree):
    return {pretrained.param_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_init_from_loads_only_the_prefix_onto_the_sharded_state(run, tmp_path):
    config = tiny_config(run["config"].data.cache_dir, init_from=run["export_bf16"], init_from_prefix="image",
                         mesh__fsdp=2, mesh__data=-1)
    _, state = _fresh_state(config)
    loaded = pretrained.load_into(state, config)
    tensors, _ = predict.read_safetensors(os.path.join(run["export_bf16"], "params.safetensors"))
    before, after = _flat(state.params), _flat(loaded.params)
    image = [n for n in after if n.startswith("image/")]
    assert image and all(after[n].dtype == np.float32 for n in image)
    for name in image:
        np.testing.assert_array_equal(after[name], tensors[name].astype(np.float32))
    for name in after:
        if not name.startswith("image/"):
            np.testing.assert_array_equal(after[name], before[name])
    leaves = {pretrained.param_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(loaded.params)}
    originals = {pretrained.param_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
    assert all(leaves[n].sharding == originals[n].sharding for n in leaves)


@pytest.mark.parametrize("overrides, message", [
    ({"model__image__width": 32}, "config.init_from: parameter 'image/"),
    ({"init_from_prefix": "imag"}, "config.init_from_prefix='imag' matches no parameter"),
    ({"model__image__kind": "cnn", "init_from_prefix": "image"}, "has no counterpart in this model"),
])
def test_init_from_mismatches_are_errors_naming_the_parameter(run, overrides, message):
    config = tiny_config(run["config"].data.cache_dir, init_from=run["export"], **overrides)
    _, state = _fresh_state(config)
    with pytest.raises(UserError, match=message):
        pretrained.load_into(state, config)


def test_frozen_prefix_that_matches_nothing_is_an_error(run):
    config = tiny_config(run["config"].data.cache_dir, frozen="('imag',)")
    with pytest.raises(UserError, match="config.frozen: 'imag' matches no parameter"):
        _fresh_state(config)


def test_fine_tuning_from_an_exported_image_encoder_with_it_frozen(run, tmp_path):
    """A new run (other seed) starts from the export's image encoder and freezes it: the encoder
    keeps the export's values bitwise, has no optimizer state, and the rest of the model trains."""
    config = tiny_config(run["config"].data.cache_dir, init_from=run["export"], init_from_prefix="image",
                         frozen="('image',)", seed=3)
    abstract, _ = _fresh_state(config)
    moments = [pretrained.param_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract.opt_state)]
    # Names look like 'trained/head/kernel' (Adam's mu and nu of the 'trained' group).
    assert moments and not any("image" in n.split("/") for n in moments)
    assert any("head" in n.split("/") for n in moments)

    workdir = str(tmp_path / "finetune")
    train.train(config, workdir)
    _, params, _, _ = export.restore_params(workdir)
    tensors, _ = predict.read_safetensors(os.path.join(run["export"], "params.safetensors"))
    after = _flat(params)
    for name in (n for n in after if n.startswith("image/")):
        np.testing.assert_array_equal(after[name], tensors[name])
    assert any(not np.array_equal(after[n], tensors[n]) for n in after if n.startswith("fusion/"))
    losses = [r["train/loss"] for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
              if "train/loss" in r]
    assert len(losses) == config.total_steps and len(set(losses)) > 1
