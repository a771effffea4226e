"""Does fusion help on your data? Fused vs each modality alone vs late fusion of the single models.

    python bench/fusion_table.py --train=TRAIN_DIR --eval=EVAL_DIR [--modalities=image,audio]
        [--workdir=DIR] [--config=configs/base.py] [--config.key=value ...]

For a built train/eval data set pair (`python -m mmjax.data.build`), trains the config
(configs/base.py by default; every --config.key=value applies to every run) once on all
the modalities, then once on each modality alone, and evaluates late fusion: the average
of the single models' class probabilities on the eval set (each single model restored
from the checkpoint mmjax.export would take: the best with config.select_best, else the
final one). Prints a markdown table of the last and the best eval/accuracy, the final
training accuracy and each run's wall time. Runs go to WORKDIR/<name> (default: a new temp
dir); a finished run is not trained again (mmjax.train resumes), so a second call only
prints (its wall time then reads 'earlier call').

Modality balancing (config.fusion.balance): each name in BALANCE adds one fused row
trained with --config.fusion.balance=NAME ('none': the config as given). Balancing needs
the per-modality heads, so those rows get config.fusion.aux_weight=AUX_WEIGHT when the
config leaves it at 0. Rows with heads also show each head's own eval accuracy
(eval/accuracy_<m>_only) and the last logged train/balance_<m> (OGM-GE's gradient scale
or gradient blending's weight).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BALANCE = ("none", "ogm_ge", "gradient_blending")  # fused rows; names other than 'none' set config.fusion.balance
AUX_WEIGHT = 1.0  # config.fusion.aux_weight of the balancing rows, unless the config sets one


def rows_of(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def last(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else None


def train_run(config_spec: str, overrides: dict[str, str], workdir: str) -> dict:
    """Trains one run (or finds it finished); returns its final metrics and wall time."""
    from mmjax import config as config_lib
    from mmjax import train

    config = config_lib.load_config_file(config_spec)
    config_lib.apply_overrides(config, overrides)
    if config.fusion.balance != "none" and config.fusion.aux_weight == 0:
        config.fusion.aux_weight = AUX_WEIGHT  # balancing reads the per-modality heads
    finished = any(r.get("step") == config.total_steps and "eval/accuracy" in r for r in rows_of(workdir))
    start = time.perf_counter()
    train.train(config, workdir)
    wall = None if finished else time.perf_counter() - start  # None: trained by an earlier call
    rows = rows_of(workdir)
    evals = [(r["eval/accuracy"], -r["step"]) for r in rows if "eval/accuracy" in r]
    best = max(evals) if evals else None  # the first step with the highest value
    heads = []  # 'image 0.91 (x0.87)': a head alone on eval, and its last train/balance_<m>
    for m in config.modalities:
        alone, weight = last(rows, f"eval/accuracy_{m}_only"), last(rows, f"train/balance_{m}")
        if alone is not None:
            heads.append(f"{m} {alone:.3f}" + ("" if weight is None else f" (x{weight:.2f})"))
    return {"eval": last(rows, "eval/accuracy"), "train": last(rows, "train/accuracy"), "wall": wall,
            "heads": ", ".join(heads), "best": "" if best is None else f"{best[0]:.3f} ({-best[1]})"}


def eval_probabilities(workdir: str) -> tuple["np.ndarray", "np.ndarray"]:
    """(softmax probabilities [N, C], labels [N]) of a run's latest checkpoint on its eval set."""
    import jax
    import numpy as np

    from mmjax import export
    from mmjax.data import pipeline, sources
    from mmjax.models.multimodal import build_model

    config, params, _, meta = export.restore_params(workdir)
    model = build_model(config, int(meta["num_classes"]))
    source = sources.open_source(config.data.eval, "eval", config.data)
    apply = jax.jit(lambda p, b: jax.nn.softmax(model.apply({"params": p}, b, train=False), axis=-1))
    probs, labels = [], []
    for batch in pipeline.eval_batches(source, config, global_batch=int(config.batch_size)):
        keep = np.asarray(batch["weight"]) > 0
        inputs = {k: v for k, v in batch.items() if k != "weight"}
        probs.append(np.asarray(apply(params, inputs))[keep])
        labels.append(np.asarray(batch["label"])[keep])
    return np.concatenate(probs), np.concatenate(labels)


