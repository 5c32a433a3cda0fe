"""`fsl evaluate`: test a saved model on new episodes of a data set, or on an episode file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsl.commands.inputs import device_option, load_data, load_model, warn_of_head_features
from fsl.commands.options import Reporter, quietable
from fsl.commands.records import dataset_input, log_eval, log_source_diff, mlflow_runs, run_tags
from fsl.config import EvaluationConfig, check_head_takes, fresh_test_seed
from fsl.data.episode_table import EpisodeTable, TableImages, compile_episode_file
from fsl.data.episodes import EpisodeIndices, episode_file_images
from fsl.data.store import DataSet, ImageStore
from fsl.evaluate import (
    EvalResult,
    encode_episodes,
    encode_table,
    evaluate,
    evaluate_table,
    sample_episodes,
)
from fsl.files import file_digest
from fsl.processes import interruptible, process_alive
from fsl.progress import stage_lines
from fsl.tracking.protocol import RESULT_TAG, Runs


@dataclass
class EpisodesToTest:
    """What `fsl evaluate` tests on: sampled episodes of a data set's test split (`data`, `store`,
    `episodes`) or the episodes of a file (`from_file`); their count, label, data fingerprint and
    the params that describe them."""

    label: str
    count: int
    fingerprint: str
    params: dict[str, Any]
    data: DataSet | None = None
    store: ImageStore | None = None
    episodes: EpisodeIndices | None = None
    table: EpisodeTable | None = None           # an episode file, compiled (no image decoded yet)
    images: TableImages | None = None           # its images, decoded in batches when scored


def episodes_to_test(cfg: EvaluationConfig, model, episodes_file: str | None, device, test_seed: int,
                     reporter: Reporter = Reporter()) -> EpisodesToTest:
    """The episodes of `fsl evaluate`, at the model's image size and channels. An episode file is
    read row by row into arrays (`fsl.data.episode_table`), with a line every two seconds; image
    files outside --data's folder are warned about once."""
    size = model.config["image_size"]
    split = "all" if cfg.test_split == "all" else "splits"
    if episodes_file:
        table = compile_episode_file(Path(episodes_file), reporter.echo)
        images = episode_file_images(table, lambda: load_data(cfg, size, split), size, model.config["channels"])
        if cfg.data != "synthetic" and Path(cfg.data).exists():
            outside = images.outside(Path(cfg.data) if Path(cfg.data).is_dir() else Path(cfg.data).parent)
            if outside:
                reporter.echo(f"warning: {len(outside):,} image file(s) of {episodes_file} are outside --data "
                              f"{cfg.data} (e.g. {outside[0]}): the episodes do not test that data set alone")
        return EpisodesToTest(f"{table.count:,} episodes of {episodes_file}", table.count, file_digest(table.path),
                              {"episodes": episodes_file, "test_episodes": table.count}, table=table, images=images)
    data = load_data(cfg, size, split)
    store = data.split("test").to(device)
    params = {"test_ways": cfg.test_ways, "test_shots": cfg.test_shape.shots, "test_queries": cfg.test_queries,
              "test_episodes": cfg.test_episodes, "split": cfg.test_split}
    params |= {k: v for k, v in cfg.read_options().items() if v not in (None, {})}
    return EpisodesToTest(str(cfg.test_shape), cfg.test_episodes, data.fingerprint, params, data, store,
                        sample_episodes(store, cfg.test_shape, cfg.test_episodes, test_seed, "test"))


def warn_of_seen_classes(model, tested: EpisodesToTest, reporter: Reporter) -> None:
    """Say so where the tested classes include classes the model was trained on (W1: `--split all`
    of the model's own data set), as training does for --test-data: by name, from the training
    classes a checkpoint records (fsl 0.2 on), else by the data fingerprint it records."""
    trained = model.trained_with.get("train_classes")
    tested_names = tested.table.labels if tested.table is not None else \
        tested.store.class_names if tested.store is not None else []
    if trained:
        seen = sorted(set(trained) & set(tested_names))
        if seen:
            examples = ", ".join(seen[:5]) + (", ..." if len(seen) > 5 else "")
            reporter.echo(f"warning: {len(seen)} of the {len(set(tested_names))} tested classes have the names of "
                          f"classes the model was trained on ({examples}): if they are the same classes, the "
                          f"accuracy includes seen classes")
    elif tested.data is not None and tested.params.get("split") == "all" and \
            model.trained_with.get("data_fingerprint") == tested.data.fingerprint.removesuffix("-all"):
        reporter.echo(f"warning: --split all tests every class of the data set the model was trained on (fingerprint "
                      f"{tested.data.fingerprint}): the accuracy includes seen classes")


