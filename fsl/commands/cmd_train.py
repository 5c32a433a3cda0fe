"""Every training run: `fsl protonet`, `fsl hallucinate`, `fsl pretrain` and each child of a sweep
(check, load, train, test, track, register), and the test-only run of a sweep child whose model
its twin trained (`run_test_of_twin`).

`run_training` reads top to bottom as the run happens. Under torchrun every rank trains (DDP);
rank 0 alone tracks, checkpoints and registers, and the other ranks get the null tracking
surface, so no step below asks whether it is tracked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fsl import viz
from fsl.champion import registry_protocol
from fsl.commands.inputs import load_model, warn_of_head_features
from fsl.commands.options import SILENT, Reporter, RunOptions, quietable
from fsl.commands.records import (
    dataset_input,
    log_eval,
    log_source_diff,
    mlflow_runs,
    result_line,
    run_tags,
)
from fsl.commands.run_identity import config_hash, resume_target, run_name, run_params
from fsl.commands.training_setup import TrainingSetup, prepare_training, shared_class_names
from fsl.config import TrainConfig
from fsl.data import DataSet
from fsl.data.cache import claim_checkpoint_folder
from fsl.diagnostics import hallucination_diagnostics
from fsl.errors import RunStopped, UsageError
from fsl.evaluate import EvalResult, evaluate, sample_episodes
from fsl.files import atomic_save, cache_dir
from fsl.pretrain import PREFIX as PRETRAIN
from fsl.pretrain import pretrain, steps_per_epoch
from fsl.processes import broadcast, distributed, interruptible, process_alive
from fsl.tracking.null import NullRuns, NullTracker
from fsl.tracking.protocol import MODEL_TAG, RecordingTracker, Runs
from fsl.train import train, training_data_meta, validation_episodes

SILENT_TRACKER = NullTracker()  # computes and reports, records nothing


@dataclass
class RunSummary:
    run_id: str | None  # None where the run was not tracked
    best_val_acc: float
    test: EvalResult | None  # None for a run that does not test (`RunOptions.test`: a search's trial)
    test_no_hallucination: EvalResult | None
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)  # the last value of every metric it logged


@dataclass(frozen=True)
class TrainedTwin:
    """The model a sweep child is tested from instead of training (`run_test_of_twin`): its best
    checkpoint, the run that trained it (None where not tracked) and that run's metrics."""

    checkpoint: Path
    run_id: str | None
    metrics: dict[str, float]


