"""PostgreSQL as the tracking store, against a real server: a throwaway cluster on 127.0.0.1 in a
temporary folder, started and stopped here. Two sweep shards start at once on a fresh database;
the server stops under a running training and comes back; no password is ever printed.

The full lane needs PostgreSQL's server binaries (Debian: `apt-get install postgresql`, which
.ci/run does where they are missing); without them these tests skip, naming the reason."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fsl.cli import cli
from fsl.processes import free_port
from tests.conftest import TINY

PASSWORD = "s3cret-Pw0rd"
BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def as_owner(owner: str | None, *command: str) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program, as `owner` where we are root (initdb refuses root)."""
    prefix = ["runuser", "-u", owner, "--"] if owner else []
    return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)


class Cluster:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:port only."""

    def __init__(self) -> None:
        if not BINARIES or not shutil.which("runuser" if os.geteuid() == 0 else "true"):
            pytest.skip("PostgreSQL's server binaries are not installed (/usr/lib/postgresql/*/bin): "
                        "apt-get install postgresql, as .ci/run does")
        pytest.importorskip("psycopg", reason="the postgres extra is not installed: pip install 'fsl[postgres]'")
        self.bin = Path(BINARIES[-1])
        self.owner = "postgres" if os.geteuid() == 0 else None
        self.folder = Path(tempfile.mkdtemp(prefix="fsl-pg-"))
        self.port = free_port()
        (self.folder / "pw").write_text(PASSWORD + "\n")
        if self.owner:
            shutil.chown(self.folder, self.owner)
            shutil.chown(self.folder / "pw", self.owner)
        done = as_owner(self.owner, str(self.bin / "initdb"), "-D", str(self.folder / "data"), "-U", "fsl",
                        "--pwfile", str(self.folder / "pw"), "--auth", "scram-sha-256")
        assert done.returncode == 0, done.stderr[-2000:]
        self.start()

    def start(self) -> None:
        done = as_owner(self.owner, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-w", "-l",
                        str(self.folder / "log"), "-o", f"-p {self.port} -k {self.folder} "
                        f"-c listen_addresses=127.0.0.1 -c fsync=off", "start")
        assert done.returncode == 0, done.stderr[-2000:] + (self.folder / "log").read_text()[-2000:]

    def stop(self) -> None:
        as_owner(self.owner, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop")

    def database(self, name: str) -> str:
        """A fresh database; its SQLAlchemy URI (the default driver: psycopg 3)."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=fsl password={PASSWORD} dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql://fsl:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    server = Cluster()
    yield server
    server.remove()