@dataclass
class EvaluationSummary:
    """What `fsl evaluate` measured: its run (None where not tracked), the test (of the first
    head), the same encoder's test with the hallucinator off where the model has one, the run's
    params, and the test of each head."""

    run_id: str | None
    test: EvalResult
    test_no_hallucination: EvalResult | None
    params: dict[str, Any]
    by_head: dict[str, EvalResult] = field(default_factory=dict)


def head_label(head: str) -> str:
    """A head's name as every table and line shows it: transductive heads say so."""
    from fsl.components import HEADS

    return f"{head} (transductive)" if HEADS[head].transductive else head


class Scorer:
    """Scores the tested episodes with one head after another on the same features: the encoder
    runs once, on the first call (`encode_episodes` / `encode_table`), whatever the heads and M."""

    def __init__(self, model, tested: EpisodesToTest, test_seed: int, reporter: Reporter) -> None:
        self.model, self.tested, self.test_seed, self.reporter = model, tested, test_seed, reporter
        self.encoded: Any = None

    def __call__(self, head: str, settings: dict[str, Any], M: int | None = None) -> EvalResult:
        model, tested = self.model, self.tested
        with model.using_head(head, **settings):
            if tested.table is not None and tested.images is not None:
                progress = stage_lines(self.reporter.echo)
                if self.encoded is None:
                    self.encoded = encode_table(model, tested.table, tested.images, progress=progress)
                return evaluate_table(model, tested.table, tested.images, M, self.test_seed, progress=progress,
                                      features=self.encoded)
            assert tested.store is not None and tested.episodes is not None
            if self.encoded is None:
                self.encoded = encode_episodes(model, tested.store, tested.episodes, M)
            with self.reporter.progress(tested.count, f"test episodes ({head_label(head)})") as advance:
                return evaluate(model, tested.store, tested.episodes, M, self.test_seed, progress=advance,
                                encoded=self.encoded)


@quietable
def run_evaluation(model_spec: str, cfg: EvaluationConfig, episodes_file: str | None = None,
                   reporter: Reporter = Reporter(), runs: Runs | None = None) -> EvaluationSummary:
    """Test `model_spec` as one run of `runs` (default: MLflow; `NullRuns()` records nothing).
    Images are prepared as in the model's training, at the model's size; an episode file's
    `<split>:<row>` rows are checked against cfg.data. Ctrl-C and SIGTERM end the run KILLED, as
    they end training."""
    with interruptible():
        return _evaluation(model_spec, cfg, episodes_file, reporter, runs)


def _evaluation(model_spec: str, cfg: EvaluationConfig, episodes_file: str | None, reporter: Reporter,
                runs: Runs | None) -> EvaluationSummary:
    cfg.validate()
    runs = runs or mlflow_runs()
    runs.check_store()
    device = device_option(cfg.device)
    resolved = None
    if model_spec.startswith("models:/"):  # resolved once: the version recorded is the one loaded
        from fsl.tracking.model_registry import resolve_model_uri

        resolved = resolve_model_uri(model_spec)
    source = model_source(model_spec, resolved)
    model = load_model(model_spec, resolved=resolved)
    heads = cfg.head_settings() or {model.config["head"]: model.config["head_args"]}
    for head in heads:
        check_head_takes(head, model.config["encoder"])
        warn_of_head_features(head, model.config["feature_transform"], reporter, trained=True)
    model.place(device)
    # new episodes by default: never the ones the training run tested on
    test_seed = fresh_test_seed(model.training_test_seed) if cfg.test_seed is None else cfg.test_seed
    tested = episodes_to_test(cfg, model, episodes_file, device, test_seed, reporter)
    warn_of_seen_classes(model, tested, reporter)
    params = {"model": model_spec, "data": cfg.data, "test_seed": test_seed, "device_resolved": str(device),
              "precision_resolved": model.config["precision"], "head": ",".join(heads)} | source | tested.params
    tags = run_tags("evaluate", tested.fingerprint, model.config["precision"]) | {
        f"fsl.{key}": value for key, value in source.items()}
    runs.fail_stale_runs(cfg.experiment, alive=process_alive)  # as every command that opens a run
    with runs.open(cfg.experiment, run_name=evaluation_name(model_spec, source), tags=tags) as tracker:
        tracker.log_params(params)
        log_source_diff(tracker)
        if source.get("model_id", "none") != "none":
            tracker.log_model_input(source["model_id"])  # the run page links to the logged model
        if tested.data is not None:
            tracker.log_dataset(dataset_input(tested.data, cfg), "evaluation")
        else:
            tracker.log_dataset(episode_file_input(Path(str(episodes_file)), tested.fingerprint, tested.count),
                                "evaluation")
        test, plain, results = _score_and_log(tracker, model, tested, heads, test_seed, reporter)
        summary = EvaluationSummary(tracker.run_id, test, plain, params, results)
    reporter.echo(runs.link(summary.run_id))
    return summary


