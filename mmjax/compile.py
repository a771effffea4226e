"""Checks that a config fits a TPU slice, on a CPU machine, before anyone pays for the slice.

    python -m mmjax.compile --config=configs/pod_v5e_256.py --topology=v5e:16x16

Compiles the real train step ahead of time for the topology (libtpu from the `tpu` extra
and jax's TPU topology descriptions; no TPU needed) and prints per-device memory
(parameters, optimizer state, temporaries), FLOPs per step and whether it fits in the
chip's HBM, or the compiler's out-of-memory message. Exit status: 0 fits, 1 does not fit,
2 user error.
"""

from __future__ import annotations

import os

# Before jax is imported: use libtpu only as a compiler (no TPU on this machine, no
# metadata server, no lock against other jax processes that loaded it).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")  # quiets libtpu's start-up probe
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402
from etils import epath  # noqa: E402

from mmjax import config as config_lib  # noqa: E402
from mmjax import objectives, sharding, trainer  # noqa: E402
from mmjax.config import UserError, cli  # noqa: E402
from mmjax.data import synthetic, targets  # noqa: E402
from mmjax.models.multimodal import build_model  # noqa: E402

flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:2x2, v5e:16x16, v5p:4x4x8, v6e:16x16, v4:2x2x2.")
flags.DEFINE_integer("num_classes", None, "Classes of the head; default: from the config's training data spec.")

GIB = 1024**3
# HBM per chip by jax device_kind.
HBM_BYTES = {
    "TPU v4": 32 * GIB,
    "TPU v5 lite": 16 * GIB,
    "TPU v5e": 16 * GIB,
    "TPU v5": 95 * GIB,
    "TPU v5p": 95 * GIB,
    "TPU v6 lite": 32 * GIB,
    "TPU v6e": 32 * GIB,
}


def topology_devices(name: str) -> list:
    """The (abstract) TPU devices of a topology such as 'v5e:16x16'."""
    from jax.experimental import topologies

    try:
        import libtpu  # noqa: F401  (only to give a clear message when it is missing)
    except ImportError:
        raise UserError("libtpu is not installed: pip install -e '.[tpu]'") from None
    try:
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    except Exception as e:  # jax raises a runtime error naming nothing useful
        raise UserError(f"--topology={name}: not a TPU topology jax knows ({str(e).splitlines()[0]}); "
                        "use e.g. v5e:2x2, v5e:16x16, v5p:4x4x8, v6e:16x16, v4:2x2x2") from None


def data_spec(config) -> dict | None:
    """The training data's spec (None where it cannot be read without opening the data)."""
    name = config.data.train
    if name == "synthetic":
        d = config.data
        return synthetic.make_spec(image_size=d.image_size, audio_rate=d.audio_rate,
                                   audio_samples=d.audio_samples, task=d.synthetic.task)
    spec = epath.Path(name) / "spec.json"
    return json.loads(spec.read_text()) if spec.exists() else None


def num_classes_from_data(config) -> int:
    """The head size the real run would use (classes, or regression targets), from the
    training data's spec."""
    spec = data_spec(config)
    if spec is None:
        raise UserError(f"cannot read {config.data.train}/spec.json for the number of classes; pass --num_classes")
    return targets.num_outputs(spec, targets.task_of(config))


def shard_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    total = 0
    for leaf in jax.tree.leaves(abstract_tree):
        total += math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    return total


