"""Writes a self-contained inference artifact from a training run's checkpoint.

    python -m mmjax.export --workdir=W [--step=best|latest|N] --out=E [--dtype=float32|bfloat16] [--overwrite]

The step is by default the run's best (config.select_best, mmjax/best.py) when it recorded
one, else the latest; the line it prints says which.

E/ holds everything `python -m mmjax.predict` (no training stack) needs:
  export.json            format, modalities, class names, input shapes, preprocessing spec
                         (image size and normalisation, audio rate/length and spectrogram
                         settings, tokenizer), the run's config, step and versions
  params.safetensors     the parameters, flat 'image/.../kernel' names, float32 or bfloat16
  predict.jax_exported   the inference function serialized with jax.export (StableHLO) for
                         CPU, CUDA and TPU, with a symbolic batch size:
                         f(params, batch) -> {'logits', 'probabilities'} [b, classes]
  generate.jax_exported  instead, for a loss.task='generate' run: the decoding of
                         mmjax/decoding.py (config.decode: greedy, beams or sampling from
                         its seed) with a symbolic batch size and a static length:
                         f(params, batch) -> {'tokens': int32 [b, max_length]}; export.json's
                         'generate' holds max_length, the target vocabulary (size, BOS, EOS,
                         pad), the decode settings and the tokenizer to turn ids into text
  tokenizer.model        the SentencePiece model, when the run used one (for its text, or
                         for a 'generate' run's target text)
  tokenizer/             a checkpoint's own tokenizer files (data.tokenizer='hf:DIR'), and
  image_processor/       its image processor file (data.image_processor='hf:DIR'), when used
Text and audio lengths are fixed at the run's data.text_length and data.audio_samples: the
encoders' learned position tables have that many rows, so the predictor pads and cuts inputs
exactly as the training pipeline did (padding is masked inside the model). The folder is
written under a temporary name and renamed when complete; export.json's 'files' table holds
every other file's sha256 and size, which every loader checks (mmjax/predict.py, read_spec).
--overwrite replaces only a folder that holds nothing but the files its export wrote.

LoRA adapters (config.model.<modality>.lora_rank > 0) are merged into their base kernels,
W' = W + (lora_alpha / lora_rank) A B: the export holds no lora_* parameters, its config has
lora_rank=0, and it predicts what the run's model with adapters does.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import best as best_lib
from mmjax import checkpoint as ckpt_lib
from mmjax import config as config_lib
from mmjax import decoding, media
from mmjax import predict as predict_lib
from mmjax import objectives, sharding, trainer
from mmjax.config import UserError, cli
from mmjax.contract import EXPORT_DTYPES, LABEL, TARGET, TARGET_LENGTH, TARGET_TOKENS, presence_key
from mmjax.data import sources
from mmjax.models.layers import LORA_PARAMS, lora_scale, merge_lora
from mmjax.models.multimodal import build_model

PLATFORMS = ("cpu", "cuda", "tpu")
EXPORTED_TASKS = ("classification", "generate")
_TARGET_KEYS = (LABEL, TARGET, TARGET_TOKENS, TARGET_LENGTH)  # what training feeds, never an export
TOKENIZER_DIR, PROCESSOR_DIR = "tokenizer", "image_processor"  # a checkpoint's files, copied


# ---------------------------------------------------------------- parameter trees
def flatten_params(params) -> dict[str, np.ndarray]:
    """Nested param dict -> {'image/pos_embed/embedding': array} (numpy)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nn.unbox(params)):
        flat["/".join(str(k.key) for k in path)] = np.asarray(jax.device_get(leaf))
    return flat


