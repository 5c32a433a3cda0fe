"""Noise keyed by what it is for: (a seed, an episode, a class), never by a position in a batch.

Hallucination draws, for every class of every episode, one random choice of a real support
feature and M noise vectors. Drawn from one generator in batch order, the noise a class got
would depend on where it sat: reversing a `classify` call's support set, chunking an evaluation
differently, or batching training episodes would all change the answers. Here each class of each
episode gets its own generator, seeded with a key mixed from (seed, episode id, class id), so:

- `classify`, `fsl predict` and serving give the same answer for any order of the support (the
  class id is a digest of the label, not its rank);
- an evaluation gives the same numbers however its episodes are chunked, streamed or sharded;
- a batched training step draws what the same episodes draw one at a time.

Keys are 32-bit: torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, and a
rare collision only makes two classes of different episodes share a draw.
"""

from __future__ import annotations

import hashlib
from typing import Hashable, Sequence

import numpy as np
import torch

_MASK64 = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
# Streams of one class's key: what each draw is for.
SEED_CHOICE, NOISE, SECOND_NOISE, PAIR_NOISE = 1, 2, 3, 4


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 arrays (wrapping arithmetic): a bijective scramble."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def mix_keys(*parts: np.ndarray | int) -> np.ndarray:
    """One 32-bit key per element of the broadcast `parts` (integers >= 0): keys differ when any part
    differs (up to rare collisions), and do not depend on the order of the elements."""
    arrays = np.broadcast_arrays(*(np.asarray(p, dtype=np.int64) for p in parts))
    key = np.full(arrays[0].shape, 0x9E3779B97F4A7C15, dtype=np.uint64)
    for part in arrays:
        with np.errstate(over="ignore"):
            key = _mix(key + part.astype(np.uint64) + np.uint64(0x632BE59BD9B4E019))
    return (key >> np.uint64(32)).astype(np.int64)


def episode_keys(seed: int, episode_ids: torch.Tensor | Sequence[int], class_ids: torch.Tensor) -> torch.Tensor:
    """Noise keys of classes of episodes: seed, episode ids [E] (global, so chunks agree) and class
    ids [E, N] (the split's class ids, or `label_ids`) -> int64 [E, N] on the CPU."""
    episodes = np.asarray(torch.as_tensor(episode_ids).cpu(), dtype=np.int64)[:, None]
    classes = np.asarray(torch.as_tensor(class_ids).cpu(), dtype=np.int64)
    return torch.from_numpy(mix_keys(seed, episodes, classes))


def label_ids(labels: Sequence[Hashable]) -> torch.Tensor:
    """A class id per label from its text, not its position: int64 [N] (63-bit digests of repr)."""
    digests = [int.from_bytes(hashlib.sha256(repr(label).encode()).digest()[:8], "little") >> 1 for label in labels]
    return torch.tensor(digests, dtype=torch.int64)


def stream(keys: torch.Tensor, which: int) -> torch.Tensor:
    """The keys of another draw of the same classes (SEED_CHOICE, NOISE, ...): int64, keys' shape."""
    return torch.from_numpy(mix_keys(keys.cpu().numpy(), which))


def keyed_normal(keys: torch.Tensor, shape: Sequence[int], device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws, one block of `shape` per key: keys int64 [...] -> [..., *shape].

    Each block comes from a generator seeded with its key alone."""
    return _keyed(keys, lambda g: torch.randn(tuple(shape), generator=g, device=device, dtype=dtype), shape, device,
                  dtype)


def keyed_uniform(keys: torch.Tensor, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One uniform draw in [0, 1) per key: keys int64 [...] -> [...]."""
    return _keyed(keys, lambda g: torch.rand((), generator=g, device=device, dtype=dtype), (), device, dtype)


def _keyed(keys: torch.Tensor, draw, shape: Sequence[int], device, dtype) -> torch.Tensor:
    flat = keys.reshape(-1).tolist()
    generator = torch.Generator(device=device)
    blocks = []
    for key in flat:
        generator.manual_seed(int(key))
        blocks.append(draw(generator))
    if not blocks:
        return torch.empty((*keys.shape, *shape), device=device, dtype=dtype)
    return torch.stack(blocks).reshape(*keys.shape, *shape)
