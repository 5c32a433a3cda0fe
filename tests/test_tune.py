"""`fsl tune`: the search space, bad input, workers sharing one study through a tracking server,
a worker killed mid-trial, Ctrl-C, and a search through `mlflow run` ending in a loadable model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fsl.cli import cli
from fsl.config import TrainConfig
from fsl.errors import UsageError
from fsl.processes import free_port
from fsl.search_space import parse_space

ROOT = Path(__file__).resolve().parents[1]
# 16 px, a few episodes: a trial takes seconds. --heartbeat 1: a dead worker's trial is failed after 3 s.
SMALL = ["--image-size", "16", "--episodes-per-epoch", "4", "--val-episodes", "3", "--queries", "3",
         "--test-queries", "3", "--test-episodes", "5", "--precision", "fp32", "--heartbeat", "1"]
SPACE = ["--param", "lr=1e-4..1e-2:log ways=3..6"]


def worker(*args: str, uri: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "fsl", "tune", *SMALL, *SPACE, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trials_of(storage: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def children(uri: str, study: str) -> list:
    """The trial runs of a study, in every experiment of the store."""
    client = MlflowClient(uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               f"tags.`fsl.study` = '{study}'", max_results=1000)
    return [r for r in found if "fsl.trial" in r.data.tags]


def finished(runs: list) -> list:
    return [r for r in runs if r.data.tags.get("fsl.trial_state") in ("COMPLETE", "PRUNED")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `mlflow server` on 127.0.0.1 (SQLite backend) for every test of this module."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    process = subprocess.Popen(["mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                                "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2)
            break
        except OSError:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 90 s"
            time.sleep(0.5)
    yield uri
    process.terminate()
    process.wait(timeout=20)


# ------------------------------------------------------------------------------ the space
def test_a_space_reads_ranges_choices_and_fixed_values_with_the_options_types():
    space = parse_space(TrainConfig(), ["lr=1e-4..1e-2:log", "ways=5..30", "hallucinator=improved,wang", "shots=5",
                                        "hallucinator.diversity_weight=0.1..0.5"])
    kinds = {a.name: (a.kind, a.values, a.log) for a in space.axes}
    assert kinds["lr"] == ("range", (1e-4, 1e-2), True)
    assert kinds["ways"] == ("range", (5, 30), False) and isinstance(kinds["ways"][1][0], int)
    assert kinds["hallucinator"] == ("choice", ("improved", "wang"), False)
    assert kinds["shots"] == ("fixed", (5,), False) and space.fixed_values() == {"shots": 5}
    assert kinds["hallucinator.diversity_weight"][0] == "range"
    assert [a.name for a in space.searched] == ["lr", "ways", "hallucinator", "hallucinator.diversity_weight"]
    wider = parse_space(TrainConfig(), ["ways=5..30"])
    assert wider.signature() != parse_space(TrainConfig(), ["ways=5..20"]).signature()


@pytest.mark.parametrize("items, message", [
    (["lr=1e-2..1e-4"], "empty range"),
    (["ways=5..5"], "empty range"),
    (["lr=0..1e-2:log"], "log range needs bounds above 0"),
    (["warp=1..2"], "not a training option"),
    (["distance=l2..cosine"], "not a number"),
    (["lr=0.1", "lr=0.2"], "given twice"),
    (["ways=1..5"], "--ways"),  # a bound the training options refuse, before any trial
])
def test_a_bad_space_is_refused_naming_the_item(items, message):
    with pytest.raises(UsageError, match=message):
        parse_space(TrainConfig(), items)


@pytest.mark.parametrize("args, message", [
    (["--param", "lr=1e-2..1e-4"], "empty range"),
    (["--param", "lr=-1..1:log"], "log range needs bounds above 0"),
    (["--param", "warp=1..2"], "not a training option"),
    (["--objective", "test_acc"], "never on a test figure"),
    (["--objective", "val_loss"], "not a validation figure"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--param", "shots=1..5"], "needs a fixed --test-shots"),
    (["--param", "M=10..100"], "--method hallucinate"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(cli, ["tune", *SMALL, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlflow.optuna.db").exists()


def test_a_study_that_exists_with_another_space_is_refused_naming_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="mine", storage=storage, direction="maximize")
    study.set_user_attr("fsl.space", '["ways=5..20"]')
    study.set_user_attr("fsl.objective", "best_val_acc")
    result = CliRunner().invoke(cli, ["tune", *SMALL, "--study", "mine", "--storage", storage, "--param", "ways=5..30"])
    assert result.exit_code == 2, result.output
    assert "ways=5..20" in result.output and "ways=5..30" in result.output
    assert len(trials_of(storage, "mine")) == 0


# ------------------------------------------------------------------------------ workers
@pytest.mark.slow
def test_two_workers_share_one_study_through_a_tracking_server(server, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ("--study", "shared", "--storage", storage, "--trials", "8", "--epochs", "1")
    workers = [worker(*args, uri=server, cwd=tmp_path) for _ in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-2000:] for o in outputs]
    runs = children(server, "shared")
    done = finished(runs)
    numbers = [r.data.tags["fsl.trial"] for r in done]
    assert len(done) == 8 and len(set(numbers)) == 8, sorted(numbers)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in done)  # pruned: KILLED, tagged PRUNED
    assert {r.data.tags["fsl.worker"].split(":")[1] for r in done} == {str(w.pid) for w in workers}  # both worked
    [parent] = [r for r in MlflowClient(server).search_runs(
        [e.experiment_id for e in MlflowClient(server).search_experiments()], "tags.`fsl.study` = 'shared'")
        if "fsl.trial" not in r.data.tags]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
    complete = [r for r in done if r.data.tags["fsl.trial_state"] == "COMPLETE"]
    best = max(complete, key=lambda r: r.data.metrics["best_val_acc"])
    assert parent.data.metrics["best_val_acc"] == best.data.metrics["best_val_acc"]
    assert parent.data.tags["fsl.best_run"] == best.info.run_id or \
        best.data.metrics["best_val_acc"] == MlflowClient(server).get_run(
            parent.data.tags["fsl.best_run"]).data.metrics["best_val_acc"]  # a tie
    artifacts = {a.path for a in MlflowClient(server).list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "optimization_history.png"} <= artifacts
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_no_trial_lost_or_counted_twice(server, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ("--study", "faulty", "--storage", storage, "--trials", "3", "--epochs", "2", "--episodes-per-epoch", "30",
            "--pruner", "none")
    victim = worker(*args, uri=server, cwd=tmp_path)
    client, deadline = MlflowClient(server), time.monotonic() + 120
    running = []
    while not running:  # the victim's first trial run, RUNNING
        assert time.monotonic() < deadline and victim.poll() is None, victim.stdout.read()[-2000:]
        time.sleep(0.5)
        running = [r for r in children(server, "faulty") if r.info.status == "RUNNING"
                   and r.data.tags["fsl.worker"].split(":")[1] == str(victim.pid)]
    # frozen at once, so that it dies mid-trial however fast the CPU: on a Zen 4 the 2 x 30 episodes
    # ended within the 1.5 s below and the trial was COMPLETE, not killed
    os.kill(victim.pid, signal.SIGSTOP)
    survivor = worker(*args, uri=server, cwd=tmp_path)
    time.sleep(1.5)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    output = survivor.communicate(timeout=400)[0]
    assert survivor.returncode == 0, output[-2000:]
    trials = trials_of(storage, "faulty")
    killed = next(t for t in trials if t.user_attrs.get("fsl.run_id") == running[0].info.run_id)
    assert killed.state.name == "FAIL"
    assert any(t.system_attrs.get("failed_trial") == killed.number for t in trials)  # run again
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 3 and len({t.number for t in counted}) == 3
    assert client.get_run(running[0].info.run_id).info.status == "FAILED"
    assert len(finished(children(server, "faulty"))) == 3
    assert not [r for r in children(server, "faulty") if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_ctrl_c_ends_the_running_trial_killed_and_leaves_nothing_running(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = worker("--study", "stopped", "--trials", "3", "--epochs", "3", "--episodes-per-epoch", "40",
                     uri=uri, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not [r for r in children(uri, "stopped") if r.info.status == "RUNNING"]:
        assert time.monotonic() < deadline and process.poll() is None, process.stdout.read()[-2000:]
        time.sleep(0.5)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]
    assert process.returncode != 0 and "Traceback" not in output, output[-2000:]
    client = MlflowClient(uri)
    every = client.search_runs([e.experiment_id for e in client.search_experiments()], "")
    assert not [r for r in every if r.info.status == "RUNNING"]
    [stopped] = [r for r in children(uri, "stopped") if r.info.status == "KILLED"]
    assert stopped.data.tags["fsl.trial_state"] == "FAIL"  # not PRUNED: it is not a result
    [trial] = [t for t in trials_of(f"sqlite:///{tmp_path / 'mlflow.optuna.db'}", "stopped")
               if t.user_attrs.get("fsl.run_id") == stopped.info.run_id]
    assert trial.state.name == "FAIL"


@pytest.mark.slow
def test_a_search_through_mlflow_run_registers_a_model_that_loads_and_classifies(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_TRACKING_URI": uri}
    parameters = ["image_size=16", "epochs=1", "episodes_per_epoch=4", "val_episodes=3", "test_episodes=5",
                  "queries=3", "test_queries=3", "params=lr=1e-4..1e-2:log ways=3..6", "trials=2", "register=best"]
    out = subprocess.run(["mlflow", "run", str(ROOT), "-e", "tune", "--env-manager", "local",
                          "--experiment-name", "fsl", *[a for p in parameters for a in ("-P", p)]],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fsl").experiment_id], "")
    [parent] = [r for r in runs if "fsl.trial" not in r.data.tags]
    trials = [r for r in runs if "fsl.trial" in r.data.tags]
    assert len(trials) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    [version] = client.search_model_versions("name = 'fsl-protonet'")
    assert version.run_id == parent.data.tags["fsl.best_run"]
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pytorch.load_model(f"models:/fsl-protonet/{version.version}")
    finally:
        mlflow.set_tracking_uri(before)
    from fsl.data import load_dataset

    images = load_dataset("synthetic", 16).split("test").images
    labels = model.classify(images[:3], ["a", "b", "c"], images[:3]).labels
    assert labels == ["a", "b", "c"]


def test_the_study_storage_defaults_beside_a_local_sqlite_store_and_is_asked_for_otherwise():
    from fsl.commands.cmd_tune import default_storage

    assert default_storage("sqlite:////x/y/mlflow.db") == "sqlite:////x/y/mlflow.optuna.db"
    with pytest.raises(UsageError, match="--storage"):
        default_storage("http://127.0.0.1:5000")
    with pytest.raises(UsageError, match=r"fsl:\*\*\*@db"):
        default_storage("postgresql://fsl:secret@db/mlflow")



# ------------------------------------------------------------------------------ the worker loop
def _study(tmp_path, heartbeat: float = 1.0):
    import optuna

    from fsl.commands.cmd_tune import _storage

    storage = _storage(optuna, f"sqlite:///{tmp_path / 'loop.db'}", heartbeat)
    return optuna, optuna.create_study(study_name="loop", storage=storage, direction="maximize")


def test_the_slot_of_a_dead_workers_trial_comes_free_and_its_retry_runs(tmp_path):
    """A trial whose worker died holds the last slot: it is failed after 3 heartbeats, and its
    retry (WAITING) runs in this worker instead of the worker waiting for ever."""
    from fsl.commands.cmd_tune import TuneSettings, _work

    optuna, study = _study(tmp_path)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study._storage.record_heartbeat(dead._trial_id)  # then silence: its worker is gone
    time.sleep(3.5)
    calls = []

    def objective(trial):
        calls.append(trial.number)
        return trial.suggest_float("x", 0, 1)

    _work(optuna, study, objective, TuneSettings(trials=1, timeout=30))  # a worker that waits gives up at 30 s
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[dead.number] == "FAIL" and list(states.values()).count("COMPLETE") == 1
    [retry] = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert retry.system_attrs.get("failed_trial") == dead.number and calls == [retry.number]


def test_a_failed_trial_is_failed_and_the_study_goes_on(tmp_path):
    from fsl.commands.cmd_tune import TuneSettings, _work
    from fsl.errors import FslError

    optuna, study = _study(tmp_path)

    def objective(trial):
        if trial.number == 0:
            raise FslError("the loss is not finite")
        return 1.0

    _work(optuna, study, objective, TuneSettings(trials=2))
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "COMPLETE", "COMPLETE"]


def test_a_storage_error_is_recognised_through_optunas_wrapping():
    import optuna
    import sqlalchemy.exc

    from fsl.commands.cmd_tune import _is_storage_error

    try:
        try:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("could not connect"))
        except sqlalchemy.exc.OperationalError as driver:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from driver
    except optuna.exceptions.StorageInternalError as wrapped:
        assert _is_storage_error(wrapped)
    assert not _is_storage_error(ValueError("a bug"))


def test_a_pruned_trial_ends_killed_tagged_pruned_keeps_no_checkpoint_and_is_not_resumable(tracking, tmp_path,
                                                                                           monkeypatch):
    from fsl.commands.cmd_train import run_training
    from fsl.commands.options import SILENT, RunOptions
    from fsl.errors import RunStopped
    from fsl.tracking.runs import MlflowRuns

    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    opened = []

    def prune(metric: str, epoch: int, value: float) -> None:
        raise RunStopped("pruned", "KILLED", {"fsl.trial_state": "PRUNED"})

    cfg = TrainConfig(image_size=16, epochs=2, episodes_per_epoch=3, val_episodes=2, queries=3, test_queries=3,
                      precision="fp32")
    with pytest.raises(RunStopped):
        run_training(cfg, RunOptions(register=False, test=False, on_validation=prune, on_open=opened.append,
                                     system_metrics=False), SILENT)
    run = MlflowClient().get_run(opened[0])
    assert run.info.status == "KILLED" and run.data.tags["fsl.trial_state"] == "PRUNED"
    assert not (tmp_path / "cache" / "runs" / opened[0]).exists()  # its checkpoints are gone
    assert opened[0] not in [r.run_id for r in MlflowRuns().unfinished_runs(cfg.experiment)]
