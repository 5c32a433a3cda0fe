"""Scale-out and faults: DDP under torchrun, resume after kill -9, a tracking server, concurrent
runs on one SQLite store, signals. Each test runs the real `fsl` command in subprocesses."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from fsl.processes import Terminated, free_port, interruptible, stop_if_interrupted
from tests.conftest import TINY, tracking_store

pytestmark = pytest.mark.slow  # every test here runs fsl in other processes

BUDGET = [*TINY, "--epochs", "3", "--episodes-per-epoch", "4"]


def fsl(*args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsl", *args], env=env or os.environ.copy(), capture_output=True,
                          text=True, timeout=timeout)


def runs(uri: str):
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time ASC"])


def checkpoint(uri: str, run_id: str) -> dict:
    from fsl.tracking.runs import download

    return torch.load(download(f"runs:/{run_id}/checkpoints/best.pt"), weights_only=True)


def test_two_gloo_processes_make_one_run_that_matches_one_process_with_two_episodes_per_step(tracking):
    # 300 val and test episodes: two chunks of evaluation (204 episodes each at this shape), so
    # rank 1 scores one of them and the all-reduce decides the accuracy. fp64: the single process
    # encodes its two episodes as one batch, and in fp32 Adam turns the rounding noise in a
    # near-zero gradient (a convolution's bias before BatchNorm) into a full step.
    budget = [*TINY, "--epochs", "1", "--episodes-per-epoch", "3", "--device", "cpu", "--val-episodes", "300",
              "--test-episodes", "300", "--precision", "fp64"]
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
    assert weights and all(torch.allclose(a[k], b[k], atol=1e-8, rtol=1e-7) for k in weights)
    # Validation and test are sharded over the ranks and summed by an all-reduce: they give what
    # one process gives for the DDP run's own model on the same episodes, to the last digit. (The
    # single-process run is another model: its BatchNorm running statistics saw both episodes of
    # a step in turn, DDP's the average of two, so its accuracies legitimately differ.)
    from fsl.config import TrainConfig
    from fsl.data import load_dataset
    from fsl.evaluate import evaluate, sample_episodes
    from fsl.models.classifier import load_checkpoint
    from fsl.tracking.runs import download
    from fsl.train import validation_episodes

    cfg = TrainConfig(image_size=16, test_queries=3, val_episodes=300, test_episodes=300)
    model = load_checkpoint(download(f"runs:/{ddp_run.info.run_id}/checkpoints/best.pt"))
    data = load_dataset("synthetic", 16)
    assert evaluate(model, *validation_episodes(data, cfg, torch.device("cpu"))).mean == \
        ddp_run.data.metrics["val_acc"]
    test = data.split("test")
    episodes = sample_episodes(test, cfg.test_shape, cfg.test_episodes, cfg.test_seed, "test")
    assert evaluate(model, test, episodes, noise_seed=cfg.test_seed).mean == ddp_run.data.metrics["test_acc"]


# A signal is sent when the first `last.pt` appears: five more epochs of 60 episodes are left,
# so a loaded machine that is slow to notice the file still interrupts a live run.
KILL_BUDGET = [*TINY, "--epochs", "6", "--episodes-per-epoch", "60"]
# A run that only ever ends by being interrupted (Ctrl-C): no finish to race against.
ENDLESS_BUDGET = [*TINY, "--epochs", "1000", "--episodes-per-epoch", "60"]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fsl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_first_epoch(process: subprocess.Popen, cache: Path, before: set, timeout: float = 120,
                         name: str = "last.pt") -> Path:
    """The new run's `last.pt` (or `name`), as soon as the process has written it (it then trains epoch 2)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [p for p in (cache / "runs").glob(f"*/{name}") if p.parent.name not in before]
        if fresh:
            return fresh[0]
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.002)
    raise AssertionError("no last.pt within the timeout")


def run_folders(cache: Path) -> set:
    return {p.name for p in (cache / "runs").glob("*")} if (cache / "runs").exists() else set()


def metric_history(uri: str, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)]


def interrupt(cache: Path, sig: int, budget: list[str] = KILL_BUDGET) -> tuple[subprocess.Popen, str]:
    """Start a run, send `sig` once its first epoch is checkpointed; (process, run id)."""
    process = start("protonet", *budget)
    last = wait_for_first_epoch(process, cache, run_folders(cache))
    process.send_signal(sig)
    try:
        process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()  # never leave a training process behind to slow down the rest of the suite
        raise AssertionError(f"signal {sig} did not end the run: {process.communicate()[1][-2000:]}") from None
    return process, last.parent.name


