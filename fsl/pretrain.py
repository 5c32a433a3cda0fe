"""Pre-training: the encoder as an ordinary classifier over all training classes.

"A Closer Look at Few-shot Classification" (Chen et al. 2019), "Rethinking Few-Shot Image
Classification" (Tian et al. 2020) and Meta-Baseline (Chen et al. 2021) train the encoder with
a linear head and cross-entropy on batches of images, then test it (or fine-tune it
episodically) by nearest prototype. Per step: a batch of training-split rows -> a gather from
the split's uint8 tensor -> the `--augment` policy -> encoder -> linear head -> cross-entropy;
SGD with momentum and a cosine schedule. The epochs, validation on the fixed few-shot val
episodes, best-model keeping and checkpoints are `fsl.train.fit`'s, shared with episodic training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fsl.components import AUGMENTATIONS
from fsl.config import TrainConfig
from fsl.data.store import DataSet, ImageStore
from fsl.errors import UsageError
from fsl.models.classifier import FewShotClassifier
from fsl.processes import stop_if_interrupted
from fsl.runtime import make_generator
from fsl.train import EpochStats, TrainResult, augmenter, fit

PREFIX = "pretrain_"  # checkpoint files and metrics of the pre-training phase


def check_pretraining(cfg: TrainConfig, train_split: ImageStore) -> None:
    """Raise UsageError, before any work, where the training split cannot be pre-trained on."""
    if train_split.n_classes < 2:
        raise UsageError(f"pre-training needs at least 2 training classes, the data set has {train_split.n_classes}")
    if cfg.pretrain_batch_size > len(train_split.labels):
        raise UsageError(f"--pretrain-batch-size {cfg.pretrain_batch_size} is larger than the training set "
                         f"({len(train_split.labels)} images)")


class BatchTrainer:
    """Optimiser, schedule and the per-step work of pre-training; the interface of
    `fsl.train.EpisodeTrainer` (`run`, `state`, `load_state`, `scheduler`, `samples_per_step`).

    Each epoch is one seeded permutation of the training split in batches of
    cfg.pretrain_batch_size (the last partial batch is dropped, so every step has one shape).
    """

    def __init__(self, model: FewShotClassifier, store: ImageStore, cfg: TrainConfig, device: torch.device) -> None:
        self.model, self.store, self.device = model, store, device
        self.batch = cfg.pretrain_batch_size
        self.samples_per_step = self.batch
        self.steps_per_epoch = steps_per_epoch(cfg, store)
        self.head = nn.Linear(model.feature_dim, store.n_classes).to(device, model.dtype)
        self.policy = AUGMENTATIONS[cfg.augment]
        self.order_rng = make_generator(cfg.seed + 1)          # which rows, on the CPU: the same on every device
        self.noise_rng = make_generator(cfg.seed + 3, device)  # augmentation noise, on the device
        parameters = [*model.encoder.parameters(), *self.head.parameters()]
        self.optimizer = torch.optim.SGD(parameters, lr=cfg.pretrain_lr, momentum=0.9, nesterov=True,
                                         weight_decay=cfg.pretrain_weight_decay)
        total = max(1, cfg.pretrain_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        self.steps_done = 0

    def run(self, n: int, progress: Callable[[int], None] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n steps over one fresh permutation -> device tensors (loss sum, correct, first bad step or n)."""
        self.model.train()
        order = torch.randperm(len(self.store.labels), generator=self.order_rng)[: n * self.batch]
        order = order.view(n, self.batch).to(self.device, non_blocking=True)
        augment = augmenter(self.model, self.policy, self.noise_rng)
        steps = torch.arange(n, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        first_bad = torch.full((), n, device=self.device)
        for step in range(n):
            stop_if_interrupted()
            rows = order[step]
            labels = self.store.labels[rows]
            prepared = self.model.prepare(self.store.images[rows])
            features = self.model._encode(augment(prepared) if augment else prepared)
            logits = self.head(features)
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            first_bad = torch.where(torch.isfinite(loss) | (first_bad < step), first_bad, steps[step])
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(-1) == labels).sum()
            self.steps_done += 1
            if progress:
                progress(1)
        return loss_sum, correct, first_bad

    def state(self) -> dict[str, Any]:
        """Head, optimiser, schedule and generators: with the model's weights, all that resuming needs."""
        return {"head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "order_gen": self.order_rng.get_state(), "noise_gen": self.noise_rng.get_state().cpu(),
                "torch_rng": torch.get_rng_state(), "steps_done": self.steps_done}

    def load_state(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.order_rng.set_state(state["order_gen"])
        noise = state["noise_gen"]
        self.noise_rng.set_state(noise.to(self.noise_rng.device) if self.noise_rng.device.type != "cpu" else noise)
        torch.set_rng_state(state["torch_rng"])
        self.steps_done = state["steps_done"]


def pretrain(model: FewShotClassifier, data: DataSet, cfg: TrainConfig, device: torch.device,
             checkpoint_dir: Path | None = None, on_epoch: Callable[[EpochStats], None] | None = None,
             progress: Callable[[int], None] | None = None, resume: dict[str, Any] | None = None) -> TrainResult:
    """Pre-train `model`'s encoder for cfg.pretrain_epochs epochs; the model holds the best-by-val
    weights when it returns (checkpoints `pretrain_best.pt`, `pretrain_last.pt`)."""
    store = data.split("train")
    check_pretraining(cfg, store)
    trainer = BatchTrainer(model, store.to(device), cfg, device)
    return fit(model, trainer, data, cfg, device, epochs=cfg.pretrain_epochs, steps_per_epoch=trainer.steps_per_epoch,
               checkpoint_dir=checkpoint_dir, on_epoch=on_epoch, progress=progress, resume=resume, prefix=PREFIX)


def steps_per_epoch(cfg: TrainConfig, train_split: ImageStore) -> int:
    """Optimiser steps of one pre-training epoch: full batches of the training split."""
    return len(train_split.labels) // cfg.pretrain_batch_size
