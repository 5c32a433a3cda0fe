"""End to end through the `fsl` command, read back from a temporary MLflow store."""

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fsl.cli import cli
from tests.conftest import TINY, all_runs


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def only_run(client: MlflowClient):
    runs = all_runs(client)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_help_lists_the_commands_and_every_option_shows_its_default():
    result = invoke("--help")
    for command in ("protonet", "hallucinate", "evaluate", "sweep", "sweep-m"):
        assert command in result.output
    help_text = invoke("protonet", "--help").output
    assert "--ways INTEGER" in help_text and "[default: 5]" in help_text
    assert "[default: euclidean]" in help_text and "[default: synthetic]" in help_text


def test_protonet_run_logs_params_metrics_and_artifacts(tracking):
    result = invoke("protonet", *TINY, "--epochs", "2", "--distance", "cosine")
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    run = only_run(client)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["ways"] == "5" and params["shots"] == "1" and params["distance"] == "cosine"
    assert params["test_shots"] == "1" and params["lr"] == "0.001" and params["epochs"] == "2"
    assert params["device_resolved"] == "cpu" and params["precision_resolved"] == "fp32"
    assert run.data.tags["fsl.version"] and run.data.tags["fsl.data_fingerprint"]
    assert run.data.tags["fsl.precision"] == "fp32"
    for key in ("train_loss", "train_acc", "val_acc"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2]
    episodes = client.get_metric_history(run.info.run_id, "test_episode_acc")
    assert sorted(m.step for m in episodes) == list(range(5))
    assert all(0 <= m.value <= 100 for m in episodes)
    mean = sum(m.value for m in episodes) / 5
    assert run.data.metrics["test_acc"] == pytest.approx(mean)
    assert run.data.metrics["test_ci95"] >= 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "learning_curve.png"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]


def test_evaluate_scores_a_checkpoint_and_an_mlflow_run_uri(tracking, trained_checkpoint):
    result = invoke("evaluate", "--model", str(trained_checkpoint), "--image-size", "16",
                    "--test-episodes", "4", "--test-queries", "3")
    assert result.exit_code == 0, result.output
    run = only_run(MlflowClient())
    assert len(MlflowClient().get_metric_history(run.info.run_id, "test_episode_acc")) == 4
    # the same model through an MLflow URI: a run's logged checkpoint
    invoke("protonet", *TINY)
    train_run = [r for r in MlflowClient().search_runs([run.info.experiment_id])
                 if r.data.tags.get("fsl.method") == "protonet"][0]
    result = invoke("evaluate", "--model", f"runs:/{train_run.info.run_id}", "--image-size", "16",
                    "--test-episodes", "2", "--test-queries", "3")
    assert result.exit_code == 0, result.output


def test_an_error_during_training_marks_the_run_failed(tracking, monkeypatch):
    import fsl.commands.cmd_train

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(fsl.commands.cmd_train, "train", explode)
    result = CliRunner().invoke(cli, ["protonet", *TINY])
    assert result.exit_code != 0
    assert only_run(MlflowClient()).info.status == "FAILED"


def test_episode_file_written_then_evaluated_gives_identical_numbers_on_repeat(tracking, trained_checkpoint):
    result = invoke("episodes", "--image-size", "16", "--split", "test", "-n", "6", "--ways", "3",
                    "--shots", "2", "--queries", "2", "-o", "eps.csv")
    assert result.exit_code == 0, result.output
    args = ["evaluate", "--model", str(trained_checkpoint), "--episodes", "eps.csv", "--image-size", "16"]
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output
    client = MlflowClient()
    runs = all_runs(client)
    assert len(runs) == 2
    histories = [[m.value for m in sorted(client.get_metric_history(r.info.run_id, "test_episode_acc"),
                                          key=lambda m: m.step)] for r in runs]
    assert len(histories[0]) == 6 and histories[0] == histories[1]
    assert runs[0].data.metrics["test_acc"] == runs[1].data.metrics["test_acc"]


