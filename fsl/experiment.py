"""Training runs end to end: validate, load, train, test, track. The CLI calls these.

`run_training` is the whole of `fsl protonet` and `fsl hallucinate`; `run_sweep` runs a grid of
such runs as nested MLflow runs under one parent (`fsl sweep`, `fsl sweep-m`).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import signal
import threading
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from fsl.config import TrainConfig
from fsl.data import DataSet, load_dataset
from fsl.data.episodes import EpisodeSampler
from fsl.errors import UsageError
from fsl.evaluate import EvalResult, evaluate, sample_episodes
from fsl.models.classifier import FewShotClassifier
from fsl.progress import progress
from fsl.runtime import digest, distributed, make_generator, resolve_device, resolve_precision, seed_everything

Echo = Callable[[str], None]


@dataclass
class Setup:
    """Everything checked and resolved before a run starts: a bad option never opens a run."""

    cfg: TrainConfig
    data: DataSet
    device: torch.device
    precision: str
    model: FewShotClassifier


def prepare(cfg: TrainConfig, device: torch.device | None = None) -> Setup:
    """Validate the config against the data and build the model; raises UsageError/DataError.
    `device` overrides cfg.device (torchrun gives each rank its own)."""
    cfg.validate()
    cfg = cfg.resolved()
    device = device or _device(cfg.device)
    try:
        precision = resolve_precision(cfg.precision, device)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    data = load_data(cfg)
    # Building the samplers checks ways and shots + queries against every split used.
    EpisodeSampler(data.split("train"), cfg.train_shape, split="train")
    EpisodeSampler(data.split("val"), cfg.test_shape, split="val", option_prefix="test-")
    EpisodeSampler(data.split("test"), cfg.test_shape, split="test", option_prefix="test-")
    seed_everything(cfg.seed)
    model = FewShotClassifier.for_data(data, precision=precision, distance=cfg.distance,
                                       hallucinator=cfg.hallucinator, hallucinations=cfg.M)
    if cfg.init:
        _initialise_from(model, cfg.init)
    model.place(device)
    return Setup(cfg, data, device, precision, model)


def _device(name: str) -> torch.device:
    """`--device` resolved; a device this machine lacks is a usage error."""
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def load_data(cfg: TrainConfig, image_size: int | None = None) -> DataSet:
    """The data set named by cfg.data with cfg's format, size, channels and rotations."""
    return load_dataset(cfg.data, image_size or cfg.image_size, cfg.format, cfg.channels, cfg.rotations)


def _initialise_from(model: FewShotClassifier, spec: str) -> None:
    """Copy a trained model's encoder (and generator, if it has a compatible one) into `model`."""
    from fsl.tracking import load_model

    try:
        source = load_model(spec)
    except ValueError as exc:
        raise UsageError(f"--init {spec}: not a model ({exc})") from exc
    if source.feature_dim != model.feature_dim or source.config["channels"] != model.config["channels"]:
        raise UsageError(
            f"--init {spec}: incompatible model: it makes {source.feature_dim}-d features from "
            f"{source.config['channels']}-channel {source.config['image_size']}px images, this run needs "
            f"{model.feature_dim}-d from {model.config['channels']}-channel {model.config['image_size']}px")
    model.encoder.load_state_dict(source.encoder.state_dict())
    if model.generator is not None and source.generator is not None and \
            type(source.generator) is type(model.generator):
        model.generator.load_state_dict(source.generator.state_dict())


@dataclass
class RunSummary:
    run_id: str | None
    best_val_acc: float
    test: EvalResult
    test_no_hallucination: EvalResult | None
    params: dict[str, Any]


