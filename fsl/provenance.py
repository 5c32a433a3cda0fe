"""What a run ran on: fsl's own source commit, the library versions and the thread count."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import fsl


@functools.lru_cache(maxsize=1)  # three git calls; a sweep asks once per child
def git_commit() -> str | None:
    """The commit of the checkout that holds fsl's own source, or None.

    That is the folder above the imported `fsl/` package when it is a git work tree that tracks
    `fsl/__init__.py`; the working directory's repository (a user's project) says nothing about
    which fsl ran, and an installed copy outside a checkout has no commit.
    """
    top = Path(fsl.__file__).resolve().parent.parent
    try:
        tracked = subprocess.run(["git", "-C", str(top), "ls-files", "--error-unmatch", "fsl/__init__.py"],
                                 capture_output=True, text=True, timeout=5)
        if tracked.returncode != 0:
            return None
        root = subprocess.run(["git", "-C", str(top), "rev-parse", "--show-toplevel"],
                              capture_output=True, text=True, timeout=5)
        if root.returncode != 0 or Path(root.stdout.strip()).resolve() != top:
            return None
        head = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() or None if head.returncode == 0 else None


MAX_DIFF_BYTES = 2**20  # a run's `git_diff.patch` artifact is cut here


@functools.lru_cache(maxsize=1)
def source_diff() -> str | None:
    """What fsl's own checkout holds beyond its commit: `git diff HEAD` plus the names of
    untracked files, cut at MAX_DIFF_BYTES; None for a clean checkout or no checkout (see
    `git_commit`). A run made from a modified checkout is not its clean commit, so it says so."""
    if git_commit() is None:
        return None
    top = str(Path(fsl.__file__).resolve().parent.parent)
    try:
        diff = subprocess.run(["git", "-C", top, "diff", "HEAD"], capture_output=True, text=True, timeout=10)
        untracked = subprocess.run(["git", "-C", top, "ls-files", "--others", "--exclude-standard"],
                                   capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = diff.stdout + "".join(f"untracked: {name}\n" for name in untracked.stdout.splitlines())
    if not text:
        return None
    if len(text.encode()) > MAX_DIFF_BYTES:
        text = text.encode()[:MAX_DIFF_BYTES].decode(errors="ignore") + f"\n[cut at {MAX_DIFF_BYTES} bytes]\n"
    return text


ENVIRONMENT_KEYS = ("torch_version", "torch_threads", "cpu_count")


def environment() -> dict[str, str]:
    """Versions and threads that change a run's numbers (ENVIRONMENT_KEYS): logged as params of
    every run, and left out of the config hash."""
    import torch

    return dict(zip(ENVIRONMENT_KEYS, (torch.__version__, str(torch.get_num_threads()), str(os.cpu_count()))))