def test_data_inspect_and_cache_make_no_run(tracking):
    result = invoke("data", "inspect", "synthetic", "--image-size", "16")
    assert result.exit_code == 0
    assert "train: 64 classes" in result.output and "min 60 / median 60 / max 60" in result.output
    assert "3x16x16" in result.output
    listing = invoke("data", "cache")
    assert listing.exit_code == 0 and "synthetic-" in listing.output and "MiB" in listing.output
    client = MlflowClient()
    assert all_runs(client) == []


def test_a_sharded_sweep_runs_only_its_share_of_the_grid(tracking):
    result = invoke("sweep", *TINY, "--param", "shots=1,2", "--param", "distance=l2,cosine",
                    "--param", "augment=false,true", "--shard", "1", "--shards", "3")
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    runs = all_runs(client)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    # the 8 points in order (shots, distance, augment); shard 1 of 3 takes indices 1, 4 and 7
    points = {(c.data.params["shots"], c.data.params["distance"], c.data.params["augment"]) for c in children}
    # `augment=false,true`, as saved commands of fsl 0.1 say it, are the policies none and omniglot
    assert points == {("1", "l2", "omniglot"), ("2", "l2", "none"), ("2", "cosine", "omniglot")}
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.params["shards"] == "3" and parent.data.params["sweep_shots"] == "1,2"


def test_registering_a_failed_run_needs_allow_failed_and_never_changes_its_status(tracking):
    assert invoke("protonet", *TINY).exit_code == 0
    client = MlflowClient()
    run_id = only_run(client).info.run_id
    client.set_terminated(run_id, "FAILED")
    refused = CliRunner().invoke(cli, ["register", "--run-id", run_id])
    assert refused.exit_code == 2 and "is FAILED" in refused.output
    allowed = invoke("register", "--run-id", run_id, "--allow-failed")
    assert allowed.exit_code == 0 and "registered fsl-protonet version 1" in allowed.output
    assert client.get_run(run_id).info.status == "FAILED"


@pytest.mark.slow
def test_a_sweep_parent_whose_process_died_is_marked_failed_by_the_next_command(tracking):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    client = MlflowClient()
    experiment = client.create_experiment("fsl")
    parent = client.create_run(experiment, tags={"fsl.method": "sweep", "fsl.host": socket.gethostname(),
                                                 "fsl.pid": dead})
    assert invoke("protonet", *TINY).exit_code == 0
    assert client.get_run(parent.info.run_id).info.status == "FAILED"
    # an evaluation reaps too (the README promises it of every command that opens a run)
    killed = client.create_run(experiment, tags={"fsl.method": "protonet", "fsl.host": socket.gethostname(),
                                                 "fsl.pid": dead})
    finished = client.search_runs([experiment], "attributes.status = 'FINISHED'")[0].info.run_id
    model = f"runs:/{finished}"
    assert invoke("evaluate", "--model", model, "--image-size", "16", "--test-episodes", "3").exit_code == 0
    assert client.get_run(killed.info.run_id).info.status == "FAILED"


def test_runs_have_descriptive_names_and_log_their_data_set(tracking):
    assert invoke("hallucinate", *TINY, "-M", "3", "--hallucinator", "wang").exit_code == 0
    assert invoke("protonet", *TINY).exit_code == 0
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time ASC"])
    assert [r.info.run_name for r in runs] == ["hallucinate-wang-M3-5w1s", "protonet-5w1s-euclidean"]
    [dataset] = runs[1].inputs.dataset_inputs
    assert dataset.dataset.name == "synthetic" and dataset.dataset.digest == runs[1].data.tags["fsl.data_fingerprint"]
    assert '"train_classes": 64' in dataset.dataset.profile and dataset.tags[0].value == "training"
    assert runs[1].data.params["torch_threads"] == "1" and "torch_version" in runs[1].data.params


def test_deterministic_runs_with_one_seed_give_the_same_numbers_to_the_last_digit(tracking):
    for _ in range(2):
        assert invoke("hallucinate", *TINY, "-M", "4", "--hallucinator", "wang", "--deterministic",
                      "--seed", "3").exit_code == 0
    client = MlflowClient()
    runs = all_runs(client)
    assert len(runs) == 2 and runs[0].data.params["deterministic"] == "True"
    for key in ("test_acc", "test_acc_no_hallucination", "best_val_acc", "train_loss"):
        assert runs[0].data.metrics[key] == runs[1].data.metrics[key], key
    histories = [[m.value for m in sorted(client.get_metric_history(r.info.run_id, "test_episode_acc"),
                                          key=lambda m: m.step)] for r in runs]
    assert histories[0] == histories[1]


