"""The one place for process-wide state: seeds, the device, the arithmetic and the cache folder.

Everything that must repeat draws from an explicit `torch.Generator` made here; nothing in the
package touches Python's or NumPy's global random state except `seed_everything`.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import warnings
from typing import Any, Callable, Generic, TypeVar, cast

import numpy as np
import torch

from fsl.choices import COMPILE_MODES, PRECISIONS

T = TypeVar("T")


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


# glibc malloc's settings (mallopt): freed blocks below the mmap threshold go back to the heap for
# reuse; the heap's free top is returned to the system only above the trim threshold.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
LARGEST_MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling on 64-bit systems
TRIM_THRESHOLD = 128 * 2**20
_freed_memory_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed blocks of up to 32 MiB instead of unmapping them, for the
    rest of the process. A CPU training step frees and allocates the same activation buffers
    (megabytes each) every step; by default glibc maps each afresh and the kernel faults every
    page in again (BENCHMARKS.md section 10 has what it costs). True where applied; False off
    Linux, where the C library has no mallopt (musl has a stub) or where the user set the
    allocator (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES, LD_PRELOAD: theirs
    stands). Never raises; idempotent."""
    global _freed_memory_kept
    if _freed_memory_kept is None:
        _freed_memory_kept = False
        users = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")
        if sys.platform.startswith("linux") and not any(name in os.environ for name in users):
            try:
                import ctypes

                mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
                # trim first: should the second call fail, a raised trim threshold alone is harmless
                _freed_memory_kept = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and \
                    mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD) == 1
            except (OSError, AttributeError, TypeError):
                pass
    return _freed_memory_kept


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
        if name in ("bf16", "fp64") and device.type == "mps":
            raise ValueError(f"--precision {name} is not supported on MPS; use fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of features, prototypes and logits under a resolved precision: float64 for `fp64`
    (weights too: double throughout, for checks that must agree across CPUs), else float32."""
    return torch.float64 if precision == "fp64" else torch.float32


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Modules made inside are made in `dtype`: a fp64 model's weights are drawn in double, so that
    its initial weights do not carry the float32 rounding of the CPU's kernels."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


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


def compile_step(step: Callable[..., T], device: torch.device) -> Callable[..., T]:
    """torch.compile of a whole training step (forward, loss, backward, optimiser step); CUDA graphs
    on CUDA (mode reduce-overhead: each captured graph, the backward's included, is replayed)."""
    return torch.compile(step, mode="reduce-overhead" if device.type == "cuda" else None)


class CapturedStep(Generic[T]):
    """A training step compiled whole (`compile_step`), falling back to the eager step where it
    cannot be compiled.

    Dynamo breaks the graph where it will not trace: at `Optimizer.zero_grad`, at PyTorch's own
    break before the optimiser's step, and, with hallucination, at the host-side keyed noise
    (`fsl.models.noise`) and its data-dependent choices. With torch 2.14 on the CPU a plain step
    is 3 graphs, a step with `wang` 15 (`benchmarks.bench --compile` and `benchmarks.gpu_floor
    trainer` report the count); the graphs are compiled and replayed, the breaks run in Python,
    and the backward runs the graph AOTAutograd compiled with its forward. A first call that raises (a
    backend or an operator the compiler cannot take) is undone with `restore(snapshot())`, taken
    before it, and the step runs eagerly from then on, with a warning: the step is then exactly
    the uncompiled one. Later calls are not guarded (a snapshot per step would cost a copy of the
    model); they only recompile for new shapes or learning rates.
    """

    def __init__(self, step: Callable[..., T], snapshot: Callable[[], Any], restore: Callable[[Any], None],
                 device: torch.device) -> None:
        self.eager, self.compiled = step, compile_step(step, device)
        self.snapshot, self.restore = snapshot, restore
        self.fallback: str | None = None  # why the step runs eagerly, once it does
        self.proven = False  # a compiled call has succeeded

    def __call__(self, *args: Any) -> T:
        if self.fallback is not None:
            return self.eager(*args)
        if self.proven:
            return self.compiled(*args)
        saved = self.snapshot()
        try:
            out = self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager step is the same maths
            self.restore(saved)
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            self.fallback = f"{type(exc).__name__}: {first_line}"
            warnings.warn(f"--compile: the training step could not be compiled ({self.fallback}); it runs eagerly",
                          RuntimeWarning, stacklevel=2)
            return self.eager(*args)
        self.proven = True
        return out



