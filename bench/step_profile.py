"""Where the training step's time goes, by kind of work, from XLA:CPU's own per-op timings.

    python bench/step_profile.py --config=configs/bench.py [--steps=5] [--top=12] [--config.KEY=VALUE ...]

Compiles the step as bench/train_step.py does (one fixed random batch on the devices),
runs `--steps` steps under jax.profiler with XLA's per-thunk trace events on
(--xla_cpu_enable_xprof_traceme), and reads the Perfetto trace it writes (JSON). Every
event names its HLO instruction; the compiled module's HLO text says what that
instruction computes (for a fusion: every instruction it fuses) and where in the model it
comes from (each instruction's metadata op_name carries jax's name stack: the Flax module
path, and jvp(...) / transpose(jvp(...)) for the forward and backward pass). From those
each instruction gets one kind, in this order of precedence:

  optimizer update     outside the model's forward and backward (the gradient clip and AdamW)
  log-mel front end    under the audio encoder's front end (framing, FFT, mel matmul, log)
  copies / transposes  nothing but copy, transpose, bitcast-convert, dynamic-update-slice
  attention            under an attention module and not one of its Dense projections:
                       the score and value matmuls, the mask and the softmax
  matmuls              any other dot or convolution (the projections, MLPs, patch embeddings, head)
  normalisation        under a LayerNorm (names ln*, norm*, *_norm)
  GELU                 tanh / erf / the activation's elementwise chain
  other                everything else (embedding gathers, losses, reductions, ...)

and the table gives each kind's share of the summed op time (ms/step, %) and its
forward / backward split, then the `--top` most expensive instructions. The numbers are
the ops' own durations; with 2 threads some ops overlap, so the sum can exceed the step's
wall time, which is printed too. The CPU model and flags head the output.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench.flags import parse_flags  # noqa: E402
from bench.train_step import JaxVariant  # noqa: E402
from mmjax import config as config_lib  # noqa: E402
from mmjax import hardware  # noqa: E402

FLAGS = {"steps": "5", "top": "12"}
KINDS = ("optimizer update", "log-mel front end", "copies / transposes", "attention", "matmuls", "normalisation",
         "GELU", "other")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_DOTS = ("dot", "convolution")
_COPIES = ("copy", "transpose", "bitcast-convert", "dynamic-update-slice", "copy-start", "copy-done")
_GELU = ("tanh", "erf")
# An attention module's Dense projections (mmjax's fused QKV matmul included) count as matmuls.
_PROJECTIONS = re.compile(r"(_fused_qkv|/(query|key|value|qkv|out)(/|$))")
_NORM = re.compile(r"/(ln\w*|\w*norm\w*|\w*_ln)(/|$)", re.IGNORECASE)


def parse_hlo(text: str) -> tuple[dict, dict]:
    """HLO text -> ({instruction: (opcode, op_name, called computation or '')},
    {computation: [instruction names]})."""
    instructions, computations, current = {}, collections.defaultdict(list), ""
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("{")[0]:
            current = head.group(1)
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, opcode, rest = m.groups()
        called = _CALLS.search(rest)
        op_name = _OP_NAME.search(rest)
        instructions[name] = (opcode, op_name.group(1) if op_name else "", called.group(1) if called else "")
        computations[current].append(name)
    return instructions, computations


def _leaves(name: str, instructions: dict, computations: dict, depth: int = 0) -> list[tuple[str, str]]:
    """(opcode, op_name) of an instruction, or of every instruction a fusion / call fuses."""
    opcode, op_name, called = instructions.get(name, ("", "", ""))
    if called and depth < 4:
        out = []
        for inner in computations.get(called, ()):
            out += _leaves(inner, instructions, computations, depth + 1)
        return out or [(opcode, op_name)]
    return [(opcode, op_name)]


def kind_of(leaves: list[tuple[str, str]]) -> str:
    """One KINDS entry for an executed instruction (see the module docstring)."""
    names = [n for _, n in leaves if n]
    opcodes = {o for o, _ in leaves}
    model = [n for n in names if "jvp(" in n]
    if names and not model:
        return "optimizer update"
    if any("frontend" in n or "log_mel" in n or "logmel" in n for n in model):
        return "log-mel front end"
    if opcodes & set(_COPIES) and opcodes <= set(_COPIES) | {"parameter", "constant", "bitcast", "tuple",
                                                            "get-tuple-element"}:
        return "copies / transposes"
    dots = opcodes & set(_DOTS) or any(o.startswith("ynn") or o == "custom-call" for o in opcodes)
    if any(("attn" in n or "attention" in n) and not _PROJECTIONS.search(n) for n in model):
        return "attention"
    if dots:
        return "matmuls"
    if any(_NORM.search(n) for n in model):
        return "normalisation"
    if opcodes & set(_GELU) or any("gelu" in n for n in model):
        return "GELU"
    return "other"


def direction(leaves: list[tuple[str, str]]) -> str:
    names = [n for _, n in leaves if n]
    if any("transpose(jvp(" in n for n in names):
        return "backward"
    return "forward" if any("jvp(" in n for n in names) else "-"


def read_trace(folder: str) -> list[dict]:
    paths = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        raise SystemExit(f"jax.profiler wrote no Perfetto trace under {folder}")
    with gzip.open(paths[0], "rt", encoding="utf-8") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def main(argv: list[str]) -> int:
    spec, overrides, rest = config_lib.split_config_args(argv)
    opts = parse_flags(rest, FLAGS)
    config = config_lib.load_config_file(spec or "configs/bench.py")
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
    steps = int(opts["steps"])
    print(f"CPU: {hardware.cpu_summary()}; jax {jax.__version__}", flush=True)
    variant = JaxVariant("default", config)
    instructions, computations = parse_hlo(variant.step.as_text())
    variant.run(2, record=False)
    with tempfile.TemporaryDirectory(prefix="mmjax-step-profile-") as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        start = time.perf_counter()
        variant.run(steps)
        wall = (time.perf_counter() - start) / steps
        jax.profiler.stop_trace()
        events = read_trace(folder)

    per_kind, per_dir, per_op = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        op = (e.get("args") or {}).get("hlo_op")
        if e.get("ph") != "X" or not op or op not in instructions:
            continue
        leaves = _leaves(op, instructions, computations)
        kind = kind_of(leaves)
        ms = e.get("dur", 0.0) / 1e3 / steps
        per_kind[kind] += ms
        per_dir[kind, direction(leaves)] += ms
        per_op[op, kind, instructions[op][0]] += ms
    total = sum(per_kind.values())
    if not total:
        raise SystemExit("the trace holds no per-op events (XLA:CPU's thunk runtime writes them; other "
                         "backends may not)")
    print(f"\n{steps} steps of batch {config.batch_size}: {1e3 * wall:,.1f} ms/step wall, "
          f"{total:,.1f} ms/step summed over the ops\n")
    print("| kind | ms/step | share | forward | backward |")
    print("|---|---|---|---|---|")
    for kind in KINDS:
        if per_kind[kind]:
            print(f"| {kind} | {per_kind[kind]:,.1f} | {per_kind[kind] / total:.1%} | "
                  f"{per_dir[kind, 'forward']:,.1f} | {per_dir[kind, 'backward']:,.1f} |")
    print(f"\n| the {opts['top']} costliest instructions | kind | opcode | ms/step |")
    print("|---|---|---|---|")
    for (op, kind, opcode), ms in per_op.most_common(int(opts["top"])):
        print(f"| {op} | {kind} | {opcode} | {ms:,.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
