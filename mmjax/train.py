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
from mmjax import faults
from mmjax import flops as flops_lib
from mmjax import hardware
from mmjax import metrics as metrics_lib
from mmjax import objectives
from mmjax import prefetch
from mmjax import pretrained
from mmjax import sharding
from mmjax.config import UserError
from mmjax.contract import presence_key
from mmjax.data import pipeline, sources, targets
from mmjax.models.multimodal import build_model
from mmjax.preemption import RESUME_EXIT_CODE, Preempted, PreemptionWatcher

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard events.")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


# ============================================================================ optimizer
def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer config.optim.kind names, and its learning-rate schedule.

    'adamw' (default): AdamW with linear warmup, cosine decay and global-norm clipping; no
    decay on 1-D params. 'adam': plain Adam at a constant lr, as Keras' Adam (the seed
    model's); warmup_steps, weight_decay and grad_clip do not apply to it.
    """
    o = config.optim
    kind, eps = o.get("kind", "adamw"), o.get("eps", 1e-8)
    if kind == "adam":
        schedule = optax.constant_schedule(o.lr)
        tx = optax.adam(schedule, b1=o.b1, b2=o.b2, eps=eps)
    elif kind == "adamw":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps, decay_steps=config.total_steps, end_value=0.0
        )
        decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
        tx = optax.chain(
            optax.clip_by_global_norm(o.grad_clip),
            optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=eps, weight_decay=o.weight_decay, mask=decay_mask),
        )
    else:
        raise UserError(f"config.optim.kind={kind!r} is not one of {list(config_lib.OPTIMIZERS)}")
    tx = pretrained.freeze(tx, config.get("frozen", ()))  # config.frozen: no updates, no state
    return tx, schedule


# ============================================================================ batch layout
def batch_shapes(config: ml_collections.ConfigDict, batch_size: int, *, eval: bool = False,
                 spec: dict | None = None) -> dict[str, tuple]:
    """(shape, dtype) of every field the pipeline yields for the configured modalities.

    `spec` (the data set's spec.json) decides the target fields for config.loss.task and
    the present_<modality> flags of modalities it marks optional; None means a
    classification data set whose examples have every modality.
    """
    d, shapes = config.data, {}
    for key, (shape, dtype) in targets.batch_fields(spec, targets.task_of(config)).items():
        shapes[key] = ((batch_size, *shape), dtype)
    if "image" in config.modalities:
        shapes["image"] = ((batch_size, d.image_size, d.image_size, 3), np.uint8)
    if "text" in config.modalities:
        shapes["text"] = ((batch_size, d.text_length), np.int32)
    if "audio" in config.modalities:
        shapes["audio"] = ((batch_size, d.audio_samples), np.float32)
        shapes["audio_length"] = ((batch_size,), np.int32)
    for m in sources.optional_modalities(spec):
        if m in config.modalities:
            shapes[presence_key(m)] = ((batch_size,), np.bool_)
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
    'train/learning_rate', 'train/skipped_steps' and, for contrastive runs,
    'train/contrastive_scale'.

    A step whose loss, gradient or update is not finite keeps the old parameters and
    optimizer state (the step count still advances) and reports train/skipped_steps=1.
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

        (loss, (sums, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(updates))
        keep_if_bad = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = state.replace(
            step=state.step + 1,
            params=keep_if_bad(optax.apply_updates(state.params, updates), state.params),
            opt_state=keep_if_bad(opt_state, state.opt_state),
        )
        metrics = {
            **objective.metrics(sums, "train/"),
            **extra,
            "train/grad_norm": grad_norm,
            "train/learning_rate": schedule(state.step),
            "train/skipped_steps": 1.0 - finite.astype(jnp.float32),
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


def compile_steps(model, tx, schedule, dropout_rng, config, mesh, abstract_state, state_shardings,
                  *, train_spec: dict | None = None, eval_spec: dict | None = None):
    """Compiles the train step (state donated) and the eval step ahead of time.

    The loop never pays for tracing, and a shape mismatch between pipeline and model
    fails here, once, with both shapes in the message. The specs of the train and eval
    data decide their batch layouts (see batch_shapes).
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
            .lower(abstract_state, abstract_batch(batch_shapes(config, config.batch_size, spec=train_spec)))
            .compile()
        )
        eval_step = (
            jax.jit(make_eval_step(model, objective=objective))
            .lower(abstract_state, abstract_batch(batch_shapes(config, config.batch_size, eval=True, spec=eval_spec)))
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
        task = targets.task_of(config)  # config.loss.task must be one the data are labelled for
        for source in (train_source, eval_source):
            targets.check_task(source.spec, task, source.directory)
        targets.check_same_targets(train_source.spec, eval_source.spec, task)
        vocab = pipeline.check_preprocessing(config.data, modalities)  # tokenizer ids, 0 without text
    if vocab > config.model.text.vocab_size:
        raise UserError(f"config.model.text.vocab_size={config.model.text.vocab_size} is smaller than "
                        f"the tokenizer's {vocab} ids; set --config.model.text.vocab_size={vocab}")
    if tuple(modalities) != tuple(config.modalities):
        config.modalities = modalities  # model and batch shapes follow the data
        if is_primary:
            print(f"modalities: {', '.join(modalities)} (those the data set has)", flush=True)
    num_classes = targets.num_outputs(train_source.spec, task)  # head outputs: classes or targets

    # ---------------------------------------------------------------- model and optimizer shapes
    with _as_user_error("config.model"):  # unknown encoder/fusion kind and the like
        pretrained.configure_towers(config)  # config.model.<m>.init_from: the checkpoint's architecture
        model = build_model(config, num_classes)
    tx, schedule = make_optimizer(config)
    train_shapes = batch_shapes(config, config.batch_size, spec=train_source.spec)
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    abstract_state, state_shardings, init_fn = sharded_state_shapes(model, tx, train_shapes, mesh)

    # ---------------------------------------------------------------- state: restore or initialise
    checkpointer = ckpt_lib.Checkpointer(
        f"{workdir}/checkpoints", max_to_keep=config.keep_checkpoints, async_save=True
    )
    latest = checkpointer.latest_step() or 0
    if latest >= config.total_steps:
        if is_primary:
            print(f"training already finished: {workdir} has a checkpoint at step {latest} "
                  f"(config.total_steps={config.total_steps}); nothing to do", flush=True)
        checkpointer.close()
        return {}
    # The newest checkpoint whose arrays match their checksums; damaged ones are reported
    # and skipped, and a checkpoint of a different model is refused (mmjax/checkpoint.py).
    log = (lambda line: print(line, flush=True)) if is_primary else (lambda line: None)
    restored = checkpointer.restore_latest_intact(abstract_state, config.to_dict(), log=log)
    start_step = restored[0] if restored else 0
    if restored:
        _, state, data_state, _ = restored
        start_batch = int(data_state["next_batch"])
        if is_primary:
            print(f"resuming from {workdir}/checkpoints/{start_step}", flush=True)
    else:
        state = init_fn(init_rng)
        state = pretrained.load_into(state, config)  # an export's parameters, if config.init_from
        start_batch = 0
    if is_primary and not start_step:
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        print(f"model: {n_params:,} parameters | mesh {dict(mesh.shape)} | "
              f"{jax.device_count()} {jax.devices()[0].platform} devices, {jax.process_count()} processes", flush=True)

    # ---------------------------------------------------------------- the jitted steps
    compile_start = time.perf_counter()
    train_step, eval_step = compile_steps(model, tx, schedule, dropout_rng, config, mesh, abstract_state,
                                          state_shardings, train_spec=train_source.spec, eval_spec=eval_source.spec)
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
    # On resume, metrics.jsonl forgets rows past start_step: steps that ran after the last
    # checkpoint before a crash run again and are logged again.
    writers = metrics_lib.create_writers(workdir, config.total_steps, is_primary=is_primary, resume_step=start_step)
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
        "class_names": list(train_source.spec.get("class_names", [])),  # for mmjax.export
        "versions": _versions(),
    }
    train_iter = prefetch.Prefetcher(  # the next batches are read and placed while a step runs
        pipeline.train_batches(train_source, config, global_batch=config.batch_size, start_batch=start_batch),
        place=lambda host_batch: sharding.host_batch_to_global(host_batch, mesh),
        size=int(config.data.get("prefetch", 2)),
    )
    window = metrics_lib.MeanAccumulator()
    preemption = PreemptionWatcher()
    save_timer = ckpt_lib.SaveTimer(config.checkpoint_every_seconds)
    bad_steps = faults.BadSteps(config.max_bad_steps, workdir, lambda b: pipeline.batch_example_indices(
        train_source, config, global_batch=config.batch_size, batch=b))
    pending = None  # metrics of the previous step, fetched one step late so the host never waits

    def fetch_pending(step: int) -> None:
        """Adds step `step`'s metrics to the window; stops after max_bad_steps skipped in a row."""
        fetched = jax.device_get(pending)
        window.add(fetched)
        too_many = bad_steps.update(step, start_batch + step - 1 - start_step, fetched)
        if too_many is not None:
            train_iter.close()
            checkpointer.close()
            writers.close()
            raise too_many

    eval_metrics: dict[str, float] = {}
    for step in range(start_step, config.total_steps):
        wait_start = time.perf_counter()
        batch = next(train_iter)
        window.data_wait(time.perf_counter() - wait_start)
        state, step_metrics = train_step(state, batch)
        if pending is not None:
            fetch_pending(step)
        pending, done = step_metrics, step + 1
        is_last = done == config.total_steps

        if done % config.log_every == 0 or is_last:
            fetch_pending(done)
            pending = None
            summary = window.summary(config.batch_size)
            summary.update(metrics_lib.flops_metrics(
                summary["train/examples_per_sec"], flops_per_example, peak.flops * jax.device_count()))
            writers.write(done, summary)
            window.reset()
        faults.kill_after_step(done, checkpointer.wait)  # no-op unless MMJAX_FAULT_INJECT asks (tests)
        side_start = time.perf_counter()
        if done % config.eval_every == 0 or is_last:
            eval_metrics = evaluate(state)
            writers.write(done, eval_metrics)
        stop = preemption.should_stop(done)
        if done % config.checkpoint_every == 0 or is_last or stop or save_timer.due():
            data_state = {"next_batch": start_batch + done - start_step, "workers": config.data.workers}
            checkpointer.save(done, state, data_state, meta)
            save_timer.saved()
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
