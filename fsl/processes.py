"""Processes: whether a process is alive, torchrun / DDP set-up and the world, Ctrl-C and SIGTERM as
interrupts that stop a run for sure, and values broadcast from rank 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

import torch


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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, `docker stop`): the run ends KILLED and fsl exits 128 + 15."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


_pending_interrupt: int | None = None  # the signal `interruptible` caught, until the block ends
_project_parent: int | None = None  # the pid of `mlflow run` when this process runs under it


def _interrupt(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM stop the block for sure, so runs end KILLED, not RUNNING and
    not training on: SIGINT raises KeyboardInterrupt, SIGTERM `Terminated`, in the main thread.

    Python drops an exception raised while a `__del__` or a weakref callback runs ("Exception
    ignored in ..."): a signal that lands there would be lost and the run would train on. So the
    handler also records the signal, and the training loops call `stop_if_interrupted`, which
    raises it again."""
    global _pending_interrupt

    def handler(signum, frame):
        global _pending_interrupt
        _pending_interrupt = signum
        raise _interrupt(signum)

    global _project_parent
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Under `mlflow run` (it sets MLFLOW_RUN_ID), a SIGTERM to `mlflow run` alone kills it without
    # telling this process: its death (this process re-parented) counts as that SIGTERM.
    _project_parent = os.getppid() if os.environ.get("MLFLOW_RUN_ID") else None
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _pending_interrupt = _project_parent = None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM ignored for the block (main thread only): for the few store calls that end
    a run once it has been interrupted, so that a second signal (`mlflow run` sends SIGTERM after
    Ctrl-C) cannot cut them short and leave the run RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_if_interrupted() -> None:
    """Raise the interrupt of a signal `interruptible` caught whose first raise was dropped, or
    `Terminated` once the `mlflow run` process this one runs under is gone."""
    if _pending_interrupt is not None:
        raise _interrupt(_pending_interrupt)
    if _project_parent is not None and os.getppid() != _project_parent:
        raise Terminated(signal.SIGTERM)


def broadcast(value: Any) -> Any:
    """Rank 0's value on every rank (a no-op in a single process)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
