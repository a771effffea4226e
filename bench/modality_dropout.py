"""Modality dropout vs missing modalities, on the redundant synthetic task.

    python bench/modality_dropout.py [--steps 1000] [--rate 0.5] [--workdir DIR] [--config.key=value ...]

Trains configs/base.py twice on config.data.synthetic.task='redundant' (each modality
alone determines the label): once without and once with config.modality_dropout=RATE.
Each run's final eval also masks out each modality in turn (config.eval_without), and
the script prints eval/accuracy with everything present and with each modality missing.
Extra --config.key=value flags apply to both runs. About 2 x 2.5 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mmjax import config as config_lib  # noqa: E402  (bench scripts run from a checkout)
from mmjax import train  # noqa: E402
from mmjax.contract import MODALITIES  # noqa: E402


def last_eval(workdir: str) -> dict[str, float]:
    """The last eval row of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r for r in rows if "eval/accuracy" in r][-1]


def run(rate: float, steps: int, workdir: str, extra: dict[str, str]) -> dict[str, float]:
    config = config_lib.load_config_file(os.path.join(ROOT, "configs", "base.py"))
    overrides = {
        "data.synthetic.task": "redundant",
        "modality_dropout": str(rate),
        "eval_without": ",".join(MODALITIES),
        "total_steps": str(steps),
        "eval_every": str(steps),
        "checkpoint_every": str(steps),
        **extra,
    }
    config_lib.apply_overrides(config, overrides)
    train.train(config, workdir)
    return last_eval(workdir)


def main(argv: list[str]) -> int:
    spec, extra, rest = config_lib.split_config_args(argv)
    del spec
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.5, help="modality dropout of the second run")
    parser.add_argument("--workdir", default="", help="where the two runs go (default: a new temp dir)")
    args = parser.parse_args(rest)
    root = args.workdir or tempfile.mkdtemp(prefix="mmjax-modality-dropout-")
    results = {}
    for rate in (0.0, args.rate):
        results[rate] = run(rate, args.steps, os.path.join(root, f"dropout-{rate:g}"), extra)

    header = ["modality_dropout", "all present"] + [f"no {m}" for m in MODALITIES]
    print(f"\neval/accuracy on the redundant task after {args.steps} steps (runs in {root})\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for rate, metrics in results.items():
        cells = [f"{rate:g}", f"{metrics['eval/accuracy']:.3f}"]
        cells += [f"{metrics[f'eval/accuracy_without_{m}']:.3f}" for m in MODALITIES]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main(sys.argv[1:]))