def main(argv: list[str]) -> int:
    import numpy as np

    from mmjax import config as config_lib
    from bench.flags import parse_flags

    spec, extra, rest = config_lib.split_config_args(argv)
    opts = parse_flags(rest, {"train": "", "eval": "", "modalities": "image,audio", "workdir": ""})
    if not opts["train"] or not opts["eval"]:
        raise SystemExit("fusion_table.py: error: give --train=DIR and --eval=DIR (built data sets)")
    for key in ("train", "eval"):
        if not os.path.isfile(os.path.join(opts[key], "spec.json")):
            raise SystemExit(f"fusion_table.py: error: --{key}={opts[key]} is not a built data set "
                             "(no spec.json); build it with python -m mmjax.data.build")
    modalities = tuple(m for m in opts["modalities"].split(",") if m)
    if len(modalities) < 2:
        raise SystemExit(f"fusion_table.py: error: --modalities={opts['modalities']} needs two or more")
    config_spec = spec or os.path.join(ROOT, "configs", "base.py")
    root = opts["workdir"] or tempfile.mkdtemp(prefix="mmjax-fusion-table-")
    base = {"data.train": opts["train"], "data.eval": opts["eval"], **extra}

    def tup(ms):
        return "(" + ",".join(f"'{m}'" for m in ms) + ",)"

    results = []  # (what, balance, result)
    for balance in BALANCE:
        name = "fused" if balance == "none" else f"fused-{balance}"
        over = dict(base, modalities=tup(modalities))
        if balance != "none":
            over["fusion.balance"] = balance
        results.append((" + ".join(modalities) + " (fused)", balance, train_run(config_spec, over, os.path.join(root, name))))
    singles = {}
    for m in modalities:
        singles[m] = train_run(config_spec, dict(base, modalities=tup((m,))), os.path.join(root, m))
        results.append((f"{m} only", "", singles[m]))

    start = time.perf_counter()
    probs = {m: eval_probabilities(os.path.join(root, m)) for m in modalities}
    labels = probs[modalities[0]][1]
    if any(not np.array_equal(p[1], labels) for p in probs.values()):
        raise SystemExit("fusion_table.py: error: the single runs saw different eval examples")
    for m, (p, _) in probs.items():  # the restored models reproduce the logged figures
        singles[m]["restored"] = float(np.mean(p.argmax(-1) == labels))
    mean = np.mean([p for p, _ in probs.values()], axis=0)
    late = {"eval": float(np.mean(mean.argmax(-1) == labels)), "train": None,
            "wall": time.perf_counter() - start}
    results.append((" + ".join(modalities) + " (late fusion: mean of the single models' probabilities)", "", late))

    print(f"\neval/accuracy on {opts['eval']} ({len(labels)} examples); runs in {root}\n")
    print("| model | balance | eval/accuracy | best eval/accuracy (step) | train/accuracy (last window) | heads alone "
          "on eval (x last train/balance_<m>) | wall time |")
    print("|---|---|---|---|---|---|---|")
    for what, balance, r in results:
        train_acc = "" if r["train"] is None else f"{r['train']:.3f}"
        wall = "earlier call" if r["wall"] is None else f"{r['wall']:.0f} s"
        print(f"| {what} | {balance} | {r['eval']:.3f} | {r.get('best', '')} | {train_acc} | {r.get('heads', '')} "
              f"| {wall} |")
    best = max(singles[m]["eval"] for m in modalities)
    fused = "; ".join(f"fused ({b}) - best single = {r['eval'] - best:+.3f}" for _, b, r in results[:len(BALANCE)])
    print(f"\nbest single modality {best:.3f}; {fused}; late fusion - best single = {late['eval'] - best:+.3f}")
    print("restored single models on eval: " + ", ".join(f"{m} {singles[m]['restored']:.3f}" for m in modalities))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
