"""The one place for process-wide state: seeds, the device, the arithmetic and the cache folder.

Everything that must repeat draws from an explicit `torch.Generator` made here; nothing in the
package touches Python's or NumPy's global random state except `seed_everything`.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, cast

import numpy as np
import torch

from fsl.choices import COMPILE_MODES, PRECISIONS
from fsl.errors import FslError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): for code outside fsl that draws globally."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """PyTorch's deterministic algorithms (and, on CUDA, cuBLAS's fixed workspace and no cuDNN
    autotuning), so that the same seed on the same machine and thread count gives the same
    numbers to the last digit. Off restores the defaults. What it costs: README, "Reproducible runs"."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    if on:
        torch.backends.cudnn.benchmark = False


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on `device`, seeded: every repeatable draw in fsl takes one of these."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, else Apple MPS, else the CPU; any other name is taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {name}: Apple MPS is not available on this machine")
    return device


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AMX or AVX512-BF16).

    Without it, bf16 autocast on the CPU is emulated and slower than fp32, so `auto` keeps fp32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` is bf16 autocast where the device has bf16 units (CUDA, AMX CPUs), else fp32.

    BENCHMARKS.md shows bf16 reaches the fp32 accuracy on both devices; fp32 is always available.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name != "auto":
        if name == "bf16" and device.type == "mps":
            raise ValueError("--precision bf16 is not supported on MPS; use fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision; a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_compile(choice: str, device: torch.device) -> bool:
    """`auto` compiles on CUDA only: there CUDA graphs (mode reduce-overhead) made a Conv-4
    training step 27-34% faster on an H100 (BENCHMARKS.md); on the CPU the compile time
    outweighs the gain for our schedules."""
    if choice not in COMPILE_MODES:
        raise ValueError(f"--compile must be one of {COMPILE_MODES}, got {choice!r}")
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def compile_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile for training steps of fixed shape; CUDA graphs on CUDA."""
    compiled = torch.compile(module, mode="reduce-overhead" if device.type == "cuda" else None)
    return cast(torch.nn.Module, compiled)  # an OptimizedModule; typed as a plain callable


def process_alive(host: str | None, pid: str | int | None) -> bool | None:
    """Whether process `pid` of `host` still runs: True or False on this host, None (unknown)
    for another host or a missing pid."""
    import socket

    if not pid or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


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


# ------------------------------------------------------------------------------ distributed
@contextlib.contextmanager
def distributed(device_name: str) -> Iterator[tuple[int, int, torch.device | None]]:
    """(rank, world_size, device) under torchrun; (0, 1, None) in a plain process.

    Under torchrun (WORLD_SIZE > 1) this joins the process group: NCCL with one GPU per rank
    (cuda:LOCAL_RANK) when CUDA is used, else gloo on the CPU; and leaves it on exit.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1, None
        return
    if dist.is_initialized():  # a sweep's points share the group its command joined
        rank = dist.get_rank()
        yield rank, dist.get_world_size(), torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        return
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    device = None
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device_name in ("auto", "cpu"):
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (torchrun's rendezvous, test servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
