"""What a user sees in the MLflow UI: the results view, names, evaluations that say what they
tested, params that are never blank, and the pictures the README shows."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fsl.cli import cli
from tests.conftest import TINY, all_runs

ROOT = Path(__file__).resolve().parents[1]
REGISTER = [a for a in TINY if a != "--no-register"] + ["--register"]


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


# The runs table's shared view, as MLflow 3.17's UI reads it (`mlflow.sharedViewState.<key>`):
# pinned here, so a change to it is a decision, not an accident.
COLUMNS = ["tags.`fsl.result`", "tags.`fsl.model`", "metrics.`test_acc`", "metrics.`test_ci95`",
           "metrics.`best_val_acc`", "params.`M`", "params.`hallucinator`", "params.`shots`", "params.`encoder`",
           "attributes.`Models`", "attributes.`Dataset`"]
PINNED_VIEW = {
    "selectedColumns": COLUMNS,
    "columnOrder": ["attributes.`Run Name`", *COLUMNS],
    "columnWidths": {"attributes.`Run Name`": 300, "tags.`fsl.result`": 130, "tags.`fsl.model`": 250},
    "orderByKey": "metrics.`test_acc`", "orderByAsc": False,  # the best run first
}


def test_every_run_writes_the_results_view_and_its_link_opens_it(tracking):
    out = invoke("protonet", *TINY).output.strip().splitlines()[-1]
    client = MlflowClient()
    [run] = all_runs(client)
    experiment = client.get_experiment(run.info.experiment_id)
    assert json.loads(experiment.tags["mlflow.sharedViewState.fsl-results"]) == PINNED_VIEW
    assert experiment.tags["mlflow.experiment.primaryMetric.name"] == "val_acc"  # the first chart
    table = (f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs"
             f"?workflowType=machine_learning&viewStateShareKey=fsl-results")
    assert f"; all runs: {table}" in out, out
    # the experiments list shows the description: the link and how to read the table
    description = experiment.tags["mlflow.note.content"]
    assert table in description and "test_ci95" in description and "best test accuracy first" in description


def test_no_param_is_blank_and_the_new_spellings_keep_the_config_hash(tracking):
    from fsl.commands.run_identity import config_hash
    from fsl.config import TrainConfig

    invoke("protonet", *TINY)
    [run] = all_runs(MlflowClient())
    params = run.data.params
    assert "" not in params.values(), {k: v for k, v in params.items() if v == ""}
    assert params["format"] == "auto" and params["channels"] == "auto" and params["init"] == "none"
    # a run made before logged the unset options as "": it is the same configuration
    now = TrainConfig(image_size=16).to_params() | {"device_resolved": "cpu", "world_size": 1}
    unset = ("format", "channels", "init", "split_ratio", "split_file", "val_share", "test_data")
    before = {k: ("" if k in unset else v) for k, v in now.items()}
    assert before != now and config_hash(before) == config_hash(now)
    assert config_hash(now | {"init": "runs:/abc"}) != config_hash(now)


def test_logged_models_are_named_for_what_they_are_and_the_main_one_is_listed_first(tracking):
    invoke("protonet", *REGISTER)
    client = MlflowClient()
    [run] = all_runs(client)
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert sorted(m.name for m in models) == ["fsl-protonet-5w1s", "fsl-protonet-5w1s-serve"]
    # the UI lists a run's models newest first: the PyTorch model is logged after its twin
    newest = max(models, key=lambda m: m.creation_timestamp)
    assert newest.name == "fsl-protonet-5w1s"
    assert {o.model_id for o in run.outputs.model_outputs} == {m.model_id for m in models}


def test_evaluate_records_the_version_an_alias_resolved_to_and_the_no_hallucination_figure(tracking):
    invoke("hallucinate", *REGISTER, "-M", "3")
    client = MlflowClient()
    [trained] = all_runs(client)
    out = invoke("evaluate", "--model", "models:/fsl-hallucinate@champion", "--image-size", "16",
                 "--test-episodes", "4", "--test-queries", "3").output
    [evaluation] = [r for r in all_runs(client) if r.info.run_id != trained.info.run_id]
    version = client.get_model_version_by_alias("fsl-hallucinate", "champion")
    assert evaluation.info.run_name == "evaluate-fsl-hallucinate-champion-v1"
    for record in (evaluation.data.params, {k[4:]: v for k, v in evaluation.data.tags.items()
                                            if k.startswith("fsl.model")}):
        assert record["model_name"] == "fsl-hallucinate" and record["model_version"] == "1"
        assert record["model_run_id"] == trained.info.run_id
        assert record["model_id"] == version.source[len("models:/"):]
    # the logged model is an input of the run, so the run page links to it
    inputs = client.get_run(evaluation.info.run_id).inputs.model_inputs  # search_runs leaves them out
    assert [m.model_id for m in inputs] == [record["model_id"]]
    metrics = evaluation.data.metrics
    assert {"test_acc", "test_acc_no_hallucination", "test_ci95_no_hallucination"} <= set(metrics)
    assert "test without hallucination" in out


def test_evaluate_of_a_checkpoint_file_records_no_model_source(tracking, trained_checkpoint):
    from fsl.commands.cmd_evaluate import evaluation_name, model_source

    assert model_source(str(trained_checkpoint)) == {}
    assert model_source("runs:/0123456789abcdef/checkpoints/best.pt") == {"model_run_id": "0123456789abcdef"}
    assert evaluation_name("models:/fsl-protonet/3", {"model_version": "3"}) == "evaluate-fsl-protonet-v3"
    assert evaluation_name("models:/fsl-protonet@champion", {"model_version": "3"}) == \
        "evaluate-fsl-protonet-champion-v3"


@pytest.mark.parametrize("xs, expected", [([10.0], (5.0, 15.0)), ([0.0, 10.0], (-0.5, 10.5)), ([0.0], (-1.0, 1.0))])
def test_the_sweep_plot_axis_fits_one_point_and_keeps_the_baseline_in_view(xs, expected):
    from fsl.viz import x_axis

    low, high, ticks = x_axis(xs)
    assert (low, high) == pytest.approx(expected) and ticks == xs


def test_a_sweep_plot_with_one_point_beside_its_baseline_is_drawn(tmp_path):
    from fsl.viz import sweep_plot

    rows = [{"point": "M=0", "M": "0", "test_acc": 60.0, "test_acc_ci95": 1.0, "is_baseline": True, "n_seeds": 3},
            {"point": "M=10", "M": "10", "test_acc": 63.0, "test_acc_ci95": 1.5, "is_baseline": False, "n_seeds": 3}]
    path = sweep_plot(rows, "M", [], tmp_path / "sweep.png")
    assert path.stat().st_size > 1000


def test_every_picture_the_readme_shows_exists_and_is_small():
    readme = (ROOT / "README.md").read_text()
    pictures = sorted(set(re.findall(r"\((docs/[^)\s]+\.(?:png|jpg|webp))\)", readme)))
    assert len(pictures) >= 3, pictures
    for picture in pictures:
        path = ROOT / picture
        assert path.is_file(), f"README shows {picture}, which is missing"
        assert path.stat().st_size < 200_000, f"{picture} is {path.stat().st_size:,} bytes"


def test_a_dotted_registered_name_is_logged_under_a_name_mlflow_accepts(tracking):
    from mlflow.utils.validation import _validate_logged_model_name

    from fsl.tracking.model_registry import logged_model_name

    assert logged_model_name("team.fsl", 20, 5) == "team-fsl-20w5s"
    _validate_logged_model_name(logged_model_name("a.b%c'd\"e/f:g", 5, 1))  # raises if MLflow refuses it
    invoke("protonet", *REGISTER, "--registered-model-name", "team.fsl", "--ways", "4")
    client = MlflowClient()
    [run] = all_runs(client)
    champion = client.get_model_version_by_alias("team.fsl", "champion")
    assert run.info.status == "FINISHED" and str(champion.version) == "1"
    names = {m.name for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])}
    assert names == {"team-fsl-4w1s", "team-fsl-4w1s-serve"}  # the training shape, as the run's name