def run_training(cfg: TrainConfig, *, nested: bool = False, run_name: str | None = None,
                 echo: Echo = print, show_progress: bool = True, track: bool = True,
                 register: bool = True, registered_model_name: str | None = None,
                 resume: bool = False) -> RunSummary:
    """Train, test on the best-by-val checkpoint, and log everything to one MLflow run.

    Under torchrun every rank trains (DDP); rank 0 alone logs, checkpoints and registers.
    `resume` continues the newest RUNNING run of the same configuration from its last epoch
    (a run that a kill left behind), in the same MLflow run. `track=False` does the same work
    with nothing logged, to measure what logging costs.
    """
    with distributed(cfg.device) as (rank, world_size, rank_device), _sigterm_as_interrupt():
        if rank != 0:
            echo, show_progress, track = (lambda s: None), False, False
        return _run_training(cfg, rank_device, world_size, nested=nested, run_name=run_name, echo=echo,
                             show_progress=show_progress, track=track, register=register,
                             registered_model_name=registered_model_name, resume=resume)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's kill, `docker stop`) ends the run KILLED, like Ctrl-C, not RUNNING."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_training(cfg: TrainConfig, rank_device: torch.device | None, world_size: int, *, nested: bool,
                  run_name: str | None, echo: Echo, show_progress: bool, track: bool, register: bool,
                  registered_model_name: str | None, resume: bool) -> RunSummary:
    from fsl import tracking, viz
    from fsl.runtime import cache_dir
    from fsl.train import train

    if track:
        tracking.check_reachable()
    setup = prepare(cfg, rank_device)
    cfg, model, data, device = setup.cfg, setup.model, setup.data, setup.device
    params = cfg.to_params() | {"device_resolved": str(device), "precision_resolved": setup.precision,
                                "image_size_resolved": data.image_size, "feature_dim": model.feature_dim,
                                "world_size": world_size}
    config_hash = digest(json.dumps({k: v for k, v in params.items() if k != "experiment"}, sort_keys=True).encode())
    resume_id = _resumable_run(cfg, config_hash, track) if resume else None
    echo(f"{cfg.method}: {cfg.train_shape} training, {cfg.test_shape} testing on {cfg.data} "
         f"({data.image_size}px, {data.channels} ch) on {device} in {setup.precision}"
         + (f", {world_size} processes" if world_size > 1 else "") + (f"; resuming run {resume_id}" if resume_id else ""))
    tags = tracking.base_tags(data.fingerprint, setup.precision) | {"fsl.method": cfg.method,
                                                                    "fsl.config_hash": config_hash}
    if track:
        tracking.fail_stale_runs(cfg.experiment, keep=resume_id)
        run = tracking.start_run(cfg.experiment, run_name=run_name, nested=nested, run_id=resume_id,
                                 tags=tags | tracking.process_tags())
    else:
        run = tracking.null_run()
    with run as tracker, tempfile.TemporaryDirectory(prefix="fsl-run-") as workdir:
        tracker.log_params(params)
        out = Path(workdir)
        # Checkpoints outlive the process (resume, the last good one after a crash): under the
        # cache folder, per run. Every rank needs the path to resume, so rank 0's run id is shared.
        run_key = _broadcast(tracker.run_id or resume_id or "untracked-" + config_hash)
        checkpoints = cache_dir() / "runs" / run_key
        resume_state = torch.load(checkpoints / "last.pt", weights_only=True) if resume_id else None

        def on_epoch(stats) -> None:
            tracker.log_metrics({"train_loss": stats.train_loss, "train_acc": stats.train_acc,
                                 "val_acc": stats.val_acc, "learning_rate": stats.lr, "epoch_seconds": stats.seconds},
                                step=stats.epoch)
            echo(f"epoch {stats.epoch}/{cfg.epochs}: loss {stats.train_loss:.4f}, train {stats.train_acc:.2f}%, "
                 f"val {stats.val_acc:.2f}% ({stats.seconds:.1f} s)")

        total = cfg.epochs * cfg.episodes_per_epoch
        with progress(total, "training episodes", show_progress) as advance:
            if resume_state:
                advance(resume_state["epoch"] * cfg.episodes_per_epoch)
            result = train(model, data, cfg, device, checkpoint_dir=checkpoints, on_epoch=on_epoch,
                           progress=advance, resume=resume_state)
        tracker.log_metrics({"best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch})
        tracker.log_artifact(result.best_checkpoint, "checkpoints")
        tracker.log_artifact(viz.learning_curve(result.history, out / "learning_curve.png"))

        test_store = data.split("test").to(device)
        episodes = sample_episodes(test_store, cfg.test_shape, cfg.test_episodes, cfg.test_seed, "test")
        with progress(cfg.test_episodes, "test episodes", show_progress) as advance:
            test = evaluate(model, test_store, episodes, noise_seed=cfg.test_seed, progress=advance)
        _log_eval(tracker, test, "")
        echo(f"test ({cfg.test_shape}): {test}")
        plain = None
        if model.hallucinations:
            plain = evaluate(model, test_store, episodes, hallucinations=0, noise_seed=cfg.test_seed)
            _log_eval(tracker, plain, "_no_hallucination")
            echo(f"test without hallucination (same encoder, same episodes): {plain}")
            if track:
                tracker.log_artifact(tsne_plot(model, test_store, cfg, out / "tsne.png"))
        protocol = registry_protocol(cfg, data.fingerprint, setup.precision)
        tracker.set_tags({"fsl.protocol": json.dumps(protocol, sort_keys=True)})
        if register and track:
            name = registered_model_name or f"fsl-{cfg.method}"
            reg = _register(tracker, model, result.best_checkpoint, name, result.best_val_acc, protocol)
            echo(f"registered {reg.name} version {reg.version}: {reg.decision}")
        return RunSummary(tracker.run_id, result.best_val_acc, test, plain, params)


def _resumable_run(cfg: TrainConfig, config_hash: str, track: bool) -> str | None:
    """Rank 0 finds the run to resume (the newest RUNNING run of this configuration with a
    checkpoint) and shares its id with the other ranks."""
    from fsl import tracking
    from fsl.runtime import cache_dir

    run_id = None
    if track:
        run_id = tracking.find_resumable(cfg.experiment, config_hash)
        if run_id is None or not (cache_dir() / "runs" / run_id / "last.pt").exists():
            raise UsageError(f"--resume: no interrupted run of this configuration with a checkpoint in "
                             f"experiment {cfg.experiment!r}")
    return _broadcast(run_id)


def _broadcast(value: Any) -> Any:
    """Rank 0's value on every rank (a no-op in a single process)."""
    import torch.distributed as dist

    from fsl.runtime import world

    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def registry_protocol(cfg: TrainConfig, fingerprint: str, precision: str) -> dict[str, Any]:
    """What must match for two val accuracies to be comparable (the champion rule)."""
    shape = cfg.test_shape
    return {"data_fingerprint": fingerprint, "ways": shape.ways, "shots": shape.shots, "queries": shape.queries,
            "val_episodes": cfg.val_episodes, "val_seed": cfg.val_seed, "precision": precision}


def _register(tracker, model: FewShotClassifier, checkpoint: Path, name: str, val_acc: float, protocol: dict):
    from fsl import tracking

    model_uri, serve_uri = tracking.log_models(tracker, model, checkpoint)
    reg = tracking.register(name, model_uri, serve_uri, tracker.run_id, val_acc, protocol)
    tracker.set_tags({"fsl.registered_model": f"{reg.name}/{reg.version}", "fsl.registry_decision": reg.decision})
    return reg


def register_run(run_id: str, name: str | None = None, echo: Echo = print):
    """`fsl register --run-id`: register a finished run's best checkpoint under the champion rule."""
    from fsl import tracking
    from fsl.models.classifier import load_checkpoint

    run = tracking.get_run(run_id)
    if "fsl.protocol" not in run.data.tags or "best_val_acc" not in run.data.metrics:
        raise UsageError(f"--run-id {run_id}: not a finished fsl training run (no protocol or best_val_acc)")
    checkpoint = tracking.download(f"runs:/{run_id}/checkpoints/best.pt")
    model = load_checkpoint(checkpoint)
    name = name or f"fsl-{run.data.tags.get('fsl.method', 'protonet')}"
    reg = _register(tracking.Tracker(run_id, tracking.locked_client()), model, checkpoint, name,
                    run.data.metrics["best_val_acc"], json.loads(run.data.tags["fsl.protocol"]))
    echo(f"registered {reg.name} version {reg.version}: {reg.decision}")
    return reg


def predict_folder(model_spec: str, support_dir: str, query_dir: str, out: str | None = None,
                   echo: Echo = print) -> list[tuple[str, str, float]]:
    """`fsl predict`: classify the images of query_dir given support_dir/<class>/* images."""
    from fsl import tracking
    from fsl.data.readers import IMAGE_SUFFIXES, decode_image

    model = tracking.load_model(model_spec)
    size, channels = model.config["image_size"], model.config["channels"]
    classes = sorted(p for p in Path(support_dir).iterdir() if p.is_dir()) if Path(support_dir).is_dir() else []
    if not classes:
        raise UsageError(f"--support {support_dir}: needs one sub-folder of images per class, found none")

    def images(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    support, labels = [], []
    for folder in classes:
        for file in images(folder):
            support.append(torch.from_numpy(decode_image(str(file), size, channels)))
            labels.append(folder.name)
    queries = images(Path(query_dir)) if Path(query_dir).is_dir() else []
    if not support or not queries:
        raise UsageError(f"no images in {'--support ' + support_dir if not support else '--query ' + query_dir}")
    query = [torch.from_numpy(decode_image(str(f), size, channels)) for f in queries]
    prediction = model.classify(torch.stack(support), labels, torch.stack(query))
    rows = [(f.name, label, float(p.max())) for f, label, p in zip(queries, prediction.labels, prediction.probs)]
    width = max(len(r[0]) for r in rows)
    echo(f"{'query':{width}s}  {'predicted':20s} probability")
    for name, label, prob in rows:
        echo(f"{name:{width}s}  {label:20s} {prob:.4f}")
    if out:
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["query", "predicted", "probability"])
            writer.writerows(rows)
    return rows


def _log_eval(tracker, result: EvalResult, suffix: str) -> None:
    tracker.log_series(f"test_episode_acc{suffix}", result.accs)
    tracker.log_metrics({f"test_acc{suffix}": result.mean, f"test_ci95{suffix}": result.ci95})


def tsne_plot(model: FewShotClassifier, store, cfg: TrainConfig, path: Path, classes: int = 5,
              per_class: int = 40) -> Path:
    """t-SNE of real test features and M hallucinated ones for `classes` fixed test classes.

    The generator is seeded with `test_shots` real images of each class, as at test time.
    """
    from fsl import viz

    classes = min(classes, store.n_classes)
    labels = store.labels
    rows = torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in range(classes)])
    shots = cfg.test_shape.shots
    seeds = torch.cat([(labels == c).nonzero().flatten()[:shots] for c in range(classes)])
    seed_labels = torch.arange(classes, device=model.device).repeat_interleave(shots)
    model.eval()
    with torch.no_grad():
        real = model.embed(store.images[rows])
        support = model.embed(store.images[seeds])
        fake, fake_labels = model.hallucinate_support(support[None], seed_labels[None], classes,
                                                      noise=make_generator(cfg.test_seed, model.device))
        fake, fake_labels = fake[0], fake_labels[0]
    return viz.tsne(real.cpu().numpy(), labels[rows].cpu().numpy(), fake.float().cpu().numpy(),
                    fake_labels.cpu().numpy(), store.class_names[:classes], path, seed=cfg.test_seed)


