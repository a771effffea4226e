"""Trains a multimodal model. The same command runs on a laptop or on every host of a pod:

    python -m mmjax.train --config=configs/base.py --workdir=runs/base [--config.key=value]

Running it again resumes from the latest checkpoint in the workdir. The loop below reads
top to bottom in sections: mesh, input, model and optimizer shapes, sharded state
(restored or initialised), the jitted steps, and the loop with metrics and checkpoints.

Data parallelism is jit with shardings over the mesh (what jax.pmap is built on today);
the batch is split over the mesh's data x fsdp axes and parameters as the logical rules
in mmjax/sharding.py say. No step needs explicit per-device code yet; where one does,
it uses jax.shard_map.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from flax import struct

from mmjax import checkpoint as ckpt_lib
from mmjax import config as config_lib
from mmjax import distributed
from mmjax import flops as flops_lib
from mmjax import hardware
from mmjax import metrics as metrics_lib
from mmjax import objectives
from mmjax import prefetch
from mmjax import sharding
from mmjax.config import UserError
from mmjax.data import pipeline, sources
from mmjax.models.multimodal import build_model
from mmjax.preemption import RESUME_EXIT_CODE, Preempted, PreemptionWatcher

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard events.")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


# ============================================================================ optimizer
def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warmup, cosine decay and global-norm clipping; no decay on 1-D params."""
    o = config.optim
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps, decay_steps=config.total_steps, end_value=0.0
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask),
    )
    return tx, schedule


# ============================================================================ batch layout
def batch_shapes(config: ml_collections.ConfigDict, batch_size: int, *, eval: bool = False) -> dict[str, tuple]:
    """(shape, dtype) of every field the pipeline yields for the configured modalities."""
    d, shapes = config.data, {"label": ((batch_size,), np.int32)}
    if "image" in config.modalities:
        shapes["image"] = ((batch_size, d.image_size, d.image_size, 3), np.uint8)
    if "text" in config.modalities:
        shapes["text"] = ((batch_size, d.text_length), np.int32)
    if "audio" in config.modalities:
        shapes["audio"] = ((batch_size, d.audio_samples), np.float32)
        shapes["audio_length"] = ((batch_size,), np.int32)
    if eval:
        shapes["weight"] = ((batch_size,), np.float32)
    return shapes


@contextlib.contextmanager
def _as_user_error(where: str):
    """Turns the ValueErrors that library code raises for bad input into UserErrors."""
    try:
        yield
    except ValueError as e:
        message = str(e)
        raise UserError(message if "config." in message else f"{where}: {message}") from None


def _versions() -> dict[str, str]:
    names = ("mmjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")
    return {n: importlib.metadata.version(n) for n in names}


# ============================================================================ state and steps
def sharded_state_shapes(model: nn.Module, tx: optax.GradientTransformation, shapes: dict, mesh):
    """Abstract sharded TrainState, its shardings, and a jitted init that creates it sharded.

    The state is born sharded: shapes first (no memory), shardings from the logical axis
    names, then init compiled with those output shardings, so no device ever holds more
    than its shard.
    """

    def init_state(rng: jax.Array) -> TrainState:
        dummy = {k: jnp.zeros(s, dt) for k, (s, dt) in shapes.items()}
        params = model.init({"params": rng, "dropout": rng}, dummy, train=False)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    rng_shape = jax.eval_shape(jax.random.key, 0)  # abstract: nothing is placed on a device
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        boxed = jax.eval_shape(init_state, rng_shape)
        shardings = sharding.logical_shardings(boxed, mesh)
    abstract = jax.tree.map(lambda sh, s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shardings, nn.unbox(boxed))

    def init_fn(rng: jax.Array) -> TrainState:
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return jax.jit(lambda r: nn.unbox(init_state(r)), out_shardings=shardings)(rng)

    return abstract, shardings, init_fn


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, dropout_rng,
                    *, objective: objectives.Objective | None = None):
    """One optimizer update on a global batch; returns the new state and scalar metrics.

    `objective` (default: classification) says what the loss is; the metrics are
    'train/loss', the objective's own ('train/accuracy', ...), 'train/grad_norm',
    'train/learning_rate' and, for contrastive runs, 'train/contrastive_scale'.
    """
    objective = objective or objectives.Objective()

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(dropout_rng, state.step)
        weights = jnp.ones(jax.tree.leaves(batch)[0].shape[:1], jnp.float32)

        def loss_fn(params):
            outputs = model.apply(
                {"params": params}, batch, train=True, aux=objective.needs_aux, rngs={"dropout": rng}
            )
            sums = objective.sums(outputs, batch, weights)
            extra = {"train/contrastive_scale": outputs[1]["scale"]} if objective.needs_aux else {}
            return objective.loss(sums), (sums, extra)

        (_, (sums, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
        )
        metrics = {
            **objective.metrics(sums, "train/"),
            **extra,
            "train/grad_norm": optax.global_norm(grads),
            "train/learning_rate": schedule(state.step),
        }
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module, *, objective: objectives.Objective | None = None):
    """Weighted sums of one eval batch (padding rows have weight 0), per objective part;
    for each modality in objective.eval_without, also the task sums with it absent."""
    objective = objective or objectives.Objective()

    def eval_step(state: TrainState, batch: dict) -> dict:
        apply = lambda b, aux: model.apply({"params": state.params}, b, train=False, aux=aux)  # noqa: E731
        sums = objective.sums(apply(batch, objective.needs_aux), batch, batch["weight"])
        task_only = dataclasses.replace(objective, contrastive="none")
        for m in objective.eval_without:
            without = objective.without(batch, m)
            sums[f"without_{m}"] = task_only.sums(apply(without, False), without, batch["weight"])["task"]
        return sums

    return eval_step


