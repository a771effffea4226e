"""The train loop on user data: a built directory of real files, and a TFDS data set.

The data's spec decides the modalities unless config.modalities asks for fewer; any
disagreement between config and data is one UserError naming the fix.
"""

import contextlib
import io
import json

import numpy as np
import pytest

import digits
from mmjax import train
from mmjax.config import UserError
from mmjax.data import build

needs_real_data = pytest.mark.skipif(digits.SHARED is None, reason="../shared/data is absent")


def _build(manifest, out, **kw):
    return build.build(str(manifest), str(out), workers=1, progress=False, log=lambda *_: None, **kw)


@pytest.fixture(scope="module")
def digit_dirs(tmp_path_factory):
    """48 train / 20 eval examples: MNIST digit PNGs + FSDD recordings of the same digit."""
    if digits.SHARED is None:
        pytest.skip("../shared/data is absent")
    root = tmp_path_factory.mktemp("digits")
    images, labels = digits.mnist(1000)
    wavs = digits.recordings(max_index=1)  # one recording per digit and speaker: 60
    train_wavs = [w for w in wavs if w[2] != "theo"][:48]
    eval_wavs = [w for w in wavs if w[2] == "theo"] + [w for w in wavs if w[2] != "theo"][48:58]
    m_train = digits.write_pairs(root, "train", train_wavs, images[:500], labels[:500])
    m_eval = digits.write_pairs(root, "eval", eval_wavs, images[500:], labels[500:])
    _build(m_train, root / "train_ds", audio_samples=2048)
    _build(m_eval, root / "eval_ds", audio_samples=2048, classes=str(root / "train_ds"))
    return root / "train_ds", root / "eval_ds"


@needs_real_data
def test_train_on_a_built_image_audio_data_set(tiny_config, digit_dirs, tmp_path):
    train_dir, eval_dir = digit_dirs
    config = tiny_config(data__train=train_dir, data__eval=eval_dir, total_steps=4,
                         eval_every=4, checkpoint_every=4)
    assert config.modalities == ("image", "text", "audio")  # the default: all three
    result = train.train(config, str(tmp_path / "run"))
    assert config.modalities == ("image", "audio")  # narrowed to the data's, for the model too
    assert 0.0 <= result["eval/accuracy"] <= 1.0 and np.isfinite(result["eval/loss"])
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [4]


@needs_real_data
@pytest.mark.parametrize("overrides, message", [
    (dict(modalities="('image','text')"),
     "config.modalities includes 'text' but the data has only ['audio', 'image']"),
    (dict(data__image_size=32), "data.image_size=32 but the data set's images are 16x16"),
    (dict(data__audio_samples=1024), "set --config.data.audio_samples=2048"),
    (dict(data__augment__image_crop=2.0), "config.data.augment.image_crop=2.0 must be in [0, 1]"),
])
def test_config_and_data_disagree(tiny_config, digit_dirs, tmp_path, overrides, message):
    train_dir, eval_dir = digit_dirs
    config = tiny_config(data__train=train_dir, data__eval=eval_dir, **overrides)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        train.train(config, str(tmp_path / "run"))


@needs_real_data
def test_train_and_eval_classes_must_agree(tiny_config, digit_dirs, tmp_path):
    train_dir, _ = digit_dirs
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(next((train_dir.parent / "eval").glob("*.png"))),
                                    "audio": str(digits.recordings(max_index=1)[0][0]),
                                    "label": "seven"}) + "\n")
    _build(manifest, tmp_path / "other", audio_samples=2048)
    config = tiny_config(data__train=train_dir, data__eval=tmp_path / "other")
    with pytest.raises(UserError, match="different classes .* --classes=TRAIN_DIR"):
        train.train(config, str(tmp_path / "run"))


def test_tokenizer_must_fit_the_text_encoder(tiny_config, tmp_path):
    config = tiny_config(model__text__vocab_size=200)
    with pytest.raises(UserError, match="vocab_size=200 is smaller than the tokenizer's 258 ids"):
        train.train(config, str(tmp_path / "run"))


class _Stop(Exception):
    pass


def test_sizes_follow_a_built_data_set_unless_set(tiny_config, tmp_path, monkeypatch):
    """Issue 15: 8 px images, 3000-sample clips and --text_length=16 fit the default config (16,
    2048, 32), which used to stop asking for --config.data.image_size and audio_samples. The run
    stops where the model is built (after every data check): compiling adds nothing here."""
    from PIL import Image
    from scipy.io import wavfile

    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        wavfile.write(tmp_path / f"{i}.wav", 8000, rng.integers(-9000, 9000, 3000, dtype=np.int16))
        rows.append({"image": f"{i}.png", "audio": f"{i}.wav", "text": f"example number {i}" + "!!" * (i >= 6),
                     "label": i % 2})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _build(tmp_path / "m.jsonl", tmp_path / "ds", image_size=8, text_length=16)
    config = tiny_config(data__train=tmp_path / "ds", data__eval=tmp_path / "ds", batch_size=8)

    def stop(config, num_classes):
        raise _Stop

    monkeypatch.setattr(train, "build_model", stop)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(_Stop):
        train.train(config, str(tmp_path / "run"))
    lines = out.getvalue().splitlines()
    assert (config.data.image_size, config.data.audio_samples, config.data.text_length) == (8, 3000, 16)
    assert lines[:4] == ["data.image_size=8 (the data set's images; set it to override)",
                         "data.audio_samples=3000 (the data set's longest clip; set it to override)",
                         "data.text_length=16 (the data set's build --text_length; set it to override)",
                         "2 training texts longer than data.text_length=16 tokens (up to 18) are cut to that; "
                         "set --config.data.text_length=18 to keep them whole"]


@pytest.mark.parametrize("case", ["cut shard", "cache_dir a file"])
def test_data_faults_are_one_line_from_the_train_command(tmp_path, capsys, monkeypatch, case):
    """Issue 15: each was a traceback (Riegeli's RuntimeError, FileExistsError)."""
    import os

    from conftest import TINY_OVERRIDES
    from PIL import Image

    args = [f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items()]
    if case == "cut shard":
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
        (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "label": 0}) + "\n")
        _build(tmp_path / "m.jsonl", tmp_path / "ds")
        shard = tmp_path / "ds" / "data-00000-of-00001.array_record"
        shard.write_bytes(shard.read_bytes()[:100])
        args += [f"--config.data.train={tmp_path / 'ds'}", f"--config.data.eval={tmp_path / 'ds'}"]
        expected = f"data shard {shard} is damaged or cut short ("
    else:
        (tmp_path / "cache").write_text("")
        args.append(f"--config.data.cache_dir={tmp_path / 'cache'}")
        expected = f"config.data.cache_dir='{tmp_path / 'cache'}' (where the synthetic data are written): cannot write"
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "off")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    base = os.path.join(root, "configs", "base.py")
    status = train.main(["mmjax.train", f"--config={base}", *args, f"--workdir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("mmjax.train: error: ") and expected in err, err