@quietable
def run_training(cfg: TrainConfig, options: RunOptions = RunOptions(), reporter: Reporter = Reporter(),
                 runs: Runs | None = None, data: DataSet | None = None, test_data: DataSet | None = None) -> RunSummary:
    """Train, test on the best-by-val checkpoint, and log everything to one run.

    `runs` is the tracking surface (`fsl.tracking.protocol.Runs`; default: MLflow; `NullRuns()`
    records nothing, e.g. for a study on a machine without MLflow). `data` and `test_data`:
    data sets already loaded, instead of reading `cfg.data` / `cfg.test_data` (a study that tests
    on part of another set). `options.resume` continues an interrupted run in place.
    """
    with distributed(cfg.device) as (rank, world_size, rank_device), interruptible():
        if world_size > 1 and cfg.pretrain_epochs:
            raise UsageError("pre-training runs in one process: start it without torchrun (the episodic phase "
                             "can then run under torchrun with --init)")
        if rank != 0:
            reporter, runs = SILENT, NullRuns()
        runs = runs or mlflow_runs()
        if options.register and options.registered_model_name and rank == 0:
            from fsl.tracking.model_registry import validate_model_name

            validate_model_name(options.registered_model_name)
        runs.check_store()
        setup = prepare_training(cfg, rank_device, data, test_data)
        cfg, data = setup.cfg, setup.data
        params = run_params(setup, world_size)
        run_hash = config_hash(params)
        resume_id = broadcast(resume_target(runs, cfg, run_hash, params, options.resume)
                              if options.resume and rank == 0 else None)
        reporter.echo(f"{cfg.method}: {training_banner(cfg, data)}, {cfg.test_shape} testing on {cfg.data} "
                      f"({data.image_size}px, {data.channels} ch) on {setup.device} in {setup.precision}"
                      + (f", {world_size} processes" if world_size > 1 else "")
                      + (f"; resuming run {resume_id}" if resume_id else ""))
        if options.test:  # a search's trial never runs the head
            warn_of_head_features(setup.cfg.head, setup.cfg.feature_transform, reporter)
        runs.fail_stale_runs(cfg.experiment, keep=resume_id, alive=process_alive)
        tags = run_tags(cfg.method, data.fingerprint, setup.precision) | {"fsl.config_hash": run_hash}
        tags |= dict(options.tags)
        with runs.open(cfg.experiment, run_name=options.run_name or run_name(cfg), nested=options.nested,
                       run_id=resume_id, tags=tags, system_metrics=options.system_metrics) as opened:
            tracker = RecordingTracker(opened)
            if options.on_open:
                options.on_open(tracker.run_id)
            tracker.log_params(params)
            log_source_diff(tracker)
            _log_datasets(setup, tracker, reporter)
            # untracked: this process's own folder (two untracked runs of one config may run at once)
            run_key = broadcast(tracker.run_id or resume_id or f"untracked-{run_hash}-{os.getpid()}")
            checkpoints = cache_dir() / "runs" / run_key
            if rank == 0:
                claim_checkpoint_folder(checkpoints)
            summary = _train_test_register(setup, tracker, checkpoints, resume_id, options, reporter, params)
        if rank == 0:  # the run FINISHED: best.pt is one of its artifacts now, and last.pt is spent
            if options.keep_checkpoint is not None:
                shutil.copy(checkpoints / "best.pt", options.keep_checkpoint)
            shutil.rmtree(checkpoints, ignore_errors=True)
            if summary.run_id:
                reporter.echo(runs.link(summary.run_id))
        if resume_id and summary.run_id:  # what the run logged before it was stopped, too
            summary.metrics = runs.run_metrics(summary.run_id)
        return summary


def training_banner(cfg: TrainConfig, data: DataSet) -> str:
    """What the run trains on, as its first line says it: episodes, or pre-training's batches."""
    phases = []
    if cfg.pretrain_epochs:
        phases.append(f"pre-training on batches of {cfg.pretrain_batch_size} images over the "
                      f"{data.split('train').n_classes} training classes")
    if cfg.epochs:
        phases.append(f"{cfg.train_shape} training")
    return ", then ".join(phases)