def fsl(uri: str, cwd: Path, *args: str, extra_env: dict | None = None) -> subprocess.Popen:
    env = os.environ | {"MLFLOW_TRACKING_URI": uri} | (extra_env or {})
    return subprocess.Popen([sys.executable, "-m", "fsl", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_two_shards_started_at_once_on_a_fresh_database_run_every_point_once(cluster, tmp_path):
    uri = cluster.database("shards")
    grid = ["sweep", *TINY, "--param", "lr=0.001,0.002", "--seeds", "0,1", "--shards", "2", "--no-system-metrics"]
    shards = [fsl(uri, tmp_path, *grid, "--shard", str(i)) for i in (0, 1)]  # both create the schema
    outputs = [p.communicate(timeout=300)[0] for p in shards]
    assert [p.returncode for p in shards] == [0, 0], outputs
    assert all(PASSWORD not in out for out in outputs) and all("fsl:***@" in out for out in outputs)
    children = [r for r in runs(uri) if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.info.run_name for r in children) == sorted({r.info.run_name for r in children})
    assert len(children) == 4 and {r.info.status for r in runs(uri)} == {"FINISHED"}


@pytest.mark.slow
def test_a_database_that_stops_under_a_training_run_ends_it_in_one_line_and_failed_once_back(cluster, tmp_path):
    uri = cluster.database("stopped")
    process = fsl(uri, tmp_path, "protonet", *TINY, "--epochs", "500", "--episodes-per-epoch", "20",
                  "--no-system-metrics", extra_env={"FSL_STORE_RECOVERY": "60"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("val_acc" in r.data.metrics for r in runs(uri)):
        assert process.poll() is None, process.communicate()[0][-2000:]
        time.sleep(0.5)
    cluster.stop()
    time.sleep(20)  # long enough that a log call fails (MLflow's client rides out a few seconds)
    cluster.start()
    try:
        out = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert process.returncode == 1 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert f"tracking store postgresql://fsl:***@127.0.0.1:{cluster.port}/stopped stopped answering" in errors[0]
    assert "the run is marked FAILED" in errors[0] and PASSWORD not in out
    [run] = runs(uri)
    assert run.info.status == "FAILED"


def test_a_database_that_is_down_or_has_no_driver_fails_in_seconds_in_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    port = free_port()  # nothing listens there
    cases = {f"postgresql://fsl:{PASSWORD}@127.0.0.1:{port}/mlflow": (1, f"tracking store postgresql://fsl:***@"
                                                                        f"127.0.0.1:{port}/mlflow is unreachable"),
             f"postgresql+pg8000://fsl:{PASSWORD}@127.0.0.1:{port}/mlflow": (2, "its database driver 'pg8000' is not "
                                                                              "installed; install pg8000")}
    for uri, (code, message) in cases.items():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        started = time.monotonic()
        result = CliRunner().invoke(cli, ["protonet", *TINY])
        assert result.exit_code == code and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and PASSWORD not in result.output
        assert time.monotonic() - started < 10


# ------------------------------------------------------------------------------ no server needed
@pytest.mark.parametrize("uri, masked, address", [
    ("postgresql://fsl:pw@db:5432/x", "postgresql://fsl:***@db:5432/x", ("db", 5432)),
    ("postgresql://fsl@db/x?password=pw&sslmode=require", "postgresql://fsl@db/x?password=***&sslmode=require",
     ("db", 5432)),
    ("postgresql://fsl:pw@h1:5432,h2:5433/x", "postgresql://fsl:***@h1:5432,h2:5433/x", None),  # several hosts
    ("postgresql://fsl:pw@db:99999/x", "postgresql://fsl:***@db:99999/x", None),  # a port urllib refuses
    ("postgresql:///x?host=/run/postgresql&password=pw", "postgresql:///x?host=/run/postgresql&password=***", None),
])
def test_a_uri_is_masked_wherever_its_password_is_and_probed_only_where_it_names_one_host(uri, masked, address):
    from fsl.tracking import stores

    assert stores.mask(uri) == masked and stores._address(uri) == address
    assert stores.password(uri) == "pw" and stores._scrub(f"failed for {uri}", uri).count("pw") == 0


def test_only_the_store_layers_connection_errors_mean_the_store_is_down():
    import filelock
    import sqlalchemy.exc

    from fsl.tracking import stores

    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception('connection to server at "db" failed: '
                                                                       "Connection refused"))
    assert stores.is_down(refused)
    try:  # a cause further down the chain counts too
        try:
            raise refused
        except Exception as exc:
            raise RuntimeError("logging a metric failed") from exc
    except RuntimeError as wrapped:
        assert stores.is_down(wrapped)
    # not the store: a data-loading worker's broken pipe, a file lock's timeout, a SQL error
    assert not stores.is_down(BrokenPipeError(32, "Broken pipe"))
    assert not stores.is_down(ConnectionResetError(104, "Connection reset by peer"))
    assert not stores.is_down(filelock.Timeout("mlflow.db.lock"))
    assert not stores.is_down(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("no such table: runs")))


def test_a_run_the_store_cannot_end_is_forgotten_alone_and_its_sweep_parent_stays(tracking, monkeypatch):
    import mlflow
    import sqlalchemy.exc

    from fsl.tracking import runs as fsl_runs

    mlflow.set_experiment("forgotten")  # not an experiment id an earlier test left set in this process
    parent = mlflow.start_run()
    child = mlflow.start_run(nested=True)
    calls, real_end_run = [], mlflow.end_run

    def down(status=None):
        calls.append(status)
        raise sqlalchemy.exc.OperationalError("UPDATE runs", {}, Exception("server closed the connection"))

    monkeypatch.setattr(mlflow, "end_run", down)
    assert fsl_runs._end_run("FAILED", retry_for=1.5) is False and len(calls) >= 2  # tried again meanwhile
    assert mlflow.active_run().info.run_id == parent.info.run_id != child.info.run_id
    monkeypatch.setattr(mlflow, "end_run", real_end_run)
    mlflow.end_run()
    assert mlflow.active_run() is None and fsl_runs._end_run("FAILED") is False  # nothing to end