def unflatten_params(flat: dict) -> dict:
    """Inverse of flatten_params (works on jax arrays and tracers too)."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def merge_adapters(flat: dict[str, np.ndarray], config) -> tuple[dict[str, np.ndarray], object, dict]:
    """(flat params with every LoRA adapter merged into its kernel and removed, a copy of
    config with lora_rank=0 on those towers, {modality: its lora settings} of what was merged).
    Unchanged (the same config) when no tower has adapters."""
    towers = [m for m in config.modalities if config.model[m].lora_rank > 0]
    if not towers:
        return flat, config, {}
    flat, merged = dict(flat), {}
    for m in towers:
        tower = config.model[m]
        scale = lora_scale(tower.lora_rank, tower.lora_alpha)
        for name in sorted(n for n in flat if n.startswith(f"{m}/") and n.endswith("/lora_a")):
            base = name[: -len("lora_a")]
            kernel = np.asarray(flat[base + "kernel"], np.float32)
            a, b = (np.asarray(flat.pop(base + p), np.float32) for p in LORA_PARAMS)
            flat[base + "kernel"] = merge_lora(kernel, a, b, scale).astype(flat[base + "kernel"].dtype)
        merged[m] = {"rank": int(tower.lora_rank), "alpha": float(tower.lora_alpha),
                     "targets": list(tower.lora_targets)}
    left = [n for n in flat if n.rsplit("/", 1)[-1] in LORA_PARAMS]
    if left:
        raise ValueError(f"LoRA parameter {left[0]!r} was not merged (its tower has lora_rank=0?)")
    config = copy.deepcopy(config)
    for m in towers:
        config.model[m].lora_rank = 0
    return flat, config, merged


# ---------------------------------------------------------------- restoring a run
def _checkpointer(workdir: str) -> ckpt_lib.Checkpointer:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise UserError(f"--workdir={workdir} has no checkpoints ({directory} does not exist); "
                        "train first with python -m mmjax.train --workdir=...")
    return ckpt_lib.Checkpointer(directory, max_to_keep=1 << 30, async_save=False)


def choose_step(checkpointer: ckpt_lib.Checkpointer, workdir: str, step: int | str | None) -> tuple[int, str]:
    """(step, which one it is, in words) for --step: None (the best if the run recorded one,
    else the latest), 'best', 'latest' or a step number."""
    steps = sorted(checkpointer.all_steps())
    if not steps:
        raise UserError(f"--workdir={workdir} has no checkpoints in {workdir}/checkpoints; "
                        "train first with python -m mmjax.train --workdir=...")
    latest = steps[-1]
    if step in (None, "best"):
        try:
            best = best_lib.best_step(checkpointer.read_data(latest))
        except Exception:  # noqa: BLE001 - a damaged latest step: restoring it below says so
            best = None
        if best and best[0] in steps:
            record = best[1]
            return best[0], f"the best: {record['metric']} {record['value']:.4f}; the latest is {latest}"
        if step == "best":
            why = "is no longer there" if best else "was not recorded (the run did not set config.select_best)"
            raise UserError(f"--step=best: the best step of {workdir} {why}; "
                            f"use --step=latest or one of {', '.join(map(str, steps))}")
        return latest, "the latest"
    if step == "latest":
        return latest, "the latest"
    if isinstance(step, str) and not step.isdigit():
        raise UserError(f"--step={step}: use best, latest or a step number")
    if int(step) not in steps:
        raise UserError(f"--step={step}: {workdir}/checkpoints has steps {', '.join(map(str, steps))}")
    return int(step), "the latest" if int(step) == latest else "chosen with --step"


def restore_params(workdir: str, step: int | str | None = None, log=lambda line: None):
    """(config, params as numpy tree, step, meta) of a run's checkpoint (see choose_step)."""
    checkpointer = _checkpointer(workdir)
    try:
        step, which = choose_step(checkpointer, workdir, step)
        log(f"exporting step {step} ({which})")
        meta = checkpointer.read_meta(step)
        config = config_lib.upgrade(meta["config"])  # an older run's config, in today's schema
        model = build_model(config, int(meta["num_classes"]))
        tx, _ = trainer.make_optimizer(config)
        mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
        shapes = trainer.batch_shapes(config, 1)
        objective = objectives.Objective.from_config(config)  # gradient blending's state is part of it
        abstract, _, _ = trainer.sharded_state_shapes(model, tx, shapes, mesh, objective=objective)
        try:  # a damaged checkpoint is never exported
            state, _, _ = checkpointer.restore_verified(step, abstract)
        except ckpt_lib.CheckpointDamaged as e:
            raise UserError(f"checkpoint {workdir}/checkpoints/{step} is damaged ({e}); "
                            "export another step with --step") from None
    finally:
        checkpointer.close()
    return config, jax.device_get(state.params), step, meta