def run_test_of_twin(cfg: TrainConfig, twin: TrainedTwin, options: RunOptions = RunOptions(),
                     reporter: Reporter = Reporter(), runs: Runs | None = None, data: DataSet | None = None,
                     test_data: DataSet | None = None) -> RunSummary | None:
    """A run of `cfg` that tests the model `twin` trained instead of training; None (no run
    opened) if that model is not `cfg`'s model at another M. `runs`, `data`, `test_data`: as
    for `run_training`.

    For a test-time hallucinator (`fsl.components.is_test_time`) runs that differ only
    in M train the same weights, so `fsl sweep` trains one of them per seed and makes the others
    here: the twin's best checkpoint (kept by val accuracy at the twin's M), set to this run's M.
    The run logs what a trained run logs except the training history: params, `best_val_acc`
    (the fixed val episodes at this M; the twin's as `twin_best_val_acc`), the checkpoint at this
    M, test metrics, diagnostics, t-SNE, registration, and the tag `fsl.trained_in`.
    """
    with interruptible():
        runs = runs or mlflow_runs()
        runs.check_store()
        setup = prepare_training(cfg, None, data, test_data)
        try:
            model = load_model(str(twin.checkpoint))
        except UsageError as exc:
            raise UsageError(f"the trained twin of {options.run_name or run_name(setup.cfg)}: "
                             f"{str(exc).removeprefix('--model ')}") from None
        trained_in = twin.run_id or "its twin (not tracked)"
        if model.kind() != setup.model.kind():
            reporter.echo(f"run {trained_in} holds another kind of model (an older fsl?): training instead")
            return None
        if model.hallucinator is not None:
            model.set_hallucinations(setup.cfg.M)
        model.set_head(setup.cfg.head, **setup.model.config["head_args"])
        setup = replace(setup, model=model.place(setup.device))
        params = run_params(setup, 1)
        tags = run_tags(cfg.method, setup.data.fingerprint, setup.precision) | {
            "fsl.config_hash": config_hash(params), "fsl.trained_in": trained_in}
        why = f"the {setup.cfg.hallucinator} hallucinator does not act in training" if setup.cfg.hallucinator \
            and model.M else f"the {setup.cfg.head} head acts at test time only"
        reporter.echo(f"{cfg.method}: testing the model of run {trained_in} with the {setup.cfg.head} head at "
                      f"M = {setup.cfg.M} (no training: {why})")
        warn_of_head_features(setup.cfg.head, model.config["feature_transform"], reporter, trained=True)
        with runs.open(cfg.experiment, run_name=options.run_name or run_name(setup.cfg), nested=options.nested,
                       tags=tags, system_metrics=options.system_metrics) as opened, \
                tempfile.TemporaryDirectory(prefix="fsl-run-") as workdir:
            tracker = RecordingTracker(opened)
            tracker.log_params(params)
            log_source_diff(tracker)
            _log_datasets(setup, tracker, reporter)
            with model.using_head("prototype"):  # as training validates
                best_val = evaluate(model, *validation_episodes(setup.data, setup.cfg, setup.device)).mean
            tracker.log_metrics({"best_val_acc": best_val} | {
                new: twin.metrics[old] for old, new in (("best_val_acc", "twin_best_val_acc"),
                                                        ("best_epoch", "best_epoch")) if old in twin.metrics})
            checkpoint = Path(workdir) / "best.pt"
            meta = {"val_acc": best_val, "trained_in": trained_in, "test_seed": setup.cfg.test_seed,
                    **training_data_meta(setup.data)}
            atomic_save(model.checkpoint(**meta), checkpoint)
            tracker.log_artifact(checkpoint, "checkpoints")
            test, plain = _test(setup, tracker, reporter, Path(workdir), options.tsne)
            _tag_and_register(setup, tracker, checkpoint, best_val, options, reporter,
                              result_line(test, setup.cfg.test_shape, plain))
            summary = RunSummary(tracker.run_id, best_val, test, plain, params, dict(tracker.latest))
            if options.keep_checkpoint is not None:
                shutil.copy(checkpoint, options.keep_checkpoint)
        reporter.echo(runs.link(summary.run_id))
        return summary


def _log_datasets(setup: TrainingSetup, tracker, reporter: Reporter) -> None:
    """The training data set as an MLflow dataset input (context training) and, with
    --test-data, the test data set (context evaluation); warn of class names they share."""
    tracker.log_dataset(dataset_input(setup.data, setup.cfg), "training")
    if setup.test_data is not None:
        label = setup.cfg.test_data or setup.test_data.name  # a data set handed in has no --test-data
        as_read = replace(setup.cfg, data=label, format=None, rotations=False,
                          reflections=False, split_ratio=None, split_file=None,
                          val_share=None)  # --data's options do not apply to it
        tracker.log_dataset(dataset_input(setup.test_data, as_read), "evaluation")
        shared = shared_class_names(setup)
        if shared:
            reporter.echo(f"warning: --test-data {label} shares {len(shared)} class name(s) with the "
                          f"training data ({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}): if they are "
                          f"the same classes, the test measures seen classes")


