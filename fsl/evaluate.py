"""Evaluation on sampled episodes: per-episode accuracy, mean and 95% confidence interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fsl.data.episode_table import EpisodeTable
from fsl.data.episodes import EpisodeIndices, EpisodeSampler, EpisodeShape
from fsl.data.store import ImageStore
from fsl.models.classifier import FewShotClassifier
from fsl.models.encoders import fused_for_inference
from fsl.models.noise import episode_keys, label_ids
from fsl.processes import stop_if_interrupted, world
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


ENCODE_BATCH = 256  # images per encoder call in evaluation (eval mode: a feature does not depend on its batch)
# Elements (features, hallucinations and the hallucinator's wider hidden rows) per scoring chunk:
# about 64 MB of float32, whatever the shape, M and feature size.
CHUNK_ELEMENTS = 2**24


@torch.no_grad()
def encode_rows(model: FewShotClassifier, images: torch.Tensor, rows: torch.Tensor,
                batch: int = ENCODE_BATCH, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Test-time features of `images[rows]` (eval mode, with the model's test views):
    images uint8 [N, C, H, W], rows int64 [U] -> features [U, D] in the model's dtype."""
    was_training = model.training
    model.eval()
    try:
        out = []
        encoder = fused_for_inference(model.encoder)  # always: a feature must not depend on the call
        for start in range(0, len(rows), batch):
            out.append(model.test_features(images[rows[start:start + batch].to(images.device)], encoder))
            if progress:
                progress(min(batch, len(rows) - start))
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0, model.feature_dim, device=model.device, dtype=model.dtype)
    return torch.cat(out)


def chunk_size(shape: EpisodeShape, feature_dim: int, M: int) -> int:
    """Episodes scored per chunk: CHUNK_ELEMENTS over what one episode holds (its features and
    M hallucinations per class, x4 for the hallucinator's hidden layers)."""
    per_episode = (shape.ways * (shape.shots + shape.queries) + 4 * shape.ways * M) * max(1, feature_dim)
    return max(1, CHUNK_ELEMENTS // per_episode)


@dataclass
class EncodedEpisodes:
    """The features of the distinct images of episodes (this process's chunks under torchrun):
    rows int64 [U] (sorted store rows), features [U, D]; chunk `starts` of `batch` episodes."""

    rows: torch.Tensor
    features: torch.Tensor
    starts: list[int]
    batch: int


@torch.no_grad()
def encode_episodes(model: FewShotClassifier, store: ImageStore, episodes: EpisodeIndices, M: int | None = None,
                    batch: int = 0) -> EncodedEpisodes:
    """Encode each distinct image of the episodes once (`encode_rows`; in eval mode a feature does
    not depend on its batch, and test views are fixed per image): what `episode_correct` scores,
    once for any number of heads or values of M."""
    rank, world_size = world()
    M = model.M if M is None else M
    batch = batch or chunk_size(episodes.shape, model.feature_dim, M)
    starts = [start for c, start in enumerate(range(0, len(episodes), batch)) if c % world_size == rank]
    mine = [episodes.slice(start, start + batch) for start in starts]
    rows = torch.unique(torch.cat([torch.cat([c.support.flatten(), c.query.flatten()]) for c in mine])) \
        if mine else torch.zeros(0, dtype=torch.long)
    return EncodedEpisodes(rows, encode_rows(model, store.images, rows), starts, batch)


@torch.no_grad()
def episode_correct(model: FewShotClassifier, store: ImageStore, episodes: EpisodeIndices,
                    M: int | None = None, noise_seed: int = 0, batch: int = 0,
                    progress: Callable[[int], None] | None = None,
                    encoded: EncodedEpisodes | None = None) -> torch.Tensor:
    """Correctly classified queries of each episode, float32 [E] on the model's device (no host
    sync); counts are exact in float32, and `evaluate` turns them into percent in float64.

    The episodes' distinct images are encoded once (`encode_episodes`, or `encoded` from an
    earlier call), then episodes are scored `batch` at a time (default: `chunk_size`) on features
    gathered per episode, by the model's head. Each class's hallucination noise is keyed by
    (noise_seed, episode index, class id): evaluating twice, in other chunks or sharded over
    torchrun processes (chunk c on rank c % world, summed with one all-reduce) gives the same numbers.
    """
    _, world_size = world()
    device = model.device
    shape = episodes.shape
    M = model.M if M is None else M
    encoded = encoded or encode_episodes(model, store, episodes, M, batch)
    rows, features = encoded.rows, encoded.features
    support_labels = episodes.support_labels().to(device)
    query_labels = episodes.query_labels().to(device)
    correct = torch.zeros(len(episodes), device=device)
    was_training = model.training
    model.eval()
    try:
        for start in encoded.starts:
            chunk = episodes.slice(start, start + encoded.batch)
            e = len(chunk)
            support = features[torch.searchsorted(rows, chunk.support.contiguous()).to(device)]
            query = features[torch.searchsorted(rows, chunk.query.contiguous()).to(device)]
            keys = episode_keys(noise_seed, torch.arange(start, start + e), chunk.classes)
            logits = model.logits_from_features(support, support_labels.expand(e, -1), query, shape.ways, M, keys)
            correct[start:start + e] = (logits.argmax(-1) == query_labels).float().sum(-1)
            stop_if_interrupted()
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
             progress: Callable[[int], None] | None = None, batch: int = 0,
             encoded: EncodedEpisodes | None = None) -> EvalResult:
    """Per-episode accuracies with mean ± 95% CI, all in percent (`batch`, `encoded`: see
    `episode_correct`)."""
    correct = episode_correct(model, store, episodes, M, noise_seed, batch=batch, progress=progress, encoded=encoded)
    return EvalResult.from_accs(correct.double().cpu().numpy() * 100 / episodes.query.shape[1])


