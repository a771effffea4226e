"""Damaged exports and bad export/predict destinations: each is one line naming the file
(BUILD.md, "Reliability": "Bad inputs and faults: export and predict")."""
import json
import os
import shutil

import pytest

from export_run import exported_run
from mmjax import embed, export, predict
from mmjax.config import UserError
from mmjax.data.manifest import ManifestError, parse_classes
from mmjax.pretrained import export as pretrained_export


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return exported_run(tmp_path_factory)


@pytest.fixture
def copy(run, tmp_path):
    folder = tmp_path / "E"
    shutil.copytree(run["export"], folder)
    return folder


def one_line(capsys, status, prefix, *expected):
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(prefix) and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def test_every_export_file_has_its_sha256_in_export_json(run):
    spec = json.load(open(os.path.join(run["export"], "export.json")))
    assert spec["files"] == predict.file_digests(run["export"])
    assert sorted(spec["files"]) == ["params.safetensors", "predict.jax_exported"]
    assert all(len(info["sha256"]) == 64 and info["bytes"] > 0 for info in spec["files"].values())


def _flip(path, at=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_spec(folder, change):
    spec = json.load(open(folder / "export.json"))
    change(spec)
    (folder / "export.json").write_text(json.dumps(spec))


def _replace_function(folder):  # another export's function, same name: a size or hash mismatch
    (folder / "predict.jax_exported").write_bytes(b"\0" * (folder / "predict.jax_exported").stat().st_size)


DAMAGES = {
    "flipped byte in params": (lambda f: _flip(f / "params.safetensors"), "params.safetensors is damaged (its sha256"),
    "truncated function": (lambda f: (f / "predict.jax_exported").write_bytes((f / "predict.jax_exported").read_bytes()[:999]),
                           "predict.jax_exported is damaged (999 bytes, export.json says"),
    "replaced function": (_replace_function, "predict.jax_exported is damaged (its sha256"),
    "garbage export.json": (lambda f: (f / "export.json").write_bytes(b"\x89garbage{"), "export.json is damaged ("),
    "shortened class names": (lambda f: _edit_spec(f, lambda s: s.update(class_names=s["class_names"][:3])),
                              "export.json is damaged (it lists 3 class names for 10 outputs)"),
    "deleted params": (lambda f: os.remove(f / "params.safetensors"), "params.safetensors is missing"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_export_is_one_line_naming_the_file_in_predict_embed_and_init_from(copy, run, damage, capsys,
                                                                                     tiny_config):
    hurt, message = DAMAGES[damage]
    hurt(copy)
    one_line(capsys, predict.main([f"--export={copy}", "--text=hello"]), "mmjax.predict: error: ", message)
    one_line(capsys, embed.main([f"--model={copy}", "--text=hello", f"--out={copy.parent / 'h.npy'}"]),
             "mmjax.embed: error: ", message)
    with pytest.raises(UserError, match="config.init_from=") as e:
        pretrained_export.load_into(None, tiny_config(init_from=str(copy)))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["truncated function", "shortened class names"])
def test_an_export_from_before_checksums_is_still_one_line(copy, damage, capsys):
    _edit_spec(copy, lambda s: s.pop("files"))
    if damage == "truncated function":
        (copy / "predict.jax_exported").write_bytes((copy / "predict.jax_exported").read_bytes()[:999])
        expected = "predict.jax_exported is damaged (jax.export cannot read it"
    else:  # both the class names and the outputs edited: the function's own output size tells
        _edit_spec(copy, lambda s: s.update(class_names=s["class_names"][:3], outputs={"logits": [None, 3]}))
        expected = "lists 3 class names but"
    one_line(capsys, predict.main([f"--export={copy}", "--text=hello"]), "mmjax.predict: error: ", expected)


def test_an_intact_copy_still_predicts(copy, capsys):
    assert predict.main([f"--export={copy}", "--text=hello", "--top_k=2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


# ---------------------------------------------------------------- export --out and --overwrite
def test_overwrite_never_deletes_files_the_export_did_not_write(run, copy, capsys):
    for name in ("skipped.jsonl", "tokenizer.model"):  # a user's files that look like ours
        (copy / name).write_text("mine\n")
    before = sorted(os.listdir(copy))
    status = export.main([f"--workdir={run['workdir']}", f"--out={copy}", "--overwrite"])
    one_line(capsys, status, "mmjax.export: error: ", f"--out={copy} holds 'skipped.jsonl', which the export there "
             "did not write (and 1 more); move it out")
    assert sorted(os.listdir(copy)) == before and (copy / "skipped.jsonl").read_text() == "mine\n"
    for name in ("skipped.jsonl", "tokenizer.model"):
        os.remove(copy / name)
    _flip(copy / "params.safetensors")  # a damaged export is replaced by a good one
    assert export.main([f"--workdir={run['workdir']}", f"--out={copy}", "--overwrite"]) == 0
    assert sorted(os.listdir(copy)) == ["export.json", "params.safetensors", "predict.jax_exported"]
    predict.read_spec(str(copy))  # verifies every file
    assert not [f for f in os.listdir(copy.parent) if f.startswith(".")]  # nothing left aside


def test_export_out_under_a_read_only_path_is_one_line_up_front(tmp_path, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    place = "/sys" if os.geteuid() == 0 else str(read_only)  # root writes through mode bits
    try:
        # the workdir does not exist: the --out check must come first
        status = export.main([f"--workdir={tmp_path / 'nowhere'}", f"--out={place}/deep/E"])
    finally:
        read_only.chmod(0o755)
    one_line(capsys, status, "mmjax.export: error: ", f"--out={place}/deep/E: cannot write in {place} (")


def test_predict_out_a_folder_fails_before_predicting_and_leaves_no_temp_file(run, tmp_path, capsys):
    status = predict.main([f"--export={run['export']}", f"--manifest={run['manifest']}", f"--out={tmp_path}"])
    one_line(capsys, status, "mmjax.predict: error: ", f"--out={tmp_path} is a folder; give a file name such as")
    assert os.listdir(tmp_path) == []
    with pytest.raises(predict.PredictError, match="is a folder"):
        predict.predict_manifest(None, run["manifest"], str(tmp_path))  # checked before the predictor is used


@pytest.mark.parametrize("value", ["classes.txt", "names.json", "data/train", "/no/such/file"])
def test_classes_that_look_like_a_missing_path_are_an_error(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError, match=f"--classes={value}: no such file or data set directory"):
        parse_classes(value)
    assert parse_classes("cat,dog") == ["cat", "dog"] and parse_classes("cat") == ["cat"]