def _train_test_register(setup: TrainingSetup, tracker: RecordingTracker, checkpoints: Path, resume_id: str | None,
                         options: RunOptions, reporter: Reporter, params: dict[str, Any]) -> RunSummary:
    """The body of a run, inside its MLflow run: train, test, plot, register."""
    cfg, model, data = setup.cfg, setup.model, setup.data

    # the rate changes within the run only where it is halved before the last episode: a constant
    # rate is the `lr` param, not a flat chart
    varies = cfg.lr_step < cfg.epochs * cfg.episodes_per_epoch

    def on_epoch(stats) -> None:
        tracker.log_metrics({"train_loss": stats.train_loss, "train_acc": stats.train_acc, "val_acc": stats.val_acc,
                             "epoch_seconds": stats.seconds} | ({"learning_rate": stats.lr} if varies else {}),
                            step=stats.epoch)
        reporter.echo(f"epoch {stats.epoch}/{cfg.epochs}: loss {stats.train_loss:.4f}, train {stats.train_acc:.2f}%, "
                      f"val {stats.val_acc:.2f}% ({stats.seconds:.1f} s)")
        if options.on_validation:
            options.on_validation("val_acc", stats.epoch, stats.val_acc)

    resume_state = _load_last(checkpoints / "last.pt") if resume_id and (checkpoints / "last.pt").exists() else None
    result = None
    try:
        if cfg.pretrain_epochs and resume_state is None:  # a resumed episodic phase had finished pre-training
            result = _pretrain_phase(setup, tracker, checkpoints, resume_id, reporter, options)
        if cfg.epochs:
            with reporter.progress(cfg.epochs * cfg.episodes_per_epoch, "training episodes") as advance:
                if resume_state:
                    advance(resume_state["epoch"] * cfg.episodes_per_epoch)
                result = train(model, data, cfg, setup.device, checkpoint_dir=checkpoints, on_epoch=on_epoch,
                               progress=advance, resume=resume_state)
    except RunStopped:  # stopped on purpose (a pruned trial): never resumed, so nothing to keep
        shutil.rmtree(checkpoints, ignore_errors=True)
        raise
    assert result is not None and result.best_checkpoint is not None  # validate(): epochs >= 1 unless pre-training
    if result.best_checkpoint.name != "best.pt" and result.best_checkpoint.exists():  # rank 0 wrote it
        # `fsl pretrain`: its model is the run's model, under the usual name
        shutil.copy(result.best_checkpoint, checkpoints / "best.pt")
        result.best_checkpoint = checkpoints / "best.pt"
    tracker.log_metrics({"best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch})
    tracker.log_artifact(result.best_checkpoint, "checkpoints")
    # A run killed after its test (before registering) and resumed has its test metrics already.
    tested = resume_id is not None and "test_acc" in tracker.logged_metric_keys()
    with tempfile.TemporaryDirectory(prefix="fsl-run-") as workdir:
        tracker.log_artifact(viz.learning_curve(result.history, Path(workdir) / "learning_curve.png"))
        if not options.test:  # a search's trial: selected on validation, tested only if retested
            protocol = registry_protocol(cfg, data.fingerprint, setup.precision, data.content_digest())
            tracker.set_tags({"fsl.protocol": json.dumps(protocol, sort_keys=True), MODEL_TAG: "not registered"})
            tracker.set_description(f"best val {result.best_val_acc:.2f}% (not tested: a search's trial)")
            return RunSummary(tracker.run_id, result.best_val_acc, None, None, params, dict(tracker.latest))
        test, plain = _test(setup, SILENT_TRACKER if tested else tracker, reporter, Path(workdir), options.tsne)
    _tag_and_register(setup, tracker, result.best_checkpoint, result.best_val_acc, options, reporter,
                      result_line(test, cfg.test_shape, plain))
    return RunSummary(tracker.run_id, result.best_val_acc, test, plain, params, dict(tracker.latest))


def _pretrain_phase(setup: TrainingSetup, tracker, checkpoints: Path, resume_id: str | None, reporter: Reporter,
                    options: RunOptions):
    """Pre-train the encoder (fsl.pretrain); its epochs are logged as `pretrain_*` metrics."""
    cfg = setup.cfg

    def on_epoch(stats) -> None:
        tracker.log_metrics({f"{PRETRAIN}train_loss": stats.train_loss, f"{PRETRAIN}train_acc": stats.train_acc,
                             f"{PRETRAIN}val_acc": stats.val_acc, f"{PRETRAIN}learning_rate": stats.lr,
                             f"{PRETRAIN}epoch_seconds": stats.seconds}, step=stats.epoch)
        reporter.echo(f"pre-training epoch {stats.epoch}/{cfg.pretrain_epochs}: loss {stats.train_loss:.4f}, "
                      f"train {stats.train_acc:.2f}%, val {stats.val_acc:.2f}% ({stats.seconds:.1f} s)")
        if options.on_validation:
            options.on_validation(f"{PRETRAIN}val_acc", stats.epoch, stats.val_acc)

    last = checkpoints / f"{PRETRAIN}last.pt"
    resume_state = _load_last(last) if resume_id and last.exists() else None
    per_epoch = steps_per_epoch(cfg, setup.data.split("train"))
    with reporter.progress(cfg.pretrain_epochs * per_epoch, "pre-training batches") as advance:
        if resume_state:
            advance(resume_state["epoch"] * per_epoch)
        result = pretrain(setup.model, setup.data, cfg, setup.device, checkpoint_dir=checkpoints, on_epoch=on_epoch,
                          progress=advance, resume=resume_state)
    tracker.log_metrics({f"{PRETRAIN}best_val_acc": result.best_val_acc, f"{PRETRAIN}best_epoch": result.best_epoch})
    return result


def _tag_and_register(setup: TrainingSetup, tracker, checkpoint: Path, best_val: float, options: RunOptions,
                      reporter: Reporter, result: str) -> None:
    """Tag the run with its registry protocol, log its model (both flavours: every tracked run
    ends in a model `mlflow.pytorch.load_model` loads), with --register register it, and describe
    the run in one line: `result` (`result_line`), the version and whether it is champion."""
    cfg = setup.cfg
    protocol = registry_protocol(cfg, setup.data.fingerprint, setup.precision, setup.data.content_digest())
    tracker.set_tags({"fsl.protocol": json.dumps(protocol, sort_keys=True)})
    if not tracker.run_id:
        return
    from fsl.tracking.model_registry import log_run_models, register_logged

    name = options.registered_model_name or f"fsl-{cfg.method}"
    shape = (cfg.test_shape.ways, cfg.test_shape.shots) if cfg.method == "pretrain" else (cfg.ways, cfg.shots)
    reporter.echo("logging the model (PyTorch and serving flavours)...")
    logged = log_run_models(tracker, setup.model, checkpoint, name, shape)
    tracker.set_tags({MODEL_TAG: "not registered"})
    tracker.set_description(f"{result} · not registered")
    if options.register:  # the version and whether it is champion replace "not registered" in both
        reg = register_logged(tracker, logged, name, best_val, protocol, result)
        reporter.echo(f"registered {reg.name} version {reg.version}: {reg.decision}")


def _test(setup: TrainingSetup, tracker, reporter: Reporter, workdir: Path,
          tsne: bool = True) -> tuple[EvalResult, EvalResult | None]:
    """Test on the fixed test episodes; with hallucination, again with the generator off on
    the same episodes, and (with `tsne`) a t-SNE of real against hallucinated features."""
    cfg, model = setup.cfg, setup.model
    store = setup.test_set.split("test").to(setup.device)
    episodes = sample_episodes(store, cfg.test_shape, cfg.test_episodes, cfg.test_seed, "test")
    with reporter.progress(cfg.test_episodes, "test episodes") as advance:
        test = evaluate(model, store, episodes, noise_seed=cfg.test_seed, progress=advance)
    log_eval(tracker, test)
    reporter.echo(f"test ({cfg.test_shape}): {test}")
    if not model.M:
        return test, None
    plain = evaluate(model, store, episodes, M=0, noise_seed=cfg.test_seed)
    log_eval(tracker, plain, "_no_hallucination")
    reporter.echo(f"test without hallucination (same encoder, same episodes): {plain}")
    tracker.log_metrics(hallucination_diagnostics(model, store, episodes, noise_seed=cfg.test_seed))
    if tracker.run_id and tsne:  # t-SNE takes seconds to minutes: only for a run that keeps it, and asks
        reporter.echo(f"drawing the t-SNE of {viz.tsne_size(store, model.M)} real and hallucinated test features...")
        tracker.log_artifact(viz.tsne_plot(model, store, cfg, workdir / "tsne.png"))
    return test, plain


def _load_last(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises several types for a torn or foreign file
        raise UsageError(f"--resume: {path} is not a readable checkpoint ({type(exc).__name__}); "
                         f"start the run again without --resume") from None


