"""Scale-out and faults: DDP under torchrun, resume after kill -9, a tracking server, concurrent
runs on one SQLite store, signals. Each test runs the real `fsl` command in subprocesses."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import TINY

BUDGET = [*TINY, "--epochs", "3", "--episodes-per-epoch", "4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsl(*args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsl", *args], env=env or os.environ.copy(), capture_output=True,
                          text=True, timeout=timeout)


def runs(uri: str):
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time ASC"])


def checkpoint(uri: str, run_id: str) -> dict:
    from fsl.tracking import download

    return torch.load(download(f"runs:/{run_id}/checkpoints/best.pt"), weights_only=True)


def test_two_gloo_processes_make_one_run_that_matches_one_process_with_two_episodes_per_step(tracking):
    budget = [*TINY, "--epochs", "1", "--episodes-per-epoch", "3", "--device", "cpu"]
    env = os.environ | {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                          "-m", "fsl", "protonet", *budget], env=env, capture_output=True, text=True, timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    [run] = runs(tracking)
    assert run.data.params["world_size"] == "2" and run.info.status == "FINISHED"
    single = fsl("protonet", *budget, "--episodes-per-step", "2", env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp_run, single_run = runs(tracking)
    assert single_run.data.params["world_size"] == "1"
    a = checkpoint(tracking, ddp_run.info.run_id)["state_dict"]
    b = checkpoint(tracking, single_run.info.run_id)["state_dict"]
    weights = [k for k in a if "running_" not in k and "num_batches" not in k]
    assert weights and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in weights)
    # validation and test are reduced over the ranks: the same numbers as one process
    assert ddp_run.data.metrics["val_acc"] == pytest.approx(single_run.data.metrics["val_acc"], abs=1e-9) or \
        not all(torch.equal(a[k], b[k]) for k in a)  # equal weights and stats give equal accuracies


def test_a_run_killed_with_sigkill_resumes_to_the_metrics_of_an_uninterrupted_run(tracking):
    whole = fsl("protonet", *BUDGET)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = fsl("protonet", *BUDGET, env=os.environ | {"FSL_TEST_KILL_AFTER_EPISODE": "6"})
    assert killed.returncode == -signal.SIGKILL
    interrupted = runs(tracking)[-1]
    assert interrupted.info.status == "RUNNING"
    resumed = fsl("protonet", *BUDGET, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    client = MlflowClient(tracking)
    first, second = client.get_run(runs(tracking)[0].info.run_id), client.get_run(interrupted.info.run_id)
    assert len(runs(tracking)) == 2 and second.info.status == "FINISHED"  # the same run, continued
    for key in ("test_acc", "test_ci95", "best_val_acc"):
        assert second.data.metrics[key] == first.data.metrics[key], key
    history = lambda r, k: [m.value for m in sorted(client.get_metric_history(r, k), key=lambda m: m.step)]
    assert history(second.info.run_id, "test_episode_acc") == history(first.info.run_id, "test_episode_acc")
    assert history(second.info.run_id, "val_acc") == history(first.info.run_id, "val_acc")


def test_a_stale_running_run_is_marked_failed_by_the_next_command(tracking):
    killed = fsl("protonet", *BUDGET, env=os.environ | {"FSL_TEST_KILL_AFTER_EPISODE": "2"})
    assert killed.returncode == -signal.SIGKILL
    assert runs(tracking)[0].info.status == "RUNNING"
    assert fsl("protonet", *TINY).returncode == 0
    stale, fresh = runs(tracking)
    assert stale.info.status == "FAILED" and fresh.info.status == "FINISHED"


@pytest.mark.parametrize("sig, status", [("TERM", "KILLED"), ("INT", "KILLED")])
def test_sigterm_and_ctrl_c_end_the_run_killed_and_keep_the_last_good_checkpoint(tracking, fsl_cache, sig, status):
    out = fsl("protonet", *BUDGET, env=os.environ | {"FSL_TEST_KILL_AFTER_EPISODE": "6", "FSL_TEST_KILL_SIGNAL": sig})
    assert out.returncode != 0 and "Traceback" not in out.stderr
    [run] = runs(tracking)
    assert run.info.status == status
    best = fsl_cache / "runs" / run.info.run_id / "best.pt"
    from fsl.models.classifier import load_checkpoint

    assert load_checkpoint(best).feature_dim == 64  # epoch 1's weights, loadable


def test_a_nan_loss_fails_the_run_with_epoch_and_episode_and_keeps_a_loadable_checkpoint(tracking, fsl_cache):
    out = fsl("protonet", *BUDGET, "--lr", "1e30", "--distance", "dot")
    assert out.returncode != 0
    assert "non-finite training loss at epoch" in out.stderr and "episode" in out.stderr
    [run] = runs(tracking)
    assert run.info.status == "FAILED"
    from fsl.models.classifier import load_checkpoint

    best = fsl_cache / "runs" / run.info.run_id / "best.pt"
    if best.exists():  # when epoch 1 was still finite, its weights are the last good ones
        load_checkpoint(best)


def test_two_runs_started_at_once_on_a_fresh_sqlite_store_both_log_everything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow's default: sqlite:///mlflow.db here
    procs = [subprocess.Popen([sys.executable, "-m", "fsl", "protonet", *BUDGET, "--seed", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    finished = runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(finished) == 2 and all(r.info.status == "FINISHED" for r in finished)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for r in finished:
        assert len(client.get_metric_history(r.info.run_id, "val_acc")) == 3
        assert len(client.get_metric_history(r.info.run_id, "test_episode_acc")) == 5


@pytest.mark.slow
def test_training_against_a_tracking_server_and_reading_the_run_back(tmp_path):
    port = free_port()
    server = subprocess.Popen(["mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        out = fsl("protonet", *TINY, env=os.environ | {"MLFLOW_TRACKING_URI": uri}, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        [run] = runs(uri)
        assert run.info.status == "FINISHED" and len(MlflowClient(uri).get_metric_history(
            run.info.run_id, "test_episode_acc")) == 5
        assert any(Path(tmp_path / "artifacts").rglob("best.pt"))  # artifacts went to the server's store
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_an_unreachable_tracking_server_fails_in_seconds_naming_the_uri(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    out = fsl("protonet", *TINY, env=os.environ | {"MLFLOW_TRACKING_URI": uri}, timeout=120)
    assert time.monotonic() - started < 30  # the interpreter start and imports included
    assert out.returncode == 2 and uri in out.stderr and "unreachable" in out.stderr
    assert "training episodes" not in out.stdout
