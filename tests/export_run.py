"""One tiny trained and exported run of the default task, shared by the export, predict and
init_from tests of a test process, plus the eval set written out as raw files."""
import json
import os

import numpy as np
from PIL import Image
from scipy.io import wavfile

from conftest import ROOT, TINY_OVERRIDES
from mmjax import config as config_lib
from mmjax import export, train
from mmjax.data import codec, sources

_RUNS: dict = {}


def tiny_config(cache_dir: str, **overrides):
    config = config_lib.load_config_file(str(ROOT / "configs" / "base.py"))
    config_lib.apply_overrides(config, {**TINY_OVERRIDES, **{k.replace("__", "."): str(v) for k, v in overrides.items()}})
    config.data.cache_dir = cache_dir
    config_lib.validate(config)
    return config


def write_raw_eval(config, directory: str) -> tuple[str, list[dict]]:
    """The eval split as lossless PNGs, float32 WAVs and UTF-8 text in a JSON Lines manifest;
    returns (manifest path, the stored examples)."""
    source = sources.open_source(config.data.eval, "eval", config.data)
    os.makedirs(directory, exist_ok=True)
    examples = [codec.decode(source.records[i]) for i in range(len(source.records))]
    manifest = os.path.join(directory, "eval.jsonl")
    with open(manifest, "w", encoding="utf-8") as f:
        for i, ex in enumerate(examples):
            Image.fromarray(np.asarray(ex["image"])).save(os.path.join(directory, f"{i}.png"))
            wavfile.write(os.path.join(directory, f"{i}.wav"), config.data.audio_rate,
                          np.asarray(ex["audio"], np.float32))
            f.write(json.dumps({"image": f"{i}.png", "audio": f"{i}.wav", "text": ex["text"],
                                "label": source.spec["class_names"][int(ex["label"])]}) + "\n")
    return manifest, examples


def exported_run(tmp_path_factory) -> dict:
    """{'config', 'workdir', 'eval_accuracy', 'export' (float32), 'export_bf16', 'manifest',
    'examples'}: trained, exported and written once per test process."""
    base = str(tmp_path_factory.getbasetemp())
    if base not in _RUNS:
        root = tmp_path_factory.mktemp("exported_run")
        config = tiny_config(str(tmp_path_factory.getbasetemp() / "synthetic-cache"))
        workdir = str(root / "run")
        train.train(config, workdir)
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        eval_accuracy = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r][-1]
        quiet = lambda *a, **k: None  # noqa: E731
        export.export(workdir, str(root / "E"), log=quiet)
        # The float32 export is lowered for every platform (test_export checks it); this one for CPU only.
        export.export(workdir, str(root / "E_bf16"), dtype="bfloat16", platforms=("cpu",), log=quiet)
        manifest, examples = write_raw_eval(config, str(root / "raw"))
        _RUNS[base] = dict(config=config, workdir=workdir, eval_accuracy=eval_accuracy,
                           export=str(root / "E"), export_bf16=str(root / "E_bf16"),
                           manifest=manifest, examples=examples)
    return _RUNS[base]
