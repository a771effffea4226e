"""A checkpoint's preprocessing in the data side (issue 12 item 2): --image_from records the
processor's resize in spec.json, a run whose image tower wants another resize is one clear
error, a checkpoint tokenizer pads with its own id (and pickles for grain workers), and a text
tower that looks for another padding id is one error naming the key."""
import json
import pathlib
import pickle

import numpy as np
import pytest
from PIL import Image

from mmjax import config as config_lib
from mmjax import media
from mmjax.data import build, codec, pipeline, sources
from mmjax.pretrained import towers

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "pretrained" / "fixtures"
CLIP, VIT, BERT = (f"hf:{FIXTURES / name}" for name in ("clip", "vit", "bert"))


def test_image_from_resizes_as_the_processor_and_a_mismatch_is_one_error(tmp_path):
    Image.fromarray(np.arange(40 * 56 * 3, dtype=np.uint8).reshape(40, 56, 3)).save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "label": "x"}) + "\n")
    spec = build.build(str(tmp_path / "m.jsonl"), str(tmp_path / "ds"), image_from=CLIP, workers=1,
                       progress=False, log=lambda *_: None)
    image = spec["modalities"]["image"]
    assert (image["height"], image["resize"]) == (32, {"method": "shortest_edge", "resample": "bicubic",
                                                       "edge_ratio": 1.0})
    source = sources.load_directory(str(tmp_path / "ds"))
    stored = codec.decode(source.records[0])["image"]
    want = media.load_image(str(tmp_path / "a.png"), 32, media.image_resize(CLIP))  # shorter side 32, centre crop
    np.testing.assert_array_equal(stored, want)

    config = config_lib.defaults()
    config.data.image_size = 32
    config.data.image_processor = CLIP
    sources.check_spec(source.spec, config.data, ("image",))  # as built
    config.data.image_processor = VIT  # stretch, bilinear
    with pytest.raises(ValueError, match=r"resized with hf:.*clip .* rebuild the data with .* --image_from=hf:.*vit"):
        sources.check_spec(source.spec, config.data, ("image",))
    config.data.image_processor = ""
    with pytest.raises(ValueError, match="rebuild the data with python -m mmjax.data.build no --image_from"):
        sources.check_spec(source.spec, config.data, ("image",))


def test_a_pretrained_tower_names_the_data_preprocessing(tiny_config):
    config = tiny_config(modalities="('image','text')", model__image__depth=2, model__image__init_from=VIT,
                         model__text__depth=2, model__text__init_from=BERT, data__text_length=16)
    towers.configure(config)
    assert (config.data.image_processor, config.data.tokenizer) == (VIT, BERT)
    config = tiny_config(modalities="('image','text')", model__text__depth=2, model__text__init_from=BERT,
                         data__text_length=16, data__tokenizer=CLIP)
    with pytest.raises(ValueError, match=r"config.data.tokenizer='hf:.*clip' but the text tower hf:.*bert brings its own"):
        towers.configure(config)


def test_a_checkpoint_tokenizer_pads_with_its_own_id_and_keeps_its_end_token():
    clip = media.make_tokenizer(CLIP)
    assert clip.pad_id == clip.eos_id == 79 and not clip.offset
    ids = media.tokenize("a photo of a cat " * 4, 6, pickle.loads(pickle.dumps(clip)))  # as a grain worker gets it
    assert ids[0] == 78 and ids[-1] == 79 and len(ids) == 6  # start ... end, cut before the end token
    np.testing.assert_array_equal(media.tokenize("a dog", 6, clip)[3:], [79, 79, 79])
    with pytest.raises(ValueError, match="not 'hf:DIR'"):
        media.make_tokenizer("hf:/no/such/folder")


def test_a_text_tower_looking_for_another_padding_is_one_error():
    config = config_lib.defaults()
    config.data.tokenizer = CLIP  # pads with its end token 79
    with pytest.raises(ValueError, match="pads with its end token 79; set --config.model.text.mask=eos "
                                         "--config.model.text.eos_id=79"):
        pipeline.check_preprocessing(config, ("text",))
    config.model.text.update(mask="eos", eos_id=79)
    assert pipeline.check_preprocessing(config, ("text",)) == 80
    config.data.augment.text_dropout = 0.1
    with pytest.raises(ValueError, match="text_dropout"):
        pipeline.check_preprocessing(config, ("text",))
