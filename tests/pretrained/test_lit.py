"""configs/lit.py on a tiny SigLIP checkpoint: a few steps train the text tower and the
contrastive head while the frozen image tower stays exactly the checkpoint's."""
import json
import shutil

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from conftest import ROOT
from mmjax import config as config_lib
from mmjax import export, train
from mmjax.pretrained import hf
from parity import fixture

# The synthetic data's byte tokens (ids up to 257): the copy's token table gets that many rows.
BYTE_VOCAB = 258


def _siglip_with_byte_vocab(directory) -> str:
    """The SigLIP fixture with its token table padded to BYTE_VOCAB rows (small random ones), so
    the synthetic data's byte ids fit; every other tensor is the fixture's."""
    shutil.copytree(fixture("siglip"), directory)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    name = "text_model.embeddings.token_embedding.weight"
    tensors = load_file(str(directory / "model.safetensors"))
    table = tensors[name]
    extra = np.random.default_rng(0).normal(0, 0.02, (BYTE_VOCAB - table.shape[0], table.shape[1]))
    tensors[name] = np.concatenate([table, extra.astype(table.dtype)])
    save_file(tensors, str(directory / "model.safetensors"))
    config["text_config"]["vocab_size"] = BYTE_VOCAB
    config_file.write_text(json.dumps(config))
    return str(directory)


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_lit_trains_the_text_side_of_a_frozen_image_tower(tmp_path, tmp_path_factory):
    checkpoint = _siglip_with_byte_vocab(tmp_path / "siglip")
    config = config_lib.load_config_file(f"{ROOT / 'configs' / 'lit.py'}:hf:{checkpoint}")
    config_lib.apply_overrides(config, {
        "total_steps": "3", "batch_size": "8", "log_every": "1", "eval_every": "3", "checkpoint_every": "3",
        "optim.warmup_steps": "1", "optim.lr": "1e-2", "data.synthetic.num_train": "64",
        "data.synthetic.num_eval": "16", "data.image_size": "32", "data.text_length": "16"})
    config.data.cache_dir = str(tmp_path_factory.getbasetemp() / "synthetic-cache")
    config_lib.validate(config)
    assert config.frozen == ("image",) and config.loss.contrastive == "sigmoid" and config.loss.task == "none"
    metrics = train.train(config, str(tmp_path / "run"))
    assert np.isfinite(metrics["eval/contrastive_loss"])
    assert config.loss.contrastive_head == "siglip"  # both towers from the checkpoint: its head
    _, params, step, _ = export.restore_params(str(tmp_path / "run"))
    assert step == 3
    for name, value in _flat(hf.load(checkpoint, "image", image_size=32)[1]).items():
        np.testing.assert_array_equal(_flat(params["image"])[name], value)  # frozen: the checkpoint's, bitwise
    text = _flat(params["text"])
    changed = [n for n, v in _flat(hf.load(checkpoint, "text")[1]).items() if not np.array_equal(text[n], v)]
    assert len(changed) > len(text) // 2  # the text tower trained
    assert 0 < abs(float(params["contrastive"]["bias"]) + 3.0) < 0.1  # the checkpoint's logit bias (-3), trained