def test_patience_stops_training_once_val_accuracy_stops_improving(tracking):
    result = invoke("protonet", *TINY, "--epochs", "12", "--patience", "1", "--lr", "1e-6")
    assert result.exit_code == 0, result.output
    run = only_run(MlflowClient())
    val = MlflowClient().get_metric_history(run.info.run_id, "val_acc")
    best_epoch = int(run.data.metrics["best_epoch"])
    assert len(val) == best_epoch + 1 < 12  # one epoch without improvement, then stop
    assert run.data.params["patience"] == "1"


def test_resume_refuses_a_run_that_finished(tracking):
    assert invoke("protonet", *TINY).exit_code == 0
    run_id = only_run(MlflowClient()).info.run_id
    again = CliRunner().invoke(cli, ["protonet", *TINY, "--resume", run_id])
    assert again.exit_code == 2 and "the run FINISHED; there is nothing to resume" in again.output


def test_a_run_made_by_mlflow_run_gets_a_descriptive_name(tracking, monkeypatch):
    client = MlflowClient()
    made = client.create_run(client.create_experiment("fsl"))  # what `mlflow run` does before the command
    monkeypatch.setenv("MLFLOW_RUN_ID", made.info.run_id)
    assert invoke("protonet", *TINY).exit_code == 0
    assert client.get_run(made.info.run_id).info.run_name == "protonet-5w1s-euclidean"


def test_evaluating_an_mlflow_uri_leaves_no_downloaded_checkpoint_behind(tracking, tmp_path, monkeypatch):
    import tempfile

    invoke("protonet", *TINY)
    run_id = only_run(MlflowClient()).info.run_id
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    invoke("evaluate", "--model", f"runs:/{run_id}", "--image-size", "16", "--test-episodes", "3")
    assert list(temporary.rglob("*.pt")) == []


def test_every_command_that_opens_a_run_ends_with_its_ui_link(tracking):
    client = MlflowClient()
    trained = invoke("protonet", *TINY)
    run = only_run(client)
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    last = trained.output.strip().splitlines()[-1]
    assert last.startswith(f"run {run.info.run_name} ({run.info.run_id}): http://127.0.0.1:5000/{page}"), last
    assert f"mlflow ui --backend-store-uri {tracking}" in last
    evaluated = invoke("evaluate", "--model", f"runs:/{run.info.run_id}", "--image-size", "16", "--test-episodes", "3")
    assert "?workflowType=machine_learning" in evaluated.output.strip().splitlines()[-1]
    swept = invoke("sweep", *TINY, "--param", "shots=1")
    assert swept.output.strip().splitlines()[-1].startswith("run sweep-protonet-shots1 (")


def test_a_run_killed_between_testing_and_registering_logs_its_test_once_when_resumed(tracking, monkeypatch):
    import fsl.commands.cmd_train as training

    real = training._tag_and_register

    def killed(*args, **kwargs):
        raise RuntimeError("killed after testing")

    monkeypatch.setattr(training, "_tag_and_register", killed)
    with pytest.raises(RuntimeError, match="killed after testing"):
        invoke("protonet", *[a for a in TINY if a != "--no-register"])
    client = MlflowClient()
    run = only_run(client)
    assert run.info.status == "FAILED" and "test_acc" in run.data.metrics
    monkeypatch.setattr(training, "_tag_and_register", real)
    resumed = invoke("protonet", *[a for a in TINY if a != "--no-register"], "--resume")
    assert resumed.exit_code == 0 and f"resuming run {run.info.run_id}" in resumed.output, resumed.output
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    for key in ("test_episode_acc", "test_acc", "test_ci95"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)  # once per step, not twice
    assert len(client.get_metric_history(run.info.run_id, "test_episode_acc")) == 5
    assert client.get_model_version_by_alias("fsl-protonet", "champion").run_id == run.info.run_id
