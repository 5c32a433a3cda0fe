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
from fsl.evaluate import evaluate, sample_episodes
from fsl.models.classifier import FewShotClassifier
from fsl.models.hallucinator import mode_seeking_loss
from fsl.runtime import atomic_save, compile_module, make_generator, resolve_compile


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


class EpisodeTrainer:
    """Optimiser, schedule and the per-step work: the hot loop of `train` and of the benchmarks.

    `run(n)` trains on n episodes and returns device tensors (loss sum, correct queries, index
    of the first non-finite loss or n); nothing in it waits on the host.
    """

    def __init__(self, model: FewShotClassifier, store, cfg: TrainConfig, device: torch.device) -> None:
        self.model, self.store, self.cfg, self.device = model, store, cfg, device
        self.shape = cfg.train_shape
        self.sampler = EpisodeSampler(store, self.shape, split="train")
        self.episodes_gen = make_generator(cfg.seed)           # which episodes: CPU, same on every device
        self.noise_gen = make_generator(cfg.seed + 2, device)  # hallucination noise and seed choice
        ways, shots, queries = self.shape.ways, self.shape.shots, self.shape.queries
        self.support_labels = torch.arange(ways, device=device).repeat_interleave(shots)[None]
        self.query_labels = torch.arange(ways, device=device).repeat_interleave(queries)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.lr_step, gamma=0.5)
        self.diversity = cfg.diversity_weight if cfg.hallucinator == "improved" and model.hallucinations else 0.0
        # The compiled encoder lives here, not in the model: checkpoints, evaluation (other
        # shapes) and registered models use the plain one, which shares its weights.
        self.encoder = compile_module(model.encoder, device) if resolve_compile(cfg.compile, device) else None

    def run(self, n: int, progress: Callable[[int], None] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model, images, device = self.model, self.store.images, self.device
        model.train()
        episodes = self.sampler.sample(self.episodes_gen, n)  # one draw, one copy per epoch
        support_idx = episodes.support.to(device, non_blocking=True)
        query_idx = episodes.query.to(device, non_blocking=True)
        steps = torch.arange(n, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        first_bad = torch.full((), n, device=device)
        for step in range(n):
            support, queries = model.embed_episode(images[support_idx[step]][None], images[query_idx[step]][None],
                                                   self.encoder)
            logits = model.logits_from_features(support, self.support_labels, queries, self.shape.ways,
                                                noise=self.noise_gen)[0]
            loss = F.cross_entropy(logits, self.query_labels)
            if self.diversity:
                loss = loss + self.diversity * mode_seeking_loss(model.generator, support, self.support_labels,
                                                                 self.shape.ways, self.noise_gen)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss = loss.detach()
            # Device-side record of the first bad step: no host sync inside the loop.
            first_bad = torch.where(torch.isfinite(loss) | (first_bad < step), first_bad, steps[step])
            loss_sum += loss
            correct += (logits.detach().argmax(-1) == self.query_labels).sum()
            if progress:
                progress(1)
        return loss_sum, correct, first_bad


def train(model: FewShotClassifier, data: DataSet, cfg: TrainConfig, device: torch.device,
          checkpoint_dir: Path | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None,
          progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train `model` for cfg.epochs x cfg.episodes_per_epoch episodes; validate after each epoch.

    Adam at cfg.lr, halved every cfg.lr_step episodes (Snell et al. 2017). Validation runs on a
    fixed set of cfg.val_episodes val episodes (test way/shot/queries); the best epoch's weights
    are kept, written to `checkpoint_dir/best.pt` and loaded back into the model at the end.
    """
    trainer = EpisodeTrainer(model, data.split("train").to(device), cfg, device)
    val_store = data.split("val").to(device)
    val_episodes = sample_episodes(val_store, cfg.test_shape, cfg.val_episodes, cfg.val_seed, "val")
    per_epoch = cfg.episodes_per_epoch
    queries_per_epoch = per_epoch * len(trainer.query_labels)
    best_val, best_epoch, best_state = -1.0, 0, None
    history: list[EpochStats] = []
    best_path = checkpoint_dir / "best.pt" if checkpoint_dir else None

    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        loss_sum, correct, first_bad = trainer.run(per_epoch, progress)
        bad = int(first_bad)  # the one host sync of the epoch's training part
        if bad < per_epoch:
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {epoch}, episode {bad + 1} of {per_epoch}; "
                f"the last good checkpoint is {best_path or 'kept in memory'} (try a lower --lr or --precision fp32)")
        val_acc = evaluate(model, val_store, val_episodes).mean
        stats = EpochStats(epoch, float(loss_sum) / per_epoch, float(correct) * 100 / queries_per_epoch,
                           val_acc, trainer.scheduler.get_last_lr()[0], time.perf_counter() - started)
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
