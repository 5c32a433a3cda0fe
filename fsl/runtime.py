"""The one place for process-wide state: seeds, the device, the arithmetic and the cache folder.

Everything that must repeat draws from an explicit `torch.Generator` made here; nothing in the
package touches Python's or NumPy's global random state except `seed_everything`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): for code outside fsl that draws globally."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
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


COMPILE_CHOICES = ("auto", "on", "off")


def resolve_compile(choice: str, device: torch.device) -> bool:
    """`auto` compiles on CUDA only: there CUDA graphs (mode reduce-overhead) made a Conv-4
    training step 27-34% faster on an H100 (BENCHMARKS.md); on the CPU the compile time
    outweighs the gain for our schedules."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"--compile must be one of {COMPILE_CHOICES}, got {choice!r}")
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def compile_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile for training steps of fixed shape; CUDA graphs on CUDA."""
    return torch.compile(module, mode="reduce-overhead" if device.type == "cuda" else None)


def cache_dir() -> Path:
    """The single folder for everything fsl caches: `$FSL_CACHE_DIR`, else the user cache dir."""
    env = os.environ.get("FSL_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "fsl"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it is renamed to `final` in one step.

    A reader therefore sees either no folder or a complete one, never a half-written cache. If
    another process finished first, its (identical) result is kept and ours is discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
