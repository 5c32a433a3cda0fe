"""fsl.git_commit is the commit of fsl's own checkout, not of the folder a user runs in."""

import os
import subprocess
import sys
from pathlib import Path

import fsl
from fsl.provenance import git_commit


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


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


def test_no_commit_for_a_copy_of_fsl_outside_a_checkout(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "site"
    shutil.copytree(Path(fsl.__file__).resolve().parent, copy / "fsl")
    code = "import fsl, fsl.provenance as p; print(fsl.__file__); print(p.git_commit())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(copy)}
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, env=env)
    where, commit = out.stdout.split()
    assert Path(where).resolve().is_relative_to(copy) and commit == "None", out.stderr[-2000:]
