"""The one timing harness of the benchmarks: blocks timed after a warm-up, medians, and configurations
interleaved (one block of each per round) so that all of them see the same machine."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


# ------------------------------------------------------------------------------ measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(block: Callable[[], int], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median/min/max items per second of `block` (which returns how many items it did)."""
    for _ in range(warmup):
        block()
    sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = block()
        sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "repeats": repeats}


def interleaved(blocks: dict[str, Callable[[], object]], device: torch.device | None = None, repeats: int = 5,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every timed call of each block: `warmup` untimed rounds, then `repeats` rounds
    of one call of each block in turn, so that a slower spell of the machine hits all of them."""
    for _ in range(warmup):
        for block in blocks.values():
            block()
    times: dict[str, list[float]] = {label: [] for label in blocks}
    for _ in range(repeats):
        for label, block in blocks.items():
            t0 = time.perf_counter()
            block()
            if device is not None:
                sync(device)
            times[label].append(time.perf_counter() - t0)
    return times


def training_block(trainer, steps: int) -> Callable[[], float]:
    """A block of `steps` training steps of an `EpisodeTrainer` (reading the loss waits for the device)."""
    return lambda: float(trainer.run(steps)[0])