RESUMED_METRICS, RESUMED_HISTORIES = ("test_acc", "test_ci95", "best_val_acc"), ("test_episode_acc", "val_acc")


def assert_resumes_to(uri: str, run_id: str, whole: dict, explicit: bool = False) -> None:
    resumed = fsl("protonet", *KILL_BUDGET, "--resume", *([run_id] if explicit else []))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming run {run_id}" in resumed.stdout
    second = MlflowClient(uri).get_run(run_id)
    assert second.info.status == "FINISHED"
    for key in RESUMED_METRICS:
        assert second.data.metrics[key] == whole[key], key
    for key in RESUMED_HISTORIES:
        assert metric_history(uri, run_id, key) == whole[key], key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, migrated_db, fsl_cache) -> dict:
    """The metrics and histories of the run the resume tests are killed in, trained once for the
    module in a store of its own (each test's `tracking` store starts empty)."""
    with pytest.MonkeyPatch.context() as patch, tracking_store(tmp_path_factory.mktemp("whole"), migrated_db,
                                                                 patch) as uri:
        whole = fsl("protonet", *KILL_BUDGET)
        assert whole.returncode == 0, whole.stderr[-2000:]
        run_id = runs(uri)[-1].info.run_id
        metrics = MlflowClient(uri).get_run(run_id).data.metrics
        return {key: metrics[key] for key in RESUMED_METRICS} | \
            {key: metric_history(uri, run_id, key) for key in RESUMED_HISTORIES}


def test_a_run_killed_with_sigkill_resumes_to_the_metrics_of_an_uninterrupted_run(tracking, fsl_cache, uninterrupted):
    process, run_id = interrupt(fsl_cache, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert MlflowClient(tracking).get_run(run_id).info.status == "RUNNING"
    # a stale RUNNING run with a checkpoint stays resumable even after another command marks it FAILED
    other = fsl("protonet", *[a for a in TINY if a != "--no-register"])
    assert other.returncode == 0
    # stderr holds nothing a user cannot act on: no library warnings, no colour codes
    assert "Warning" not in other.stderr and "\x1b[" not in other.stderr and "WARNING" not in other.stderr, other.stderr
    assert MlflowClient(tracking).get_run(run_id).info.status == "FAILED"
    assert_resumes_to(tracking, run_id, uninterrupted)
    assert not (fsl_cache / "runs" / run_id).exists()  # a FINISHED run's checkpoints are removed


def test_sigterm_exits_143_ends_the_run_killed_and_resume_finishes_it(tracking, fsl_cache, uninterrupted):
    process, run_id = interrupt(fsl_cache, signal.SIGTERM)
    assert process.returncode == 143
    assert MlflowClient(tracking).get_run(run_id).info.status == "KILLED"
    assert (fsl_cache / "runs" / run_id / "best.pt").exists()  # the last good checkpoint stays
    assert_resumes_to(tracking, run_id, uninterrupted, explicit=True)  # --resume RUN_ID


# Pre-training at 16 px: 60 batches of 64 per epoch, so a kill after the first epoch lands in one of the
# three others.
PRETRAIN_BUDGET = ["--image-size", "16", "--epochs", "4", "--val-episodes", "3", "--test-episodes", "5",
                   "--test-queries", "3", "--precision", "fp32", "--augment", "standard"]


def test_pretraining_killed_with_sigkill_resumes_to_the_history_of_an_uninterrupted_run(tracking, fsl_cache):
    whole = fsl("pretrain", *PRETRAIN_BUDGET)
    assert whole.returncode == 0, whole.stderr[-2000:]
    whole_id = runs(tracking)[-1].info.run_id
    process = start("pretrain", *PRETRAIN_BUDGET)
    run_id = wait_for_first_epoch(process, fsl_cache, run_folders(fsl_cache), name="pretrain_last.pt").parent.name
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=120)
    resumed = fsl("pretrain", *PRETRAIN_BUDGET, "--resume")
    assert resumed.returncode == 0 and f"resuming run {run_id}" in resumed.stdout, resumed.stderr[-2000:]
    client = MlflowClient(tracking)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("test_acc", "best_val_acc", "pretrain_best_val_acc"):
        assert client.get_run(run_id).data.metrics[key] == client.get_run(whole_id).data.metrics[key], key
    for key in ("pretrain_val_acc", "pretrain_train_loss", "test_episode_acc"):
        history = metric_history(tracking, run_id, key)
        assert history == metric_history(tracking, whole_id, key), key
    assert len(metric_history(tracking, run_id, "pretrain_val_acc")) == 4


