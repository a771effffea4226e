"""Nothing unsafe is loaded: no pickle (or eval/exec) where data, checkpoints or exports are
read, and paths in data files are only ever read as data."""
import ast
import json
import pathlib
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax import predict
from mmjax.data import build, tfds_source

MMJAX = pathlib.Path(__file__).resolve().parent.parent / "mmjax"
UNSAFE_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
# The one place that runs code from a file: the user's own --config=FILE (a Python file by
# design, named on the command line, never read from data or checkpoints).
ALLOWED = {("cli.py", "spec_from_file_location"), ("cli.py", "exec_module")}  # mmjax/config/cli.py loads config files


def calls_and_imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, {a.name.split(".")[0] for a in node.names}, None
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node, {node.module.split(".")[0]}, None
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            yield node, set(), (name, node)


def test_no_pickle_eval_or_exec_in_mmjax():
    sources = sorted(MMJAX.rglob("*.py"))
    assert len(sources) > 20
    problems = []
    for path in sources:
        for node, modules, call in calls_and_imports(path):
            where = f"{path.relative_to(MMJAX.parent)}:{node.lineno}"
            if modules & UNSAFE_MODULES:
                problems.append(f"{where} imports {sorted(modules & UNSAFE_MODULES)}")
            if call is None:
                continue
            name, call_node = call
            if name in UNSAFE_CALLS and isinstance(call_node.func, ast.Name):
                problems.append(f"{where} calls {name}()")
            if name in ("load", "loads") and isinstance(call_node.func, ast.Attribute):
                owner = call_node.func.value
                owner = owner.id if isinstance(owner, ast.Name) else ""
                if owner in ("np", "numpy"):
                    pickle_off = any(k.arg == "allow_pickle" and isinstance(k.value, ast.Constant)
                                     and k.value.value is False for k in call_node.keywords)
                    if not pickle_off:
                        problems.append(f"{where} calls np.{name} without allow_pickle=False")
                if owner in ("yaml", "torch"):
                    problems.append(f"{where} calls {owner}.{name}")
            if name in ("exec_module", "spec_from_file_location", "import_module") and (path.name, name) not in ALLOWED:
                problems.append(f"{where} calls {name}()")
    assert problems == []


def test_the_scan_would_catch_pickle(tmp_path):
    """The scanner itself: a file that loads with pickle or np.load is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport numpy as np\nx = np.load('f.npy')\ny = eval('1')\n")
    found = [(modules, call[0] if call else None) for _, modules, call in calls_and_imports(bad)]
    assert ({"pickle"}, None) in found and (set(), "load") in found and (set(), "eval") in found


@pytest.fixture
def manifest_dir(tmp_path):
    """data/manifest.jsonl next to a picture in the parent folder and a Python file that
    would leave a marker if anything ran it."""
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "outside.png")
    marker = tmp_path / "EXECUTED"
    (tmp_path / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "payload.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    (tmp_path / "data").mkdir()
    return tmp_path


def write_manifest(folder, rows):
    path = folder / "data" / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_manifest_paths_outside_its_folder_are_read_as_pixels(manifest_dir):
    """Decision: manifest paths may point anywhere the user can read ('../', absolute),
    because data sets live where their owners keep them; they are only opened as image
    or WAV bytes, never imported or run."""
    manifest = write_manifest(manifest_dir, [{"image": "../outside.png", "label": 0},
                                             {"image": str(manifest_dir / "outside.png"), "label": 1}])
    spec = build.build(str(manifest), str(manifest_dir / "ds"), image_size=8, workers=1,
                       progress=False, log=lambda *_: None)
    assert spec["num_examples"] == 2


@pytest.mark.parametrize("payload", ["../payload.py", "../payload.eps"])
def test_a_manifest_path_to_code_is_refused_and_never_run(manifest_dir, payload):
    manifest = write_manifest(manifest_dir, [{"image": "../outside.png", "label": 0},
                                             {"image": payload, "label": 1}])
    with pytest.raises(ValueError, match=r"line 2: cannot decode image .*not one of the formats read"):
        build.build(str(manifest), str(manifest_dir / "ds"), image_size=8, workers=1,
                    progress=False, log=lambda *_: None)
    # The predictor reads images through the same restricted decoder.
    with pytest.raises(ValueError, match=r"cannot decode image .*not one of the formats read"):
        predict.Preprocessor(image_size=8).row(image=str(manifest_dir / "data" / payload))
    assert not (manifest_dir / "EXECUTED").exists()


def test_tfds_features_json_cannot_make_the_run_import_code(tmp_path, monkeypatch):
    """TFDS imports the module of any feature class it does not know; mmjax refuses first."""
    marker = tmp_path / "EXECUTED"
    (tmp_path / "mmjax_test_payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    version = tmp_path / "data" / "evil" / "1.0.0"
    version.mkdir(parents=True)
    (version / "features.json").write_text(json.dumps(
        {"pythonClassName": "mmjax_test_payload.Feature", "featuresDict": {}}))
    shutil.copy(version / "features.json", version / "dataset_info.json")
    data = ml_collections.ConfigDict(dict(
        image_size=8, audio_rate=8000, audio_samples=64, text_length=8,
        tfds=dict(data_dir=str(tmp_path / "data"), train_split="train", eval_split="test",
                  features="", audio_rate=0)))
    with pytest.raises(ValueError, match="names the feature class 'mmjax_test_payload.Feature', outside "
                                         "tensorflow_datasets"):
        tfds_source.open_tfds("tfds:evil", "train", data)
    assert not marker.exists()