def run_evaluation(model_spec: str, cfg: TrainConfig, episodes_file: str | None = None,
                   echo: Echo = print, show_progress: bool = True) -> RunSummary:
    """`fsl evaluate`: test a saved model on new episodes of cfg's data, or on the episodes of
    a CSV file, as one MLflow run. Images are prepared as in the model's training."""
    from fsl import tracking
    from fsl.data.episodes import read_episode_file
    from fsl.evaluate import evaluate_file_episodes

    cfg.validate()
    cfg = cfg.resolved()
    model = tracking.load_model(model_spec)
    device = _device(cfg.device)
    model.place(device)
    size = model.config["image_size"]
    params = {"model": model_spec, "data": cfg.data, "test_seed": cfg.test_seed,
              "device_resolved": str(device), "precision_resolved": model.config["precision"]}
    if episodes_file:
        episodes = read_episode_file(Path(episodes_file), lambda: load_data(cfg, size), size,
                                     model.config["channels"])
        fingerprint = digest(Path(episodes_file).read_bytes())
        params |= {"episodes": episodes_file, "test_episodes": len(episodes)}
        label = f"{len(episodes)} episodes of {episodes_file}"
    else:
        data = load_data(cfg, size)
        store = data.split("test").to(device)
        episodes = sample_episodes(store, cfg.test_shape, cfg.test_episodes, cfg.test_seed, "test")
        fingerprint = data.fingerprint
        params |= {"test_ways": cfg.test_ways, "test_shots": cfg.test_shape.shots,
                   "test_queries": cfg.test_queries, "test_episodes": cfg.test_episodes}
        label = str(cfg.test_shape)
    tags = tracking.base_tags(fingerprint, model.config["precision"]) | {"fsl.method": "evaluate"}
    with tracking.start_run(cfg.experiment, run_name="evaluate", tags=tags) as tracker:
        tracker.log_params(params)
        with progress(len(episodes), "test episodes", show_progress) as advance:
            if episodes_file:
                test = evaluate_file_episodes(model, episodes, noise_seed=cfg.test_seed, progress=advance)
            else:
                test = evaluate(model, store, episodes, noise_seed=cfg.test_seed, progress=advance)
        _log_eval(tracker, test, "")
        echo(f"test ({label}): {test}")
        return RunSummary(tracker.run_id, float("nan"), test, None, params)


