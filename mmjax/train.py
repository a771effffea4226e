"""Trains a multimodal model. The same command runs on a laptop or on every host of a pod:

    python -m mmjax.train --config=configs/base.py --workdir=runs/base [--config.key=value]

Running it again resumes from the latest checkpoint in the workdir. The loop below reads
top to bottom in sections: mesh, input, model and optimizer shapes, sharded state
(restored or initialised), the compiled steps and evaluators, and the loop with metrics,
evals and checkpoints. What it is built from (state, optimizer, steps) is in
mmjax/trainer/, shared with mmjax.compile, mmjax.export and bench/; the evaluators are in
mmjax/evaluators/ and chosen by config.evals.

Data parallelism is jit with shardings over the mesh (what jax.pmap is built on today);
the batch is split over the mesh's data x fsdp axes and parameters as the logical rules
in mmjax/sharding.py say. No step needs explicit per-device code yet; where one does,
it uses jax.shard_map.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import time

import jax
import ml_collections
from absl import flags

from mmjax import best as best_lib
from mmjax import checkpoint as ckpt_lib
from mmjax import config as config_lib
from mmjax import compilation_cache, distributed, evaluators, faults, hardware, objectives, prefetch, pretrained
from mmjax import preemption, sharding, trainer
from mmjax import workdir as workdir_lib
from mmjax import flops as flops_lib
from mmjax import metrics as metrics_lib
from mmjax.config import UserError
from mmjax.config import cli as config_cli
from mmjax.data import pipeline, sources, targets
from mmjax.models.multimodal import build_model
from mmjax.preemption import Preempted, PreemptionWatcher
from mmjax.trainer import as_user_error

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard events.")


def _versions() -> dict[str, str]:
    names = ("mmjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")
    return {n: importlib.metadata.version(n) for n in names}


# ============================================================================ training
def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) a run in `workdir`; returns the latest metrics of every evaluator."""
    config_lib.validate(config)
    is_primary = jax.process_index() == 0
    prefix = metrics_lib.host_prefix()  # '[host 1/4] ' on several hosts
    log = (lambda line: print(prefix + line, flush=True)) if is_primary else (lambda line: None)
    injection = faults.Injection.from_env()  # read once; does nothing unless a test asks

    # Teardown in one place: whatever ends the run (the last step, an exception in a step or
    # an evaluator, too many bad steps, preemption, Ctrl-C) closes the prefetcher, the writers
    # and the checkpointer (which waits for a save in flight), then releases the workdir.
    with contextlib.ExitStack() as opened:
        # ------------------------------------------------------------ workdir, signals, compilation cache
        signals = opened.enter_context(preemption.handle_signals())  # main() installed them first thing
        lock = workdir_lib.claim(workdir)  # a file, unwritable or in use by another run: one line, now
        opened.callback(lock.release)
        opened.enter_context(compilation_cache.persistent(config.compile_cache, workdir))

        # ------------------------------------------------------------ mesh
        mesh = sharding.make_mesh(config.mesh)
        sharding.check_batch_size(config.batch_size, mesh)

        # ------------------------------------------------------------ input
        with as_user_error("config.model"):  # config.model.<m>.init_from: the checkpoint's architecture
            pretrained.configure_towers(config)  # and preprocessing (data.tokenizer, data.image_processor)
        with as_user_error("config.data"):  # a bad path or a spec that does not fit the config
            train_source = sources.open_source(config.data.train, "train", config.data)
            # Each data set an evaluator reads (config.evals), opened once.
            eval_sources = {name: sources.open_source(name, "eval", config.data)
                            for name in evaluators.data_names(config)}
            everything = (train_source, *eval_sources.values())
            # The data decide the modalities unless config.modalities asks for fewer.
            modalities = sources.choose_modalities(config.modalities, *(s.spec for s in everything))
            for line in sources.follow_data(config.data, [s.spec for s in everything], modalities):
                log(line)  # image size, audio and text length the data decide unless the config sets them
            for source in everything:
                sources.check_spec(source.spec, config.data, modalities)
            for source in eval_sources.values():
                sources.check_same_classes(train_source.spec, source.spec)
            task = targets.task_of(config)  # config.loss.task must be one the data are labelled for
            for source in everything:
                targets.check_task(source.spec, task, source.directory)
                if note := targets.cut_targets_note(source.spec, task, config.data.target_length, source.directory):
                    log(note)  # generate: targets longer than data.target_length are cut
            for source in eval_sources.values():
                targets.check_same_targets(train_source.spec, source.spec, task)
            vocab = pipeline.check_preprocessing(config, modalities)  # tokenizer ids, 0 without text
        if vocab > config.model.text.vocab_size:
            raise UserError(f"config.model.text.vocab_size={config.model.text.vocab_size} is smaller than "
                            f"the tokenizer's {vocab} ids; set --config.model.text.vocab_size={vocab}")
        if tuple(modalities) != tuple(config.modalities):
            config.modalities = modalities  # model and batch shapes follow the data
            log(f"modalities: {', '.join(modalities)} (those the data set has)")
        num_classes = targets.num_outputs(train_source.spec, task)  # head outputs: classes or targets

        # ------------------------------------------------------------ model and optimizer shapes
        with as_user_error("config.model"):  # unknown encoder/fusion kind and the like
            model = build_model(config, num_classes)
        with as_user_error("config.loss"):
            objective = objectives.Objective.from_config(config)
        tx, schedule = trainer.make_optimizer(config)
        train_shapes = trainer.batch_shapes(config, config.batch_size, spec=train_source.spec)
        init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
        abstract_state, state_shardings, init_fn = trainer.sharded_state_shapes(model, tx, train_shapes, mesh,
                                                                                objective=objective)

        # ------------------------------------------------------------ state: restore or initialise
        # config.select_best: the best evaluation's step is kept beside the latest ones (mmjax/best.py).
        tracker = best_lib.Tracker.from_config(config)
        checkpointer = opened.enter_context(contextlib.closing(ckpt_lib.Checkpointer(
            f"{workdir}/checkpoints", max_to_keep=config.keep_checkpoints, async_save=True,
            temporary_path_class=injection.checkpoint_temporary_path_class(),
            keep_best=tracker.mode if tracker else "",
        )))
        # The newest checkpoint whose arrays and data position match their checksums; damaged
        # ones are reported and skipped, and a checkpoint of a different model is refused
        # (mmjax/checkpoint.py). Verified before "finished": a damaged last step is trained again.
        restored = checkpointer.restore_latest_intact(
            abstract_state, config.to_dict(), log=log,
            before_restore=lambda step: injection.signal_at("sigterm_during_restore", step))
        start_step = restored[0] if restored else 0
        if start_step >= config.total_steps:
            log(f"training already finished: {workdir} has an intact checkpoint at step {start_step} "
                f"(config.total_steps={config.total_steps}); nothing to do")
            return {}
        if restored:
            _, state, data_state, saved_meta = restored
            # batch_size, seed or data changed: the data order would not continue (refused unless allowed)
            if changed := ckpt_lib.resume_changes(saved_meta, config.to_dict()):
                where = f"{workdir}/checkpoints/{start_step}"
                if not config.allow_resume_change:
                    raise UserError(f"resuming {where} with a different {', '.join(changed)}: the data order "
                                    "would not continue where the run stopped; use the checkpoint's values, "
                                    "or --config.allow_resume_change=True to go on anyway")
                log(f"resuming with a different {', '.join(changed)} (config.allow_resume_change)")
            start_batch = int(data_state["next_batch"])
            if tracker:  # the same best and patience count as before the restart
                tracker.resume(data_state, log)
                if tracker.exhausted:
                    log(f"training already stopped early at step {start_step} ({tracker.stop_note()}); "
                        "nothing to do")
                    return {}
            log(f"resuming from {workdir}/checkpoints/{start_step}")
        else:
            state = init_fn(init_rng)
            state = pretrained.load_into(state, config)  # an export's parameters, if config.init_from
            start_batch = 0
        if not start_step:
            n_params = sum(x.size for x in jax.tree.leaves(state.params))
            log(f"model: {n_params:,} parameters | mesh {dict(mesh.shape)} | "
                f"{jax.device_count()} {jax.devices()[0].platform} devices, {jax.process_count()} processes")

        # ------------------------------------------------------------ compiled steps and evaluators
        injection.signal_at("sigterm_during_compile", start_step)
        compile_start = time.perf_counter()
        train_step = trainer.compile_train_step(model, tx, schedule, dropout_rng, config, mesh, abstract_state,
                                                state_shardings, spec=train_source.spec, objective=objective)
        context = evaluators.Context(config, model, objective, mesh, abstract_state, eval_sources)
        with as_user_error("config.evals"):
            evals = evaluators.build(config, context)  # each compiles its own eval step
        if tracker:
            tracker.check_reported({e.name: e.metric_names() for e in evals})
        compile_seconds = time.perf_counter() - compile_start

        # ------------------------------------------------------------ writers, input and bookkeeping
        # On resume, metrics.jsonl forgets rows past start_step: steps that ran after the last
        # checkpoint before a crash run again and are logged again.
        writers = metrics_lib.create_writers(workdir, config.total_steps, is_primary=is_primary,
                                             resume_step=start_step, wandb=config.wandb, config=config.to_dict(),
                                             prefix=prefix)
        opened.callback(writers.close)
        writers.write(start_step, {"train/compile_seconds": compile_seconds})
        # Model FLOPs utilisation: analytic FLOPs (mmjax/flops.py) against every device's peak.
        flops_per_example = flops_lib.train_flops_per_example(config, num_classes)
        peak = hardware.peak_flops_per_device(config)
        if not start_step:
            log(f"{flops_lib.describe(config, num_classes)}; peak {peak.flops / 1e12:.3g} TFLOP/s per device "
                f"({peak.source})")
        meta = {
            "config": config.to_dict(),
            "mesh": dict(mesh.shape),
            "process_count": jax.process_count(),
            "num_classes": num_classes,
            "class_names": list(train_source.spec.get("class_names", [])),  # for mmjax.export
            "versions": _versions(),
        }
        train_iter = opened.enter_context(prefetch.Prefetcher(  # the next batches are read and placed while a step runs
            pipeline.train_batches(train_source, config, global_batch=config.batch_size, start_batch=start_batch),
            place=lambda host_batch: sharding.host_batch_to_global(host_batch, mesh),
            size=config.data.prefetch,
        ))
        window = metrics_lib.MeanAccumulator()
        watcher = PreemptionWatcher(signals)
        profiler = opened.enter_context(metrics_lib.Profiler(config.profile_steps, f"{workdir}/profile"))
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
                raise too_many

        # ------------------------------------------------------------ the loop
        eval_metrics: dict[str, float] = {}  # the latest of every evaluator
        signals.in_loop = True  # from here a signal stops at the next step boundary, with a checkpoint
        for step in range(start_step, config.total_steps):
            profiler.before_step(step, state)
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
            injection.kill_after_step(done, checkpointer.wait)
            injection.signal_at("sigint_after_step", done)
            side_start = time.perf_counter()
            due = [e for e in evals if e.due(done)]
            improved = stop_early = False
            if due:
                results = {k: v for e in due for k, v in e.run(state).items()}
                writers.write(done, results)
                eval_metrics.update(results)
                if tracker and tracker.metric in results:
                    improved = tracker.update(done, results[tracker.metric])
                    stop_early = tracker.exhausted
                # fusion.balance='gradient_blending': new weights from the heads' eval losses
                state = trainer.balance.reestimate_state(state, objective, results, state_shardings)
            stop = watcher.should_stop(done)
            if (done % config.checkpoint_every == 0 or is_last or stop or save_timer.due()
                    or improved or stop_early):
                data_state = {"next_batch": start_batch + done - start_step, "workers": config.data.workers}
                if tracker:
                    data_state[best_lib.RECORD] = tracker.record()
                checkpointer.save(done, state, data_state, meta, best_value=tracker.value if improved else None)
                save_timer.saved()
            if stop_early:  # the checkpoint just saved is the final one
                writers.note(done, tracker.stop_note())
                break
            if stop:  # after the teardown, whose checkpointer.close() waits for this save
                raise Preempted(done, watcher.signum)
            window.exclude(time.perf_counter() - side_start)  # evals and saves are not training time

    if is_primary:
        final = " | ".join(f"{k} {v:.4f}" for k, v in sorted(eval_metrics.items()))
        best = ""
        if tracker and tracker.step is not None:
            best = f" | best {tracker.metric} {tracker.value:.4f} at step {tracker.step}"
        print(f"{prefix}done: {done} steps{' (stopped early)' if stop_early else ''} | {final}{best}", flush=True)
    return eval_metrics


# ============================================================================ entry point
def usage() -> str:
    return config_cli.usage("python -m mmjax.train --config=configs/base.py --workdir=DIR [--config.key=value]",
                            [("--workdir=DIR", flags.FLAGS["workdir"].help)])


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
    # First thing: SIGTERM or Ctrl-C while parsing, restoring or compiling exits 75 / 130 in one line.
    with preemption.handle_signals():
        try:
            if help_kind := config_cli.help_requested(argv[1:]):
                config_cli.show_help(help_kind, usage())
                return 0
            config, workdir = _parse_command_line(argv)
            distributed.initialize()  # before anything touches a device
            train(config, workdir)
        except (UserError, flags.Error) as e:
            print(f"{metrics_lib.host_prefix()}mmjax.train: error: {e}", file=sys.stderr, flush=True)
            return 2
        except (Preempted, preemption.Interrupted) as e:
            print(f"{metrics_lib.host_prefix()}mmjax.train: {e}", file=sys.stderr, flush=True)
            return preemption.exit_code(e.signum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