def compile_steps(model, tx, schedule, dropout_rng, config, mesh, abstract_state, state_shardings):
    """Compiles the train step (state donated) and the eval step ahead of time.

    The loop never pays for tracing, and a shape mismatch between pipeline and model
    fails here, once, with both shapes in the message.
    """
    batch_sharding = sharding.batch_sharding(mesh)
    with _as_user_error("config.loss"):
        objective = objectives.Objective.from_config(config)

    def abstract_batch(shapes):
        return {k: jax.ShapeDtypeStruct(s, dt, sharding=batch_sharding) for k, (s, dt) in shapes.items()}

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        train_step = (
            jax.jit(
                make_train_step(model, tx, schedule, dropout_rng, objective=objective),
                out_shardings=(state_shardings, None),
                donate_argnums=0,
            )
            .lower(abstract_state, abstract_batch(batch_shapes(config, config.batch_size)))
            .compile()
        )
        eval_step = (
            jax.jit(make_eval_step(model, objective=objective))
            .lower(abstract_state, abstract_batch(batch_shapes(config, config.batch_size, eval=True)))
            .compile()
        )
    return train_step, eval_step


# ============================================================================ training
def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) a run in `workdir`; returns the final eval metrics."""
    config_lib.validate(config)
    is_primary = jax.process_index() == 0

    # ---------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(config.batch_size, mesh)

    # ---------------------------------------------------------------- input
    with _as_user_error("config.data"):  # a bad path or a spec that does not fit the config
        train_source = sources.open_source(config.data.train, "train", config.data)
        eval_source = sources.open_source(config.data.eval, "eval", config.data)
        # The data decide the modalities unless config.modalities asks for fewer.
        modalities = sources.choose_modalities(config.modalities, train_source.spec, eval_source.spec)
        for source in (train_source, eval_source):
            sources.check_spec(source.spec, config.data, modalities)
        sources.check_same_classes(train_source.spec, eval_source.spec)
        vocab = pipeline.check_preprocessing(config.data, modalities)  # tokenizer ids, 0 without text
    if vocab > config.model.text.vocab_size:
        raise UserError(f"config.model.text.vocab_size={config.model.text.vocab_size} is smaller than "
                        f"the tokenizer's {vocab} ids; set --config.model.text.vocab_size={vocab}")
    if tuple(modalities) != tuple(config.modalities):
        config.modalities = modalities  # model and batch shapes follow the data
        if is_primary:
            print(f"modalities: {', '.join(modalities)} (those the data set has)", flush=True)
    num_classes = int(train_source.spec["num_classes"])

    # ---------------------------------------------------------------- model and optimizer shapes
    with _as_user_error("config.model"):  # unknown encoder/fusion kind and the like
        model = build_model(config, num_classes)
    tx, schedule = make_optimizer(config)
    train_shapes = batch_shapes(config, config.batch_size)
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    abstract_state, state_shardings, init_fn = sharded_state_shapes(model, tx, train_shapes, mesh)

    # ---------------------------------------------------------------- state: restore or initialise
    checkpointer = ckpt_lib.Checkpointer(
        f"{workdir}/checkpoints", max_to_keep=config.keep_checkpoints, async_save=True
    )
    start_step = checkpointer.latest_step() or 0
    if start_step >= config.total_steps:
        if is_primary:
            print(f"training already finished: {workdir} has a checkpoint at step {start_step} "
                  f"(config.total_steps={config.total_steps}); nothing to do", flush=True)
        checkpointer.close()
        return {}
    if start_step:
        state, data_state, _ = checkpointer.restore(start_step, abstract_state)
        start_batch = int(data_state["next_batch"])
        if is_primary:
            print(f"resuming from {workdir}/checkpoints/{start_step}", flush=True)
    else:
        state = init_fn(init_rng)
        start_batch = 0
    if is_primary and not start_step:
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        print(f"model: {n_params:,} parameters | mesh {dict(mesh.shape)} | "
              f"{jax.device_count()} {jax.devices()[0].platform} devices, {jax.process_count()} processes", flush=True)

    # ---------------------------------------------------------------- the jitted steps
    compile_start = time.perf_counter()
    train_step, eval_step = compile_steps(model, tx, schedule, dropout_rng, config, mesh, abstract_state, state_shardings)
    compile_seconds = time.perf_counter() - compile_start

    # ---------------------------------------------------------------- evaluation
    objective = objectives.Objective.from_config(config)

    def evaluate(state: TrainState) -> dict[str, float]:
        """The objective's metrics ('eval/loss', 'eval/accuracy', ...) over the eval set."""
        totals = None
        for host_batch in pipeline.eval_batches(eval_source, config, global_batch=config.batch_size):
            sums = eval_step(state, sharding.host_batch_to_global(host_batch, mesh))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        return {k: float(v) for k, v in objective.metrics(totals, "eval/").items()}

    # ---------------------------------------------------------------- the loop
    writers = metrics_lib.create_writers(workdir, config.total_steps, is_primary=is_primary)
    writers.write(start_step, {"train/compile_seconds": compile_seconds})
    # Model FLOPs utilisation: analytic FLOPs (mmjax/flops.py) against every device's peak.
    flops_per_example = flops_lib.train_flops_per_example(config, num_classes)
    peak = hardware.peak_flops_per_device(config)
    if is_primary and not start_step:
        print(f"{flops_lib.describe(config, num_classes)}; peak {peak.flops / 1e12:.3g} TFLOP/s per device "
              f"({peak.source})", flush=True)
    meta = {
        "config": config.to_dict(),
        "mesh": dict(mesh.shape),
        "process_count": jax.process_count(),
        "num_classes": num_classes,
        "versions": _versions(),
    }
    train_iter = prefetch.Prefetcher(  # the next batches are read and placed while a step runs
        pipeline.train_batches(train_source, config, global_batch=config.batch_size, start_batch=start_batch),
        place=lambda host_batch: sharding.host_batch_to_global(host_batch, mesh),
        size=int(config.data.get("prefetch", 2)),
    )
    window = metrics_lib.MeanAccumulator()
    preemption = PreemptionWatcher()
    pending = None  # metrics of the previous step, fetched one step late so the host never waits
    eval_metrics: dict[str, float] = {}
    for step in range(start_step, config.total_steps):
        wait_start = time.perf_counter()
        batch = next(train_iter)
        window.data_wait(time.perf_counter() - wait_start)
        state, step_metrics = train_step(state, batch)
        if pending is not None:
            window.add(jax.device_get(pending))
        pending, done = step_metrics, step + 1
        is_last = done == config.total_steps

        if done % config.log_every == 0 or is_last:
            window.add(jax.device_get(pending))
            pending = None
            summary = window.summary(config.batch_size)
            summary.update(metrics_lib.flops_metrics(
                summary["train/examples_per_sec"], flops_per_example, peak.flops * jax.device_count()))
            writers.write(done, summary)
            window.reset()
        side_start = time.perf_counter()
        if done % config.eval_every == 0 or is_last:
            eval_metrics = evaluate(state)
            writers.write(done, eval_metrics)
        stop = preemption.should_stop(done)
        if done % config.checkpoint_every == 0 or is_last or stop:
            data_state = {"next_batch": start_batch + done - start_step, "workers": config.data.workers}
            checkpointer.save(done, state, data_state, meta)
        if stop:
            train_iter.close()
            checkpointer.close()  # waits until the checkpoint is complete on disk
            writers.close()
            raise Preempted(done)
        window.exclude(time.perf_counter() - side_start)  # evals and saves are not training time

    train_iter.close()
    checkpointer.close()
    writers.close()
    if is_primary:
        final = " | ".join(f"{k} {v:.4f}" for k, v in sorted(eval_metrics.items()))
        print(f"done: {config.total_steps} steps | {final}", flush=True)
    return eval_metrics


# ============================================================================ entry point
def _parse_command_line(argv: list[str]) -> tuple[ml_collections.ConfigDict, str]:
    spec, overrides, rest = config_lib.split_config_args(argv[1:])
    flags.FLAGS(argv[:1] + rest)
    if spec is None:
        raise UserError("--config is required, e.g. --config=configs/base.py")
    if not flags.FLAGS.workdir:
        raise UserError("--workdir is required, e.g. --workdir=runs/base")
    config = config_lib.load_config_file(spec)
    config_lib.apply_overrides(config, overrides)
    return config, flags.FLAGS.workdir


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        config, workdir = _parse_command_line(argv)
        distributed.initialize()  # before anything touches a device
        train(config, workdir)
    except UserError as e:
        print(f"mmjax.train: error: {e}", file=sys.stderr)
        return 2
    except flags.Error as e:
        print(f"mmjax.train: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"mmjax.train: {e}", file=sys.stderr, flush=True)
        return RESUME_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