@torch.no_grad()
def encode_table(model: FewShotClassifier, table: EpisodeTable, images: Callable[[np.ndarray], torch.Tensor],
                 encode_batch: int = 1024, progress: Callable[[str, int, int], None] | None = None) -> torch.Tensor:
    """The features [U, D] of a compiled episode file's distinct images (`fsl.data.episode_table`),
    each decoded (`images`: reference ids [B] -> uint8 [B, C, H, W]) and encoded once,
    `encode_batch` at a time."""
    features = torch.empty(len(table.refs), model.feature_dim, device=model.device, dtype=model.dtype)
    for start in range(0, len(table.refs), encode_batch):
        ids = np.arange(start, min(len(table.refs), start + encode_batch))
        batch = images(ids)
        features[start:start + len(ids)] = encode_rows(model, batch, torch.arange(len(batch)))
        stop_if_interrupted()
        if progress:
            progress("images encoded", start + len(ids), len(table.refs))
    return features


@torch.no_grad()
def evaluate_table(model: FewShotClassifier, table: EpisodeTable, images: Callable[[np.ndarray], torch.Tensor],
                   M: int | None = None, noise_seed: int = 0, encode_batch: int = 1024,
                   progress: Callable[[str, int, int], None] | None = None,
                   features: torch.Tensor | None = None) -> EvalResult:
    """The episodes of a compiled episode file: its distinct images encoded once (`encode_table`,
    or `features` from an earlier call), then each group of one shape scored in chunks on features
    gathered per episode, by the model's head. Episode i's noise is keyed by (noise_seed, i, its
    class names), as it always was. `progress(stage, done, total)` follows both stages."""
    M = model.M if M is None else M
    if features is None:
        features = encode_table(model, table, images, encode_batch, progress)
    class_keys = label_ids(table.labels)
    accs = np.zeros(table.count)
    scored, device = 0, model.device
    was_training = model.training
    model.eval()
    try:
        for group in table.groups:
            e_all, s_rows, q_rows = group.support.shape[0], group.support.shape[1], group.query.shape[1]
            per = max(1, CHUNK_ELEMENTS // max(1, (s_rows + q_rows + 4 * group.ways * M) * model.feature_dim))
            for a in range(0, e_all, per):
                b = min(e_all, a + per)
                keys = episode_keys(noise_seed, torch.from_numpy(group.index[a:b]),
                                    class_keys[torch.from_numpy(group.classes[a:b])])
                logits = model.logits_from_features(
                    features[torch.from_numpy(group.support[a:b]).to(device)],
                    torch.from_numpy(group.support_labels[a:b]).to(device),
                    features[torch.from_numpy(group.query[a:b]).to(device)], group.ways, M, keys)
                right = (logits.argmax(-1).cpu() == torch.from_numpy(group.query_labels[a:b])).double()
                accs[group.index[a:b]] = right.sum(-1).numpy() * 100 / q_rows
                scored += b - a
                stop_if_interrupted()  # a Ctrl-C or SIGTERM that a finalizer swallowed
                if progress:
                    progress("episodes scored", scored, table.count)
    finally:
        model.train(was_training)
    return EvalResult.from_accs(accs)
