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


ENVIRONMENT_KEYS = ("torch_version", "torch_threads", "cpu_count")


def environment() -> dict[str, str]:
    """Versions and threads that change a run's numbers (ENVIRONMENT_KEYS): logged as params of
    every run, and left out of the config hash."""
    import torch

    return dict(zip(ENVIRONMENT_KEYS, (torch.__version__, str(torch.get_num_threads()), str(os.cpu_count()))))