def _class_names(config, meta: dict) -> list[str]:
    names = meta.get("class_names")
    if names:
        return [str(n) for n in names]
    try:  # runs from before meta carried the names: read them from the training data
        return [str(n) for n in sources.open_source(config.data.train, "train", config.data).spec["class_names"]]
    except (ValueError, OSError):
        return [str(i) for i in range(int(meta["num_classes"]))]


# ---------------------------------------------------------------- the exported function
def input_specs(config) -> dict[str, tuple[tuple, str]]:
    """Batch fields the exported function takes: name -> (shape with None for batch, dtype)."""
    specs = {k: ((None, *s[1:]), np.dtype(dt).name) for k, (s, dt) in trainer.batch_shapes(config, 1).items()
             if k not in _TARGET_KEYS}
    for m in config.modalities:
        specs[presence_key(m)] = ((None,), "bool")
    return specs


def export_function(config, num_classes: int, flat_params: dict, *, platforms=PLATFORMS) -> bytes:
    """jax.export of params, batch -> {'logits', 'probabilities'} (classification) or
    {'tokens'} (generate: config.decode's decoding); the batch size is symbolic."""
    if config.loss.task not in EXPORTED_TASKS:
        raise UserError(f"config.loss.task={config.loss.task!r}: export supports {' and '.join(EXPORTED_TASKS)} runs")
    model = build_model(config, num_classes)
    if config.loss.task == "generate":
        decode = decoding.decode_fn(model, decoding.DecodeSettings.from_config(config))

        def infer(params: dict, batch: dict) -> dict:
            return {"tokens": decode(unflatten_params({k: v.astype(jnp.float32) for k, v in params.items()}), batch)}
    else:
        def infer(params: dict, batch: dict) -> dict:
            params = unflatten_params({k: v.astype(jnp.float32) for k, v in params.items()})
            logits = model.apply({"params": params}, batch, train=False).astype(jnp.float32)
            return {"logits": logits, "probabilities": jax.nn.softmax(logits, axis=-1)}

    (b,) = jax.export.symbolic_shape("b")
    abstract_batch = {k: jax.ShapeDtypeStruct((b, *shape[1:]), dtype) for k, (shape, dtype) in input_specs(config).items()}
    abstract_params = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat_params.items()}
    exported = jax.export.export(jax.jit(infer), platforms=tuple(platforms))(abstract_params, abstract_batch)
    return bytes(exported.serialize())


# ---------------------------------------------------------------- the folder
def _copy_preprocessing(config, folder: str) -> dict:
    """Copies the files the run's tokenizer and image processor need into the export folder;
    returns {'tokenizer': name for media.make_tokenizer relative to the folder ('bytes',
    'tokenizer.model', 'hf:tokenizer'), 'image_processor': '' or 'hf:image_processor'}."""
    d, names = config.data, {"tokenizer": "bytes", "image_processor": ""}
    uses_tokenizer = "text" in config.modalities or config.loss.task == "generate"  # a target text's too
    if uses_tokenizer and d.tokenizer.startswith(media.CHECKPOINT_PREFIX):
        source = media.checkpoint_folder(d.tokenizer)
        os.makedirs(os.path.join(folder, TOKENIZER_DIR))
        for name in media.TOKENIZER_FILES:
            if os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(folder, TOKENIZER_DIR, name))
        names["tokenizer"] = media.CHECKPOINT_PREFIX + TOKENIZER_DIR
    elif uses_tokenizer and d.tokenizer not in ("", "bytes"):
        shutil.copyfile(d.tokenizer, os.path.join(folder, predict_lib.TOKENIZER_FILE))
        names["tokenizer"] = predict_lib.TOKENIZER_FILE
    if "image" in config.modalities and d.image_processor:
        source = media.processor_file(media.checkpoint_folder(d.image_processor))
        os.makedirs(os.path.join(folder, PROCESSOR_DIR))
        shutil.copyfile(source, os.path.join(folder, PROCESSOR_DIR, os.path.basename(source)))
        names["image_processor"] = media.CHECKPOINT_PREFIX + PROCESSOR_DIR
    return names