def test_ctrl_c_ends_the_run_killed_and_keeps_a_loadable_checkpoint(tracking, fsl_cache):
    from fsl.models.classifier import load_checkpoint

    process, run_id = interrupt(fsl_cache, signal.SIGINT, ENDLESS_BUDGET)
    assert process.returncode == 1
    assert MlflowClient(tracking).get_run(run_id).info.status == "KILLED"
    assert load_checkpoint(fsl_cache / "runs" / run_id / "best.pt").feature_dim == 64


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped raise, on purpose
@pytest.mark.parametrize("sig, expected", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_python_drops_inside_a_finalizer_still_stops_the_training_loop(sig, expected):
    """An interrupt raised while a `__del__` runs is printed and dropped by Python; the training
    loops' `stop_if_interrupted` raises it again, so the run cannot train on after Ctrl-C."""
    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), sig)  # the handler runs here, inside the finalizer

    stopped_at, before = None, signal.getsignal(sig)
    with interruptible():
        with pytest.raises(expected):
            for step in range(1000):
                stop_if_interrupted()
                if step == 3:
                    SignalledWhileCollected()  # collected at once: the raise inside __del__ is dropped
                stopped_at = step
    assert stopped_at == 3  # stopped at the next step, not after the loop
    stop_if_interrupted()  # the block is over: nothing pending any more
    assert signal.getsignal(sig) is before


def test_resume_never_takes_over_a_live_run_and_names_a_changed_option(tracking, fsl_cache):
    process = start("protonet", *KILL_BUDGET)
    run_id = wait_for_first_epoch(process, fsl_cache, run_folders(fsl_cache)).parent.name
    process.send_signal(signal.SIGSTOP)
    try:
        taken = fsl("protonet", *KILL_BUDGET, "--resume")
        assert taken.returncode == 2 and f"run {run_id} is still running (pid {process.pid}" in taken.stderr
        changed = fsl("protonet", *KILL_BUDGET, "--lr", "0.01", "--resume")
        assert changed.returncode == 2 and "--lr was 0.001, now 0.01" in changed.stderr, changed.stderr
    finally:
        process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=120) == 0
    assert [r.info.status for r in runs(tracking)] == ["FINISHED"]  # one run, and nobody took it over


def test_clearing_the_cache_keeps_the_checkpoints_of_a_live_run_and_names_them(tracking, fsl_cache):
    process = start("protonet", *KILL_BUDGET)
    folder = wait_for_first_epoch(process, fsl_cache, run_folders(fsl_cache)).parent
    process.send_signal(signal.SIGSTOP)
    try:
        cleared = fsl("data", "cache", "--clear")
        assert cleared.returncode == 0, cleared.stderr
        assert f"kept the checkpoints of run {folder.name}: its process is still running" in cleared.stdout
        assert (folder / "last.pt").exists() and (folder / "best.pt").exists()
    finally:
        process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=120) == 0


def test_a_nan_loss_fails_the_run_with_epoch_and_episode_and_keeps_a_loadable_checkpoint(tracking, fsl_cache,
                                                                                        monkeypatch):
    """The loss turns NaN at the first episode of epoch 2: epoch 1's checkpoint is the last good one."""
    import torch.nn.functional as F
    from click.testing import CliRunner

    from fsl.cli import cli
    from fsl.models.classifier import load_checkpoint

    real, calls = F.cross_entropy, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > 4 else loss  # epoch 1 is 4 episodes

    monkeypatch.setattr(F, "cross_entropy", poisoned)
    result = CliRunner().invoke(cli, ["protonet", *BUDGET, "--no-system-metrics"])
    assert result.exit_code == 1, result.output
    assert "non-finite training loss at epoch 2, episode 1 of 4; the last good checkpoint is" in result.output
    [run] = runs(tracking)
    assert run.info.status == "FAILED"
    best = load_checkpoint(fsl_cache / "runs" / run.info.run_id / "best.pt")
    assert all(torch.isfinite(v).all() for v in best.state_dict().values() if v.is_floating_point())


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
