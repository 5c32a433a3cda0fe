"""The cache folder's contents, for `fsl data cache`: decoded data sets, the checkpoints kept
for runs that did not finish, and the temporary folders of writers that died."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from fsl.errors import FslError
from fsl.files import cache_dir, temporary_owner
from fsl.processes import process_alive

STALE_AFTER = 24 * 3600  # seconds: a temporary folder this old has no live writer


def cached_datasets() -> list[tuple[Path, int]]:
    """(folder, bytes) of every decoded data set under the cache folder."""
    return _folders(cache_dir() / "datasets")


def kept_checkpoints() -> list[tuple[Path, int]]:
    """(folder, bytes) of the checkpoints of runs that did not finish (`--resume` needs them)."""
    return _folders(cache_dir() / "runs")


OWNER_FILE = "owner.json"  # in a run's checkpoint folder: the host and pid of the process training it


def claim_checkpoint_folder(folder: Path) -> None:
    """Record in a run's checkpoint folder which process writes it, so that `fsl data cache
    --clear` leaves the folder of a live run alone."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))


def owner_alive(folder: Path) -> bool:
    """Whether the process recorded in `folder` still runs on this host (False where unknown)."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(process_alive(owner.get("host"), owner.get("pid")))


def remove_dead_temporaries() -> list[Path]:
    """Remove the temporary folders and files left by writers that died (kill -9 during a cache
    or checkpoint write): their name carries the writer's host and pid, and one is dead when
    the host is this one and the pid is gone, or when it is older than a day."""
    removed = []
    for parent in (cache_dir() / "datasets", cache_dir() / "runs"):
        # temporaries sit beside what they become: datasets/.x.tmp-*, runs/.x.tmp-*, runs/<id>/.best.pt.tmp-*
        for path in [*parent.glob(".*"), *parent.glob("*/.*")]:
            owner = temporary_owner(path.name)
            if owner is None:
                continue
            dead = process_alive(*owner) is False or time.time() - path.stat().st_mtime > STALE_AFTER
            if dead:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def describe_cache(clear: bool = False) -> list[str]:
    """Lines for `fsl data cache`: each entry with its size, then a total; `clear` removes them."""
    removed = remove_dead_temporaries()
    lines = [f"removed {len(removed)} temporary folder(s) of writers that died"] if removed else []
    datasets, checkpoints = cached_datasets(), kept_checkpoints()
    for folder, size in datasets:
        lines.append(f"{size / 2**20:10.1f} MiB  {folder.name}")
    for folder, size in checkpoints:
        lines.append(f"{size / 2**20:10.1f} MiB  checkpoints of unfinished run {folder.name}")
    if clear:
        live = [folder for folder, _ in checkpoints if owner_alive(folder)]
        for folder in live:
            lines.append(f"kept the checkpoints of run {folder.name}: its process is still running")
        checkpoints = [(folder, size) for folder, size in checkpoints if folder not in live]
        for folder, _ in datasets + checkpoints:
            try:
                shutil.rmtree(folder)
            except OSError as exc:
                raise FslError(f"cannot remove {folder}: {exc.strerror or exc}") from None
    total = sum(size for _, size in datasets + checkpoints) / 2**20
    lines.append(f"{'removed' if clear else 'cached'}: {len(datasets)} data sets, {len(checkpoints)} run "
                 f"checkpoint folders, {total:.1f} MiB in {cache_dir()}")
    return lines


def _folders(root: Path) -> list[tuple[Path, int]]:
    if not root.exists():
        return []
    return [(p, sum(f.stat().st_size for f in p.rglob("*") if f.is_file())) for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".")]
