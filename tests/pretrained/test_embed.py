"""python -m mmjax.embed on the tiny saved folders: the arrays it writes equal
transformers' outputs for the raw files (tolerances of the parity tests)."""
import numpy as np

from mmjax import embed
from inputs import TEXTS
from parity import AUDIO_TOL, IMAGE_TOL, TEXT_TOL, close, fixture, reference


def run(tmp_path, *args):
    out = str(tmp_path / "h.npy")
    assert embed.main([*args, f"--out={out}"]) == 0
    return np.load(out)


def test_image_text_audio(tmp_path, raw_inputs):
    vit = run(tmp_path, f"--model=hf:{fixture('vit')}", f"--image={raw_inputs['image']}")
    close(vit, reference("vit")["last_hidden_state"][0], IMAGE_TOL)
    assert vit.dtype == np.float32
    text = TEXTS[1]
    bert = reference("bert")
    real = bert["attention_mask"][1].astype(bool)
    close(run(tmp_path, f"--model=hf:{fixture('bert')}", f"--text={text}"), bert["last_hidden_state"][1][real], TEXT_TOL)
    close(run(tmp_path, f"--model=hf:{fixture('bert')}", f"--text={text}", "--pooled"), bert["pooler_output"][1],
          TEXT_TOL)
    close(run(tmp_path, f"--model=hf:{fixture('whisper')}", f"--audio={raw_inputs['audio']}"),
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