def _spec(config, class_names, step, workdir, meta, dtype, platforms, files: dict) -> dict:
    d, m = config.data, config.model
    preprocess = {}
    if "image" in config.modalities:
        resize = media.image_resize(d.image_processor)
        preprocess["image"] = {"size": int(d.image_size), "channels": "RGB uint8",
                               "resize": resize.to_json(), "processor": files["image_processor"],
                               "normalisation": "inside the exported function (x / 127.5 - 1, or the "
                                                "checkpoint's pixel mean/std)"}
    if "audio" in config.modalities:
        preprocess["audio"] = {"sample_rate": int(d.audio_rate), "samples": int(d.audio_samples),
                               "mono": "channels averaged", "resampling": "polyphase FIR (Kaiser 5)",
                               "spectrogram": {"kind": "log-mel, inside the exported function",
                                               "n_mels": int(m.audio.n_mels), "window": int(m.audio.window),
                                               "hop": int(m.audio.hop)}}
    if "text" in config.modalities:
        tokenizer = media.make_tokenizer(d.tokenizer)
        ids = ("tokenizer ids + 2; 0 = padding, 1 = reserved" if tokenizer.offset else
               f"the checkpoint tokenizer's own ids; padded with {tokenizer.pad_id}")
        preprocess["text"] = {"length": int(d.text_length), "tokenizer": files["tokenizer"], "ids": ids}
    spec = {
        "format": predict_lib.FORMAT,
        "task": str(config.loss.task),
        "modalities": list(config.modalities),
        "class_names": class_names,
        "inputs": {k: {"shape": list(s), "dtype": dt} for k, (s, dt) in input_specs(config).items()},
        "outputs": {"logits": [None, len(class_names)], "probabilities": [None, len(class_names)]},
        "preprocess": preprocess,
        "params_file": predict_lib.PARAMS_FILE,
        "param_dtype": dtype,
        "function_file": predict_lib.FUNCTION_FILE,
        "platforms": list(platforms),
        "source": {"workdir": os.path.abspath(workdir), "step": int(step)},
        "versions": {**meta.get("versions", {}), "jax": jax.__version__},
        "config": config.to_dict(),
    }
    if config.loss.task == "generate":
        settings = decoding.DecodeSettings.from_config(config)
        vocab = media.target_vocab(media.make_tokenizer(d.tokenizer))
        spec.update(class_names=[], outputs={"tokens": [None, settings.max_length]},
                    function_file=predict_lib.GENERATE_FILE)
        spec["generate"] = {"max_length": settings.max_length, "tokenizer": files["tokenizer"],
                            "vocab": dataclasses.asdict(vocab),
                            "decode": {k: v for k, v in dataclasses.asdict(settings).items() if k != "cache"},
                            "target_length": int(d.target_length)}
    return spec


def _listed_files(out: str) -> set[str] | None:
    """The top-level names an export in `out` wrote (its export.json, its file table and the
    files its spec names); None if `out` holds no export."""
    try:
        spec = predict_lib.read_spec(out, verify=False)
    except ValueError:
        return None
    names = {n.split("/")[0] for n in spec.get(predict_lib.FILES, {})}
    names |= {predict_lib.SPEC_FILE, spec["params_file"], spec["function_file"]}
    for part in spec["preprocess"].values():  # tokenizer.model, tokenizer/, image_processor/
        for field in ("tokenizer", "processor"):
            name = str(part.get(field, "")) if isinstance(part, dict) else ""
            if name not in ("", "bytes"):
                names.add(name.removeprefix(media.CHECKPOINT_PREFIX).split("/")[0])
    return names


