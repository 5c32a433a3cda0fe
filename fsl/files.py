"""Files fsl writes: the one cache folder, and writes that are atomic (a reader never sees half a
file; a crash leaves a temporary that names its writer).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from fsl.errors import FslError


def cache_dir() -> Path:
    """The single folder for everything fsl caches: `$FSL_CACHE_DIR`, else the user cache dir."""
    env = os.environ.get("FSL_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "fsl"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FslError(f"cache folder {root}: cannot create it ({exc.strerror}); set FSL_CACHE_DIR") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise FslError(f"cache folder {root} is not writable; set FSL_CACHE_DIR to a writable folder")
    return root


# A temporary name says who writes it: `.<final name>.tmp-<host>-<pid>-<random>`, so that a
# folder left by a writer that died (kill -9) can be recognised and removed (`fsl data cache`).
_TEMPORARY = re.compile(r"^\..*\.tmp-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")


def _temporary_prefix(final_name: str) -> str:
    import socket

    return f".{final_name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def temporary_owner(name: str) -> tuple[str, str] | None:
    """(host, pid) of the writer of a temporary file or folder named by `atomic_*`, else None."""
    match = _TEMPORARY.match(name)
    return (match["host"], match["pid"]) if match else None


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it is renamed to `final` in one step.

    A reader therefore sees either no folder or a complete one, never a half-written cache. If
    another process finished first, its (identical) result is kept and ours is discarded.
    """
    with _writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final.name), dir=final.parent))
    try:
        with _writing(final):
            yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_save(obj: object, path: Path) -> None:
    """`torch.save` to a temp file in the same folder, then rename: never a torn checkpoint."""
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path.name), dir=path.parent)
        os.close(fd)
    try:
        with _writing(path):
            torch.save(obj, tmp)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write (full disk, read-only folder) -> one FslError naming what was written.

    torch.save reports a full disk as a RuntimeError from its zip writer, not an OSError."""
    try:
        yield
    except OSError as exc:
        raise FslError(f"cannot write {path}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # only writes run in this block
        raise FslError(f"cannot write {path}: {str(exc).splitlines()[0]} (is the disk full?)") from None


def digest(data: bytes) -> str:
    """A short content hash: the fingerprint of an episode file, the key of a configuration."""
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


def file_digest(path: Path, chunk: int = 2**20) -> str:
    """`digest` of a file's bytes, read a MiB at a time (an episode file may be hundreds of MB)."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]
