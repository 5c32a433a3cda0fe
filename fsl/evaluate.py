"""Evaluation on sampled episodes: per-episode accuracy, mean and 95% confidence interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fsl.data.episodes import EpisodeIndices, EpisodeSampler, EpisodeShape
from fsl.data.store import ImageStore
from fsl.models.classifier import FewShotClassifier
from fsl.processes import world
from fsl.runtime import make_generator


def mean_ci95(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% CI: 1.96 * std(ddof=1) / sqrt(n). NaN half-width for n < 2."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    half = 1.96 * arr.std(ddof=1) / math.sqrt(arr.size) if arr.size > 1 else float("nan")
    return float(arr.mean()), float(half)


@dataclass
class EvalResult:
    """accs: float64 [episodes], percent; mean and ci95 in percent."""

    accs: np.ndarray
    mean: float
    ci95: float

    @classmethod
    def from_accs(cls, accs: np.ndarray) -> "EvalResult":
        return cls(accs, *mean_ci95(accs))

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.ci95:.2f}% over {len(self.accs)} episodes"


def sample_episodes(store: ImageStore, shape: EpisodeShape, n: int, seed: int, split: str,
                    option_prefix: str = "test-") -> EpisodeIndices:
    """A fixed set of `n` episodes: the same seed gives the same episodes on any device."""
    sampler = EpisodeSampler(store, shape, split=split, option_prefix=option_prefix)
    return sampler.sample(make_generator(seed), n)


@torch.no_grad()
def episode_correct(model: FewShotClassifier, store: ImageStore, episodes: EpisodeIndices,
                    M: int | None = None, noise_seed: int = 0, batch: int = 0,
                    progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Correctly classified queries of each episode, float32 [E] on the model's device (no host
    sync); counts are exact in float32, and `evaluate` turns them into percent in float64.

    Episodes are evaluated `batch` at a time in one encoder call; in eval mode BatchNorm uses
    its running statistics, so batching does not change any result. Chunk c's generator noise
    comes from a generator seeded with (noise_seed, c): evaluating twice gives the same numbers,
    and so does sharding the chunks over torchrun processes (summed with one all-reduce).
    """
    rank, world_size = world()
    was_training = model.training
    model.eval()
    device = model.device
    shape = episodes.shape
    images_per_episode = shape.ways * (shape.shots + shape.queries)
    # ~4k images (and hallucinated rows, which pass through the hallucinator's wider layers) per
    # call fits any device; -M 1000 would otherwise allocate gigabytes per chunk.
    hallucinated = shape.ways * (model.M if M is None else M) * 4
    batch = batch or max(1, 4096 // (images_per_episode + hallucinated))  # test views are encoded one at a time
    support_labels = episodes.support_labels().to(device)
    query_labels = episodes.query_labels().to(device)
    correct = torch.zeros(len(episodes), device=device)
    try:
        for chunk_index, start in enumerate(range(0, len(episodes), batch)):
            if chunk_index % world_size != rank:
                continue
            chunk = episodes.slice(start, start + batch)
            e = len(chunk)
            rng = make_generator(noise_seed * 1_000_003 + chunk_index, device)
            logits = model.episode_logits(
                store.images[chunk.support.to(store.images.device)],
                support_labels.expand(e, -1),
                store.images[chunk.query.to(store.images.device)],
                shape.ways, M=M, rng=rng)
            correct[start:start + e] = (logits.argmax(-1) == query_labels).float().sum(-1)
            if progress:
                progress(e)
    finally:
        model.train(was_training)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(correct)  # every chunk was scored by exactly one process
    return correct


def evaluate(model: FewShotClassifier, store: ImageStore, episodes: EpisodeIndices,
             M: int | None = None, noise_seed: int = 0,
             progress: Callable[[int], None] | None = None, batch: int = 0) -> EvalResult:
    """Per-episode accuracies with mean ± 95% CI, all in percent (`batch`: see `episode_correct`)."""
    correct = episode_correct(model, store, episodes, M, noise_seed, batch=batch, progress=progress)
    return EvalResult.from_accs(correct.double().cpu().numpy() * 100 / episodes.query.shape[1])


@torch.no_grad()
def evaluate_file_episodes(model: FewShotClassifier, episodes: list, noise_seed: int = 0,
                           progress: Callable[[int], None] | None = None) -> EvalResult:
    """Evaluate episodes read from a CSV (`read_episode_file`); each may have its own shape."""
    was_training = model.training
    model.eval()
    rng = make_generator(noise_seed, model.device)
    accs = []
    try:
        for episode in episodes:
            logits = model.episode_logits(episode.support_images, episode.support_labels,
                                          episode.query_images, episode.ways, rng=rng)
            correct = float((logits.argmax(-1).cpu() == episode.query_labels).sum())
            accs.append(correct * 100 / len(episode.query_labels))
            if progress:
                progress(1)
    finally:
        model.train(was_training)
    return EvalResult.from_accs(np.asarray(accs))