def check_out(out: str, overwrite: bool) -> None:
    """UserError, before any work, if `out` cannot receive the export: a file, a folder of
    other files, an export without --overwrite, or a place that cannot be written."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UserError(f"--out={out} exists and is not a folder; choose another path")
        present = set(os.listdir(out))
        if present:
            listed = _listed_files(out)
            if listed is None:
                raise UserError(f"--out={out} exists and is not an export; choose another folder")
            if not overwrite:
                raise UserError(f"--out={out} already holds an export; pass --overwrite to replace it")
            foreign = sorted(present - listed)
            if foreign:  # --overwrite replaces the export, never files the export did not write
                raise UserError(f"--out={out} holds {foreign[0]!r}, which the export there did not write"
                                f"{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}; "
                                "move it out or choose another folder")
    parent = os.path.dirname(os.path.abspath(out))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:  # a real write, not os.access: root passes that on read-only mounts
        os.rmdir(tempfile.mkdtemp(prefix=".mmjax-probe-", dir=existing))
    except OSError as e:
        raise UserError(f"--out={out}: cannot write in {existing} ({e.strerror}); choose a writable place") from None


def _replace_folder(tmp: str, out: str, overwrite: bool) -> None:
    """Moves the finished temporary folder to `out`; an older export there (check_out made
    sure it holds only its own files) is replaced only after the new one is complete."""
    if not os.path.exists(out):
        os.rename(tmp, out)
        return
    old = f"{out}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def export(workdir: str, out: str, *, step: int | str | None = None, dtype: str = "float32",
           platforms=PLATFORMS, overwrite: bool = False, log=print) -> dict:
    """Exports a run's checkpoint to the folder `out` (see module docstring); returns its spec."""
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"--dtype={dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
    check_out(out, overwrite)
    config, params, step, meta = restore_params(workdir, step, log)
    class_names = _class_names(config, meta)
    flat, config, merged = merge_adapters(flatten_params(params), config)
    if dtype == "bfloat16":
        flat = {k: v.astype(jnp.bfloat16) for k, v in flat.items()}
    # A 'generate' model has no head: its class count (>= 1, as the training run built it) is unused.
    function = export_function(config, max(1, len(class_names)), flat, platforms=platforms)

    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out={out}: cannot create {parent} ({e.strerror})") from None
    check_out(out, overwrite)  # again: the folder may have changed while the run was restored
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; an export is an ordinary folder
    try:
        try:
            files = _copy_preprocessing(config, tmp)
        except (ValueError, OSError) as e:
            raise UserError(f"the run's preprocessing files: {e}") from None
        spec = _spec(config, class_names, step, workdir, meta, dtype, platforms, files)
        if merged:
            spec["source"]["lora_merged"] = merged
        predict_lib.write_safetensors(os.path.join(tmp, predict_lib.PARAMS_FILE), flat,
                                      {"format": predict_lib.FORMAT, "step": step})
        with open(os.path.join(tmp, spec["function_file"]), "wb") as f:
            f.write(function)
        spec[predict_lib.FILES] = predict_lib.file_digests(tmp)  # verified by every loader
        with open(os.path.join(tmp, predict_lib.SPEC_FILE), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=2)
            f.write("\n")
        if os.path.exists(out) and not os.listdir(out):
            os.rmdir(out)
        _replace_folder(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    n_params = sum(v.size for v in flat.values())
    outputs = (f"text of up to {spec['generate']['max_length']} tokens" if config.loss.task == "generate"
               else f"{len(class_names)} classes")
    log(f"exported {workdir} step {step} ({n_params:,} {dtype} parameters, {outputs}, "
        f"{', '.join(config.modalities)}; {', '.join(platforms)}) to {out} ({size / 1e6:.2f} MB)")
    return spec


# ---------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmjax.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="the training run's workdir")
    p.add_argument("--step", default=None,
                   help="best, latest or a step number (default: the best, when config.select_best recorded one, "
                        "else the latest)")
    p.add_argument("--out", required=True, help="the export folder to write")
    p.add_argument("--dtype", default="float32", help="parameter dtype in the export: float32 or bfloat16")
    p.add_argument("--platforms", default=",".join(PLATFORMS), help="comma-separated: cpu,cuda,tpu")
    p.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
    p.add_argument("--help_config", action="store_true",
                   help="list every config key of a run (the export keeps the run's config)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if cli.help_requested(argv) == "config":  # before argparse, which wants --workdir and --out
        cli.show_help("config", "")
        return 0
    args = _parser().parse_args(argv)
    try:
        platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
        unknown = [p for p in platforms if p not in PLATFORMS]
        if not platforms or unknown:
            raise UserError(f"--platforms={args.platforms!r}: choose from {', '.join(PLATFORMS)}")
        export(args.workdir, args.out, step=args.step, dtype=args.dtype, platforms=platforms,
               overwrite=args.overwrite)
    except UserError as e:
        print(f"mmjax.export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
