"""python -m mmjax.embed on the tiny saved folders: the arrays it writes equal
transformers' outputs for the raw files (tolerances of the parity tests); and on a tiny
mmjax export, its run's encoders."""
import os

import numpy as np

from export_run import exported_run
from mmjax import embed, export, media
from mmjax.models.multimodal import ENCODERS
from inputs import TEXTS
from parity import AUDIO_TOL, IMAGE_TOL, TEXT_TOL, close, fixture, raw_inputs, reference


def run(tmp_path, *args):
    out = str(tmp_path / "h.npy")
    assert embed.main([*args, f"--out={out}"]) == 0
    return np.load(out)


def test_image_text_audio(tmp_path, tmp_path_factory):
    files = raw_inputs(tmp_path_factory)
    vit = run(tmp_path, f"--model=hf:{fixture('vit')}", f"--image={files['image']}")
    close(vit, reference("vit")["last_hidden_state"][0], IMAGE_TOL)
    assert vit.dtype == np.float32
    text = TEXTS[1]
    bert = reference("bert")
    real = bert["attention_mask"][1].astype(bool)
    close(run(tmp_path, f"--model=hf:{fixture('bert')}", f"--text={text}"), bert["last_hidden_state"][1][real], TEXT_TOL)
    close(run(tmp_path, f"--model=hf:{fixture('bert')}", f"--text={text}", "--pooled"), bert["pooler_output"][1],
          TEXT_TOL)
    close(run(tmp_path, f"--model=hf:{fixture('whisper')}", f"--audio={files['audio']}"),
          reference("whisper")["last_hidden_state"][0], AUDIO_TOL)


def test_manifest_and_errors(tmp_path, capsys):
    manifest = tmp_path / "texts.txt"
    manifest.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "out"
    args = [f"--model=hf:{fixture('siglip')}", "--modality=text", f"--manifest={manifest}", f"--out={out}", "--pooled"]
    assert embed.main(args) == 0
    ref = reference("siglip")["text_pooler_output"]
    for i in range(3):
        close(np.load(out / f"{i:06d}.npy"), ref[i], TEXT_TOL)
    assert embed.main([f"--model=hf:{fixture('vit')}", "--text=a", "--image=b", f"--out={out}/x.npy"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert embed.main([f"--model=hf:{tmp_path}/none", "--text=a", f"--out={out}/x.npy"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_an_mmjax_export(tmp_path, tmp_path_factory):
    """--model=EXPORT_DIR: the export's encoder on its own preprocessing gives what the run's
    checkpointed encoder gives on the stored example (the raw eval files are lossless)."""
    run_ = exported_run(tmp_path_factory)
    config, params, _, _ = export.restore_params(run_["workdir"])
    raw, example = os.path.dirname(run_["manifest"]), run_["examples"][0]

    def encoder(modality, batch):
        module = ENCODERS[modality][config.model[modality].kind].from_config(config)
        tokens, mask = module.apply({"params": params[modality]}, batch, train=False)
        return np.asarray(tokens[0]), np.asarray(mask[0])

    image = run(tmp_path, f"--model={run_['export']}", f"--image={os.path.join(raw, '0.png')}")
    close(image, encoder("image", {"image": np.asarray(example["image"])[None]})[0], 1e-5)
    ids = media.tokenize(example["text"], config.data.text_length)
    tokens, mask = encoder("text", {"text": ids[None]})
    text = run(tmp_path, f"--model={run_['export']}", f"--text={example['text']}")
    assert text.shape == (int(mask.sum()), config.model.text.width) and text.dtype == np.float32
    close(text, tokens[mask], 1e-5)
    close(run(tmp_path, f"--model={run_['export']}", f"--text={example['text']}", "--pooled"), tokens[mask].mean(0),
          1e-5)
    wave, length = media.pad_audio(np.asarray(example["audio"], np.float32), config.data.audio_samples)
    audio = run(tmp_path, f"--model={run_['export']}", f"--audio={os.path.join(raw, '0.wav')}")
    close(audio, encoder("audio", {"audio": wave[None], "audio_length": np.asarray([length])})[0], 1e-5)
