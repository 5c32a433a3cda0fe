"""fsl.git_commit is the commit of fsl's own checkout, not of the folder a user runs in."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fsl
from fsl.provenance import git_commit


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_the_commit_is_fsls_checkout_whatever_the_working_directory(tmp_path, monkeypatch):
    other = tmp_path / "project"
    other.mkdir()
    git("init", "-q", cwd=other)
    (other / "x.txt").write_text("x")
    git("add", "x.txt", cwd=other)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=other)
    monkeypatch.chdir(other)
    top = Path(fsl.__file__).resolve().parent.parent
    own = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True)
    expected = own.stdout.strip() if own.returncode == 0 and (top / ".git").exists() else None
    assert git_commit() == expected
    assert git_commit() != git("rev-parse", "HEAD", cwd=other)


@pytest.mark.slow
def test_no_commit_for_a_copy_of_fsl_outside_a_checkout(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "site"
    shutil.copytree(Path(fsl.__file__).resolve().parent, copy / "fsl")
    code = "import fsl, fsl.provenance as p; print(fsl.__file__); print(p.git_commit())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(copy)}
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, env=env)
    where, commit = out.stdout.split()
    assert Path(where).resolve().is_relative_to(copy) and commit == "None", out.stderr[-2000:]


def _checkout_of_fsl(tmp_path: Path) -> Path:
    """A git checkout holding a copy of fsl, committed."""
    import shutil

    top = tmp_path / "checkout"
    shutil.copytree(Path(fsl.__file__).resolve().parent, top / "fsl", ignore=shutil.ignore_patterns("__pycache__"))
    git("init", "-q", cwd=top)
    git("add", "fsl", cwd=top)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=top)
    return top


def _provenance(top: Path) -> list[str]:
    code = "import fsl.provenance as p; print(p.git_commit()); print(repr(p.source_diff()))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(top)}
    out = subprocess.run([sys.executable, "-c", code], cwd=top, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.splitlines()


@pytest.mark.slow
def test_a_modified_checkout_is_not_its_clean_commit(tmp_path):
    top = _checkout_of_fsl(tmp_path)
    commit, diff = _provenance(top)
    assert commit == git("rev-parse", "HEAD", cwd=top) and diff == "None"
    with (top / "fsl" / "errors.py").open("a") as f:
        f.write("# a local change\n")
    (top / "notes.txt").write_text("new")
    commit, diff = _provenance(top)
    assert commit == git("rev-parse", "HEAD", cwd=top)
    assert "+# a local change" in diff and "untracked: notes.txt" in diff


def test_a_run_from_a_modified_checkout_is_tagged_dirty_with_its_diff(tracking, monkeypatch):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from fsl import provenance
    from fsl.cli import cli
    from tests.conftest import TINY, all_runs

    monkeypatch.setattr(provenance, "git_commit", lambda: "0" * 40)
    monkeypatch.setattr(provenance, "source_diff", lambda: "diff --git a/fsl/x.py b/fsl/x.py\n+changed\n")
    assert CliRunner().invoke(cli, ["protonet", *TINY], catch_exceptions=False).exit_code == 0
    client = MlflowClient()
    [run] = all_runs(client)
    assert run.data.tags["fsl.git_dirty"] == "true" and run.data.tags["fsl.git_commit"] == "0" * 40
    assert "git_diff.patch" in [a.path for a in client.list_artifacts(run.info.run_id)]
    monkeypatch.setattr(provenance, "source_diff", lambda: None)
    assert CliRunner().invoke(cli, ["protonet", *TINY, "--seed", "1"], catch_exceptions=False).exit_code == 0
    clean = max(all_runs(client),
                key=lambda r: r.info.start_time)
    assert clean.data.tags["fsl.git_dirty"] == "false"
    assert "git_diff.patch" not in [a.path for a in client.list_artifacts(clean.info.run_id)]