def check_fit(config, topology: str, num_classes: int | None = None) -> dict:
    """Compiles the train step for `topology`; returns the memory/FLOPs report."""
    config_lib.validate(config)
    devices = topology_devices(topology)
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch_size(config.batch_size, mesh)
    # 'auto' model settings follow the platform JAX runs on, which here is the CPU; compile
    # what the TPU will run instead (fused attention, layer loops, bfloat16).
    if config.model.attention == "auto":
        config.model.attention = "dpa"
    if config.model.unroll == "auto":
        config.model.unroll = "no"
    if config.model.dtype == "auto":
        config.model.dtype = "bfloat16"
    model = build_model(config, num_classes or num_classes_from_data(config))
    tx, schedule = trainer.make_optimizer(config)
    spec = data_spec(config)  # the batch's target fields and presence flags
    if spec is not None and num_classes:  # --num_classes wins
        spec = {**spec, ("target_size" if targets.task_of(config) == "regression" else "num_classes"): num_classes}
    try:
        shapes = trainer.batch_shapes(config, config.batch_size, spec=spec)
    except ValueError as e:
        raise UserError(f"{e}; compile needs a data set with spec.json for it") from None
    objective = objectives.Objective.from_config(config)
    abstract_state, state_shardings, _ = trainer.sharded_state_shapes(model, tx, shapes, mesh, objective=objective)
    kind = devices[0].device_kind
    report = {
        "topology": topology,
        "device_kind": kind,
        "devices": len(devices),
        "mesh": dict(mesh.shape),
        "parameters": sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params)),
        "param_bytes_per_device": shard_bytes(abstract_state.params),
        "optimizer_bytes_per_device": shard_bytes(abstract_state.opt_state),
        "hbm_bytes_per_device": HBM_BYTES.get(kind),
    }
    start = time.perf_counter()
    try:
        train_step = trainer.compile_train_step(
            model, tx, schedule, jax.random.key(0), config, mesh, abstract_state, state_shardings,
            spec=spec, objective=objective,
        )
    except Exception as e:  # the compiler's out-of-memory error is the answer, not a crash
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message and "memory" not in message.lower():
            raise
        report.update(fits=False, compiler_error=message.strip().splitlines()[0][:2000])
        return report
    report["compile_seconds"] = time.perf_counter() - start
    memory = train_step.memory_analysis()
    cost = train_step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    report.update(
        argument_bytes_per_device=memory.argument_size_in_bytes,
        output_bytes_per_device=memory.output_size_in_bytes,
        aliased_bytes_per_device=memory.alias_size_in_bytes,
        temp_bytes_per_device=memory.temp_size_in_bytes,
        code_bytes_per_device=memory.generated_code_size_in_bytes,
        flops_per_step_per_device=float(cost.get("flops", 0.0)),
    )
    # Donated state is aliased to the output, so it is counted once.
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    report["peak_bytes_per_device"] = peak
    report["fits"] = report["hbm_bytes_per_device"] is None or peak <= report["hbm_bytes_per_device"]
    return report


def format_report(r: dict) -> str:
    def gib(b: float) -> str:
        return f"{b / GIB:8.2f} GiB" if b >= GIB else f"{b / 2**20:8.2f} MiB"

    lines = [
        f"topology {r['topology']}: {r['devices']} x {r['device_kind']}, mesh {r['mesh']}",
        f"parameters            {r['parameters']:,}",
        f"params / device       {gib(r['param_bytes_per_device'])}",
        f"optimizer / device    {gib(r['optimizer_bytes_per_device'])}",
    ]
    if "compiler_error" in r:
        lines.append(f"DOES NOT FIT: the compiler ran out of memory: {r['compiler_error']}")
        return "\n".join(lines)
    hbm = r["hbm_bytes_per_device"]
    lines += [
        f"temporaries / device  {gib(r['temp_bytes_per_device'])}",
        f"peak / device         {gib(r['peak_bytes_per_device'])}" + (f" of {gib(hbm).strip()} HBM" if hbm else ""),
        f"FLOPs / step / device {r['flops_per_step_per_device']:.3e}  (all devices: "
        f"{r['flops_per_step_per_device'] * r['devices']:.3e}; XLA's count, in which a "
        "scanned layer stack counts once)",
        f"compile time          {r['compile_seconds']:.1f} s",
        ("FITS" if r["fits"] else "DOES NOT FIT") + (f" ({100 * r['peak_bytes_per_device'] / hbm:.1f}% of HBM)" if hbm else " (HBM size unknown for this chip)"),
    ]
    return "\n".join(lines)


SYNOPSIS = "python -m mmjax.compile --config=CONFIG --topology=v5e:16x16 [--config.key=value]"


def usage() -> str:
    return cli.usage(SYNOPSIS, [(f"--{name}=...", flags.FLAGS[name].help) for name in ("topology", "num_classes")])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if help_kind := cli.help_requested(argv[1:]):
        cli.show_help(help_kind, usage())
        return 0
    try:
        spec, overrides, rest = config_lib.split_config_args(argv[1:])
        flags.FLAGS(argv[:1] + rest)
        if spec is None or not flags.FLAGS.topology:
            raise UserError(f"usage: {SYNOPSIS}")
        config = config_lib.load_config_file(spec)
        config_lib.apply_overrides(config, overrides)
        report = check_fit(config, flags.FLAGS.topology, flags.FLAGS.num_classes)
    except (UserError, flags.Error) as e:
        print(f"mmjax.compile: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report), flush=True)
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
