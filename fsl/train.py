"""The episodic training loop: ProtoNet, and hallucination as an option of the same loop.

Per step: one episode's indices -> a gather from the split's uint8 tensor (on the GPU when
training on CUDA) -> one encoder call over support and query -> prototypes -> logits -> loss.
Loss, accuracy and the first non-finite step stay on the device and are read once per epoch,
so the loop never waits on the host.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from fsl.config import TrainConfig
from fsl.data.episodes import EpisodeSampler
from fsl.data.store import DataSet
from fsl.evaluate import episode_accuracies, sample_episodes
from fsl.models.classifier import FewShotClassifier
from fsl.models.hallucinator import mode_seeking_loss
from fsl.runtime import atomic_save, make_generator


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the epoch and the episode."""


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """The model holds the best-by-val weights when `train` returns."""

    model: FewShotClassifier
    best_val_acc: float
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)
    best_checkpoint: Path | None = None


def train(model: FewShotClassifier, data: DataSet, cfg: TrainConfig, device: torch.device,
          checkpoint_dir: Path | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None,
          progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train `model` for cfg.epochs x cfg.episodes_per_epoch episodes; validate after each epoch.

    Adam at cfg.lr, halved every cfg.lr_step episodes (Snell et al. 2017). Validation runs on a
    fixed set of cfg.val_episodes val episodes (test way/shot/queries); the best epoch's weights
    are kept, written to `checkpoint_dir/best.pt` and loaded back into the model at the end.
    """
    train_store = data.split("train").to(device)
    val_store = data.split("val").to(device)
    shape = cfg.train_shape
    sampler = EpisodeSampler(train_store, shape, split="train")
    val_episodes = sample_episodes(val_store, cfg.test_shape, cfg.val_episodes, cfg.val_seed, "val")
    episodes_gen = make_generator(cfg.seed)              # which episodes: CPU, same on every device
    noise_gen = make_generator(cfg.seed + 2, device)     # hallucination noise and seed choice
    support_labels = torch.arange(shape.ways, device=device).repeat_interleave(shape.shots)[None]
    query_labels = torch.arange(shape.ways, device=device).repeat_interleave(shape.queries)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=0.5)
    diversity = cfg.diversity_weight if cfg.hallucinator == "improved" and model.hallucinations else 0.0
    steps = torch.arange(cfg.episodes_per_epoch, device=device)
    best_val, best_epoch, best_state = -1.0, 0, None
    history: list[EpochStats] = []
    best_path = checkpoint_dir / "best.pt" if checkpoint_dir else None

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        started = time.perf_counter()
        episodes = sampler.sample(episodes_gen, cfg.episodes_per_epoch)
        support_idx = episodes.support.to(device, non_blocking=True)
        query_idx = episodes.query.to(device, non_blocking=True)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        first_bad = torch.full((), cfg.episodes_per_epoch, device=device)
        for step in range(cfg.episodes_per_epoch):
            support, queries = model.embed_episode(train_store.images[support_idx[step]][None],
                                                   train_store.images[query_idx[step]][None])
            logits = model.logits_from_features(support, support_labels, queries, shape.ways,
                                                noise=noise_gen)[0]
            loss = F.cross_entropy(logits, query_labels)
            if diversity:
                loss = loss + diversity * mode_seeking_loss(model.generator, support, support_labels,
                                                            shape.ways, noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss = loss.detach()
            first_bad = torch.where(torch.isfinite(loss) | (first_bad < step), first_bad, steps[step])
            loss_sum += loss
            correct += (logits.detach().argmax(-1) == query_labels).sum()
            if progress:
                progress(1)
        bad = int(first_bad)  # the one host sync of the epoch's training part
        if bad < cfg.episodes_per_epoch:
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {epoch}, episode {bad + 1} of {cfg.episodes_per_epoch}; "
                f"the last good checkpoint is {best_path or 'kept in memory'} (try a lower --lr or --precision fp32)")
        val_acc = float(episode_accuracies(model, val_store, val_episodes).mean())
        stats = EpochStats(epoch, float(loss_sum) / cfg.episodes_per_epoch,
                           float(correct) * 100 / (cfg.episodes_per_epoch * len(query_labels)),
                           val_acc, scheduler.get_last_lr()[0], time.perf_counter() - started)
        history.append(stats)
        if val_acc > best_val:
            best_val, best_epoch = val_acc, epoch
            best_state = copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})
            if best_path:
                atomic_save(model.checkpoint(val_acc=val_acc, epoch=epoch), best_path)
        if on_epoch:
            on_epoch(stats)

    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model, best_val, best_epoch, history, best_path)