def _score_and_log(tracker, model, tested: EpisodesToTest, heads: dict[str, dict[str, Any]], test_seed: int,
                   reporter: Reporter) -> tuple[EvalResult, EvalResult | None, dict[str, EvalResult]]:
    """Score every head on the same features, then (with a hallucinator) the first head without
    hallucination; log and report each: (test of the first head, without hallucination, by head)."""
    score = Scorer(model, tested, test_seed, reporter)
    results = {head: score(head, settings) for head, settings in heads.items()}
    test = next(iter(results.values()))
    log_eval(tracker, test)
    if len(results) > 1:  # each head beside the others: metrics, and the people's line in fsl.result
        for head, result in results.items():
            tracker.log_metrics({f"test_acc_{head}": result.mean, f"test_ci95_{head}": result.ci95})
        tracker.set_tags({RESULT_TAG: " · ".join(f"{head_label(h)} {r.mean:.2f} ± {r.ci95:.2f}"
                                                  for h, r in results.items())})
    for head, result in results.items():
        reporter.echo(f"test ({tested.label}){'' if len(results) == 1 else ', ' + head_label(head)}: {result}")
    plain = None
    if model.M:  # as training reports it: the same encoder and episodes, the hallucinator off
        plain = score(*next(iter(heads.items())), M=0)
        log_eval(tracker, plain, "_no_hallucination")
        reporter.echo(f"test without hallucination (same encoder, same episodes): {plain}")
    return test, plain, results


def model_source(model_spec: str, resolved=None) -> dict[str, str]:
    """What `--model` names, as params and `fsl.` tags of the evaluation: for `models:/...` (given
    `resolved`, what `fsl.tracking.model_registry.resolve_model_uri` made of it) the registered name,
    the version an alias or `latest` resolved to, the training run and the logged model's id;
    for `runs:/...` the run."""
    if resolved is not None:
        return {"model_name": resolved.name or "none", "model_version": resolved.version or "none",
                "model_run_id": resolved.run_id, "model_id": resolved.model_id or "none"}
    if model_spec.startswith("runs:/"):
        return {"model_run_id": model_spec[len("runs:/"):].split("/")[0]}
    return {}


def evaluation_name(model_spec: str, source: dict[str, str] | None = None) -> str:
    """`evaluate-fsl-protonet-v3` for models:/fsl-protonet/3 (and for models:/fsl-protonet@champion
    when the alias points at version 3: `evaluate-fsl-protonet-champion-v3`), `evaluate-best` for a file, ..."""
    version = (source or {}).get("model_version", "none")
    if model_spec.startswith("models:/"):
        name = model_spec[len("models:/"):].replace("@", "-").replace("/", "-v")
        if version != "none" and not name.endswith(f"-v{version}"):
            name += f"-v{version}"
    elif model_spec.startswith("runs:/"):
        name = "run-" + model_spec[len("runs:/"):].split("/")[0][:8]
    else:
        name = Path(model_spec).stem
    return f"evaluate-{name}"


def episode_file_input(path: Path, fingerprint: str, episodes: int) -> dict:
    """An episode file as an MLflow dataset input."""
    return {"name": path.name, "digest": fingerprint, "source": {"episode_file": str(path.resolve())},
            "profile": {"episodes": episodes}}