def run_sweep(base: TrainConfig, grid: dict[str, list], *, shard: int = 0, shards: int = 1,
              run_name: str = "sweep", echo: Echo = print, show_progress: bool = True,
              register: bool = True, registered_model_name: str | None = None) -> list[dict]:
    """Train and test every point of `grid` (field -> values) as nested runs under one parent.

    Points are enumerated in a fixed order; with `shards` > 1 this process runs only the points
    whose index % shards == shard, so N processes (one per GPU or machine, one tracking server)
    cover the grid once with no point run twice. The parent run gets a CSV table of every
    point and a plot of test accuracy ± CI against the first swept field.
    """
    from fsl import tracking, viz

    if not 0 <= shard < shards:
        raise UsageError(f"--shard must be between 0 and {shards - 1}, got {shard}")
    fields = list(grid)
    unknown = [f for f in fields if f not in TrainConfig.__dataclass_fields__]
    if unknown:
        raise UsageError(f"cannot sweep over {unknown}: not a training option")
    points = [dict(zip(fields, values)) for values in itertools.product(*grid.values())]
    mine = [p for i, p in enumerate(points) if i % shards == shard]
    configs = [replace(base, **p) for p in mine]
    for c in configs:  # every point is checked before the parent run opens
        prepare(c)
    rows: list[dict] = []
    tags = {"fsl.method": "sweep", "fsl.sweep_grid": repr(grid), "fsl.sweep_shard": f"{shard}/{shards}"}
    with tracking.start_run(base.experiment, run_name=run_name, tags=tags) as parent, \
            tempfile.TemporaryDirectory(prefix="fsl-sweep-") as workdir:
        parent.log_params({"sweep_" + k: ",".join(map(str, v)) for k, v in grid.items()}
                          | {"shard": shard, "shards": shards})
        for point, cfg in zip(mine, configs):
            name = ",".join(f"{k}={v}" for k, v in point.items())
            echo(f"--- sweep point {name}")
            summary = run_training(cfg, nested=True, run_name=name, echo=echo, show_progress=show_progress,
                                   register=register, registered_model_name=registered_model_name)
            row = dict(point) | {"run_id": summary.run_id, "best_val_acc": summary.best_val_acc,
                                 "test_acc": summary.test.mean, "test_ci95": summary.test.ci95}
            if summary.test_no_hallucination is not None:
                row |= {"test_acc_no_hallucination": summary.test_no_hallucination.mean,
                        "test_ci95_no_hallucination": summary.test_no_hallucination.ci95}
            rows.append(row)
        table = Path(workdir) / "sweep.csv"
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with table.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        parent.log_artifact(table)
        group = fields[1] if len(fields) > 1 else None
        parent.log_artifact(viz.metric_vs_value(rows, fields[0], Path(workdir) / "sweep.png", group))
        best = max(rows, key=lambda r: r["test_acc"])
        parent.log_metrics({"best_test_acc": best["test_acc"]})
        echo(f"sweep done: {len(rows)} runs; best {best['test_acc']:.2f}% at "
             + ", ".join(f"{k}={best[k]}" for k in fields))
    return rows



def write_episodes(cfg: TrainConfig, split: str, count: int, ways: int, shots: int, queries: int,
                   seed: int, out: str, echo: Echo = print) -> None:
    """`fsl episodes`: draw `count` episodes of `split` and write them as a CSV file."""
    from fsl.data.episodes import EpisodeShape, write_episode_file

    if count < 1:
        raise UsageError(f"-n/--episodes must be at least 1, got {count}")
    data = load_data(cfg)
    shape = EpisodeShape(ways, shots, queries)
    episodes = sample_episodes(data.split(split), shape, count, seed, split, option_prefix="")
    write_episode_file(Path(out), data, split, episodes)
    echo(f"wrote {count} {shape} episodes of the {split} split of {cfg.data} to {out}")
