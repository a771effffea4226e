"""Tests for mmjax/data/tfds_source.py: a small TFDS builder prepared offline, read via grain."""

import collections
import io

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmjax import media
from mmjax.data import pipeline, sources

NAMES = ["cat", "dog", "eel"]


class MmjaxTestTiny(tfds.core.GeneratorBasedBuilder):
    """12 train / 5 test examples: a PNG image of odd size, a caption, a 16 kHz int16 waveform."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        # A builder defined outside a package builds its DatasetInfo itself.
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "img": tfds.features.Image(shape=(None, None, 3)),
            "caption": tfds.features.Text(),
            "wave": tfds.features.Tensor(shape=(None,), dtype=np.int16),
            "kind": tfds.features.ClassLabel(names=NAMES),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples(12, 0), "test": self._generate_examples(5, 100)}

    def _generate_examples(self, n, start):
        for i in range(start, start + n):
            buf = io.BytesIO()
            Image.fromarray(np.full((10, 14, 3), i % 256, np.uint8)).save(buf, format="PNG")
            yield i, {"img": buf.getvalue(), "caption": f"example {i}",
                      "wave": np.full(64 + 2 * i, 8192, np.int16), "kind": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    MmjaxTestTiny(data_dir=str(root), file_format="array_record").download_and_prepare()
    return str(root)


def _config(data_dir, features="image=img,text=caption,audio=wave,label=kind", **data):
    c = ml_collections.ConfigDict(dict(modalities=("image", "text", "audio"), seed=0,
                                       loss=dict(task="classification")))
    c.data = ml_collections.ConfigDict(dict(
        train="tfds:mmjax_test_tiny", eval="tfds:mmjax_test_tiny", image_size=8, audio_rate=8000,
        audio_samples=256, text_length=16, target_length=12, workers=0, tokenizer="bytes", image_processor="", augment=None,
        tfds=ml_collections.ConfigDict(dict(data_dir=data_dir, train_split="train",
                                            eval_split="test", features=features,
                                            audio_rate=16000)),
    ))
    c.data.update(data)
    return c


def test_tfds_source_spec_and_converted_records(data_dir):
    config = _config(data_dir)
    src = sources.open_source("tfds:mmjax_test_tiny", "train", config.data)
    assert src.num_examples == 12 and src.spec["class_names"] == NAMES
    assert src.spec["modalities"]["image"] == {"height": 8, "width": 8, "channels": 3}
    rec = src.records[0]
    assert rec["image"].shape == (8, 8, 3) and rec["image"].dtype == np.uint8
    assert rec["text"].startswith("example ") and rec["label"] in (0, 1, 2)
    i = int(rec["text"].split()[1])
    assert rec["label"] == i % 3 and (rec["image"] == i).all()
    assert len(rec["audio"]) == (64 + 2 * i) // 2  # 16 kHz -> 8 kHz
    np.testing.assert_allclose(rec["audio"][4:-4], 0.25, atol=0.02)


def test_tfds_feeds_the_pipeline_train_and_eval(data_dir):
    config = _config(data_dir)
    train = sources.open_source(config.data.train, "train", config.data)
    it = pipeline.train_batches(train, config, global_batch=4)
    batch = next(it)
    it.close()
    assert batch["image"].shape == (4, 8, 8, 3) and batch["text"].shape == (4, 16)
    assert batch["audio"].shape == (4, 256) and batch["label"].dtype == np.int32
    ev = sources.open_source(config.data.eval, "eval", config.data)
    seen = collections.Counter()
    for b in pipeline.eval_batches(ev, config, global_batch=4):
        texts = [bytes(int(t) - 2 for t in row if t).decode() for row in b["text"]]
        seen.update(t for t, w in zip(texts, b["weight"]) if w)
    assert ev.num_examples == 5 and seen == {f"example {i}": 1 for i in range(100, 105)}


def test_unmapped_names_map_to_themselves_and_errors_name_the_fix(data_dir):
    with pytest.raises(ValueError, match="no 'label' feature; map one"):
        sources.open_source("tfds:mmjax_test_tiny", "train", _config(data_dir, features="image=img").data)
    with pytest.raises(ValueError, match="maps 'text' to 'title', but .* has only the features "
                                         "caption, img, kind, wave"):
        sources.open_source("tfds:mmjax_test_tiny", "train",
                            _config(data_dir, features="text=title,label=kind").data)
    with pytest.raises(ValueError, match="cannot open tfds:nope split 'train'"):
        sources.open_source("tfds:nope", "train", _config(data_dir).data)
    only_image = sources.open_source("tfds:mmjax_test_tiny", "train",
                                     _config(data_dir, features="image=img,label=kind").data)
    assert set(only_image.spec["modalities"]) == {"image"}


def test_train_on_tfds(tiny_config, data_dir, tmp_path):
    """python -m mmjax.train with data.train/eval = 'tfds:NAME': here only the image is mapped."""
    from mmjax import train

    config = tiny_config(data__train="tfds:mmjax_test_tiny", data__eval="tfds:mmjax_test_tiny",
                         data__tfds__data_dir=data_dir, data__tfds__features="image=img,label=kind",
                         batch_size=8, total_steps=3, optim__warmup_steps=1, eval_every=3,
                         checkpoint_every=3)
    result = train.train(config, str(tmp_path / "run"))
    assert config.modalities == ("image",) and 0.0 <= result["eval/accuracy"] <= 1.0


def test_a_text_feature_maps_to_target_text_for_generate(data_dir):
    """features 'target_text=caption': stored strings, task generate, with or without a label."""
    both = sources.open_source("tfds:mmjax_test_tiny", "train",
                               _config(data_dir, features="audio=wave,label=kind,target_text=caption").data)
    assert both.spec["tasks"] == ["classification", "generate"] and both.spec["target_text"] == {"max_tokens": 0}
    rec = both.records[3]
    assert rec["target_text"].startswith("example ") and "text" not in rec
    assert rec["label"] == int(rec["target_text"].split()[1]) % 3
    alone = sources.open_source("tfds:mmjax_test_tiny", "eval",
                                _config(data_dir, features="image=img,target_text=caption").data)
    assert alone.spec["tasks"] == ["generate"] and alone.spec["num_classes"] == 0
    assert sorted(alone.records[i]["target_text"] for i in range(5)) == [f"example {i}" for i in range(100, 105)]
    assert "label" not in alone.records[0]
    config = _config(data_dir, features="image=img,target_text=caption")
    config.loss.task, config.modalities = "generate", ("image",)
    it = pipeline.train_batches(sources.open_source("tfds:mmjax_test_tiny", "train", config.data), config,
                                global_batch=4)
    batch = next(it)
    it.close()
    texts = [media.decode_target(row) for row in batch["target_tokens"]]  # cut to target_length=12: 10 bytes
    assert all(t.startswith("example ") and f"example {int(t.split()[1])}"[:10] == t for t in texts)
    assert batch["target_length"].tolist() == [len(t) + 2 for t in texts]
    with pytest.raises(ValueError, match="the target_text feature 'kind' must be a Text feature, it is ClassLabel"):
        sources.open_source("tfds:mmjax_test_tiny", "train", _config(data_dir, features="image=img,target_text=kind").data)
