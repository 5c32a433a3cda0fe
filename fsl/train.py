"""The episodic training loop: ProtoNet, and hallucination as an option of the same loop.

Per step: episode indices -> a gather from the split's uint8 tensor (on the GPU when training
on CUDA) -> one encoder call over support and query -> prototypes -> logits -> loss. Loss,
accuracy and the first non-finite step stay on the device and are read once per epoch, so the
loop never waits on the host.

One optimiser step averages the gradients of `episodes_per_step` episodes per process and,
under torchrun, of every process (DistributedDataParallel). Episode j of process r is drawn
from random generator number r * episodes_per_step + j, so 2 processes x 1 episode and 1 process x 2
episodes draw the same episodes and take the same steps.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, cast

import torch
import torch.nn.functional as F
from torch import nn

from fsl.components import AUGMENTATIONS
from fsl.config import TrainConfig
from fsl.data.episodes import EpisodeIndices, EpisodeSampler
from fsl.data.store import DataSet
from fsl.errors import FslError
from fsl.evaluate import encode_rows, evaluate, sample_episodes
from fsl.files import atomic_save
from fsl.models.classifier import FewShotClassifier, current_state_dict
from fsl.models.encoders import episode_groups
from fsl.models.noise import episode_keys
from fsl.processes import stop_if_interrupted, world
from fsl.runtime import CapturedStep, compile_module, make_generator, resolve_compile

GENERATOR_STRIDE = 7919  # seed offset between the episode streams of replicas (a prime)


class NonFiniteLossError(FslError):
    """The loss became NaN or inf; the message names the epoch and the episode (exit code 1)."""


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


class EpisodeLoss(nn.Module):
    """One episode's loss as a module, so DistributedDataParallel can wrap the whole step."""

    def __init__(self, model: FewShotClassifier, ways: int, encoder: nn.Module | None, augment: str = "none",
                 batch_norm: str = "episode"):
        super().__init__()
        self.model, self.ways, self.split = model, ways, batch_norm == "split"
        self.policy = AUGMENTATIONS[augment]
        self.compiled: nn.Module | None
        object.__setattr__(self, "compiled", encoder)  # shares model's weights: not a second submodule

    def forward(self, support: torch.Tensor, query: torch.Tensor, support_labels: torch.Tensor,
                query_labels: torch.Tensor, rng: torch.Generator, keys: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One episode: support [S, C, H, W], query [Q, C, H, W], labels [1, S] and [Q]; `rng` draws
        the augmentation, `keys` int64 [1, ways] key each class's hallucination noise."""
        augment = augmenter(self.model, self.policy, rng)
        s, q = self.model.embed_episode(support[None], query[None], self.compiled, augment, self.split)
        logits = self.model.logits_from_features(s, support_labels, q, self.ways, keys=keys)[0]
        hallucinator = self.model.hallucinator if self.model.M else None
        if hallucinator is not None:  # e.g. base-class statistics (`calibrated`)
            hallucinator.observe(torch.cat([s, q], 1), torch.cat([support_labels, query_labels[None]], 1), self.ways)
        loss = F.cross_entropy(logits, query_labels)
        extra = hallucinator.extra_loss(s, support_labels, self.ways, keys) if hallucinator is not None else None
        return (loss if extra is None else loss + extra), logits

    def batched(self, support: torch.Tensor, query: torch.Tensor, support_labels: torch.Tensor,
                query_labels: torch.Tensor, rngs: list[torch.Generator], keys: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """E episodes, their images through the encoder as one batch: support [E, S, C, H, W], query
        [E, Q, C, H, W], labels [1, S] and [Q], `rngs` one augmentation generator per episode, `keys`
        int64 [E, ways] -> (mean of the E episodes' losses, logits [E, Q, ways]), as E calls of
        `forward` give them: each episode is augmented with its own generator and normalised by
        BatchNorm with its own statistics (`EpisodeBatchNorm2d`), and everything after the encoder
        (hallucination, whose dropout draws from the global generator, statistics, extra terms)
        runs episode by episode in the loop's order. None where the encoder's BatchNorm layers
        cannot take episodes apart, or with `--batch-norm split` (support and query apart would
        move the running statistics in another order than the loop): the trainer then loops."""
        if self.split:
            return None
        e, shots, queries = support.shape[0], support.shape[1], query.shape[1]
        images = []
        for i in range(e):
            x = torch.cat([self.model.prepare(support[i]), self.model.prepare(query[i])])
            augment = augmenter(self.model, self.policy, rngs[i])
            images.append(augment(x) if augment else x)
        x = torch.stack(images)  # [E, S+Q, C, H, W]
        encoder = self.model.encoder
        with episode_groups(encoder, e) as able:
            if not able:
                return None
            f = self.model._encode(x.flatten(0, 1), self.compiled).view(e, shots + queries, -1)
        s, q = f[:, :shots], f[:, shots:]
        losses, logits = [], []
        hallucinator = self.model.hallucinator if self.model.M else None
        for i in range(e):
            episode = self.model.logits_from_features(s[i:i + 1], support_labels, q[i:i + 1], self.ways,
                                                      keys=keys[i:i + 1])[0]
            if hallucinator is not None:
                hallucinator.observe(torch.cat([s[i:i + 1], q[i:i + 1]], 1),
                                     torch.cat([support_labels, query_labels[None]], 1), self.ways)
            loss = F.cross_entropy(episode, query_labels)
            extra = hallucinator.extra_loss(s[i:i + 1], support_labels, self.ways, keys[i:i + 1]) \
                if hallucinator is not None else None
            losses.append(loss if extra is None else loss + extra)
            logits.append(episode)
        return torch.stack(losses).mean(), torch.stack(logits)


def augmenter(model: FewShotClassifier, policy: Callable[..., torch.Tensor] | None, rng: torch.Generator
              ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A policy of fsl.data.augment bound to the model's normalisation and a device generator."""
    if policy is None:
        return None
    return lambda x: policy(x, rng, model.mean, model.std)


class EpisodeTrainer:
    """Optimiser, schedule and the per-step work: the hot loop of `train` and of the benchmarks.

    `run(n)` takes n optimiser steps and returns device tensors (loss sum, correct queries, index
    of the first non-finite step or n); nothing in it waits on the host.
    """

    def __init__(self, model: FewShotClassifier, store, cfg: TrainConfig, device: torch.device) -> None:
        self.model, self.store, self.cfg, self.device = model, store, cfg, device
        self.shape = cfg.train_shape
        self.sampler = EpisodeSampler(store, self.shape, split="train")
        rank, world_size = world()
        self.per_step = cfg.episodes_per_step
        replicas = [rank * self.per_step + j for j in range(self.per_step)]
        # Which episodes: CPU random generators, the same on every device. Noise: on the device.
        self.episode_rngs = [make_generator(cfg.seed + GENERATOR_STRIDE * r) for r in replicas]
        self.noise_rngs = [make_generator(cfg.seed + 2 + GENERATOR_STRIDE * r, device) for r in replicas]
        # Hallucination noise is keyed by (this seed, step, class): the same episode draws the same.
        self.noise_seeds = [cfg.seed + 2 + GENERATOR_STRIDE * r for r in replicas]
        ways, shots, queries = self.shape.ways, self.shape.shots, self.shape.queries
        self.support_labels = torch.arange(ways, device=device).repeat_interleave(shots)[None]
        self.query_labels = torch.arange(ways, device=device).repeat_interleave(queries)
        self.samples_per_step = len(self.query_labels)  # what train accuracy is counted over
        # --compile: the whole step (forward, loss, backward, Adam) through torch.compile, CUDA graphs
        # on CUDA; under torchrun (DistributedDataParallel's hooks) only the encoder (README)
        compiling = resolve_compile(cfg.compile, device)
        self.whole_step = compiling and world_size == 1
        # CUDA graphs replay fixed addresses: the learning rate is a device tensor the schedule
        # writes in place (a Python float would be baked into the graph); Adam must be capturable
        capturable = self.whole_step and device.type == "cuda"
        self.optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(cfg.lr, device=device)
                                          if capturable else cfg.lr, capturable=capturable)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.lr_step, gamma=0.5)
        # The compiled encoder lives here, not in the model: checkpoints, evaluation (other
        # shapes) and registered models use the plain one, which shares its weights.
        compiled = compile_module(model.encoder, device) if compiling and not self.whole_step else None
        self.step_loss: nn.Module = EpisodeLoss(model, ways, compiled, cfg.augment, cfg.batch_norm)
        if world_size > 1:
            self.step_loss = nn.parallel.DistributedDataParallel(
                self.step_loss, device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=model.hallucinator is not None)
        self.episodes_done = 0  # optimiser steps so far, over all epochs (resume)
        # --episodes-per-step E > 1: the E episodes through the encoder as one batch, each with its
        # own BatchNorm statistics (False: one at a time, the reference the batched step equals)
        self.batch_episodes = True
        self.take_step: Callable[..., tuple[torch.Tensor, torch.Tensor]] = \
            CapturedStep(self._step, self._snapshot, self._restore, device) if self.whole_step else self._step

    def run(self, n: int, progress: Callable[[int], None] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, device = self.store.images, self.device
        self.model.train()
        draws = [self.sampler.sample(g, n) for g in self.episode_rngs]  # one draw, one copy per epoch
        support_idx = [d.support.to(device, non_blocking=True) for d in draws]
        query_idx = [d.query.to(device, non_blocking=True) for d in draws]
        steps = torch.arange(n, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        first_bad = torch.full((), n, device=device)
        for step in range(n):
            stop_if_interrupted()
            support = images[torch.stack([idx[step] for idx in support_idx])]  # [E, S, C, H, W]
            query = images[torch.stack([idx[step] for idx in query_idx])]
            keys = torch.cat([episode_keys(self.noise_seeds[j], [self.episodes_done], draws[j].classes[step][None])
                              for j in range(self.per_step)])  # [E, ways], host-side
            step_loss, step_correct = self.take_step(support, query, keys)
            correct += step_correct
            self.scheduler.step()
            # Device-side record of the first bad step: no host sync inside the loop.
            first_bad = torch.where(torch.isfinite(step_loss) | (first_bad < step), first_bad, steps[step])
            loss_sum += step_loss / self.per_step
            self.episodes_done += 1
            if progress:
                progress(1)
        return loss_sum, correct / self.per_step, first_bad

    def _step(self, support: torch.Tensor, query: torch.Tensor, keys: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step over E episodes: support [E, S, C, H, W], query [E, Q, C, H, W] (store
        images), keys int64 [E, ways] -> (the sum of their losses, their correct queries), device
        scalars. What --compile captures whole: gradients zeroed, forward, loss, backward, Adam."""
        self.optimizer.zero_grad(set_to_none=True)
        batched = self._batched_step(support, query, keys) if self.per_step > 1 and self.batch_episodes else None
        if batched is None:  # one episode at a time
            step_loss = torch.zeros((), device=self.device)  # float32, summed in place: the loss's rounding
            correct = torch.zeros((), device=self.device, dtype=torch.int64)
            for j in range(self.per_step):
                sync = j == self.per_step - 1 or not isinstance(self.step_loss, nn.parallel.DistributedDataParallel)
                with contextlib.nullcontext() if sync else cast(nn.parallel.DistributedDataParallel,
                                                                 self.step_loss).no_sync():
                    loss, logits = self.step_loss(support[j], query[j], self.support_labels, self.query_labels,
                                                  self.noise_rngs[j], keys[j:j + 1])
                    (loss / self.per_step).backward()
                step_loss += loss.detach()
                correct += (logits.detach().argmax(-1) == self.query_labels).sum()
            batched = step_loss, correct
        self.optimizer.step()
        return batched

    def _snapshot(self) -> dict[str, Any]:
        """What a step changes (`CapturedStep` puts it back where capture fails midway)."""
        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "noise_gens": [g.get_state() for g in self.noise_rngs],
                              "torch_rng": torch.get_rng_state()})

    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        for g, s in zip(self.noise_rngs, snapshot["noise_gens"]):
            g.set_state(s)
        torch.set_rng_state(snapshot["torch_rng"])

    def _batched_step(self, support: torch.Tensor, query: torch.Tensor, keys: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The step's E episodes as one encoder batch (`EpisodeLoss.batched`), backward done:
        (the sum of their losses, their correct queries), device tensors; None where it cannot
        (torchrun's DDP wraps the loss; an encoder whose BatchNorm cannot take episodes apart)."""
        if not isinstance(self.step_loss, EpisodeLoss):
            return None
        done = self.step_loss.batched(support, query, self.support_labels, self.query_labels, self.noise_rngs, keys)
        if done is None:
            return None
        loss, logits = done
        loss.backward()  # the mean of the E losses: the loop's sum of loss / E
        return loss.detach() * self.per_step, (logits.detach().argmax(-1) == self.query_labels).sum()

    def state(self) -> dict[str, Any]:
        """Optimiser, schedule and every random generator: with the weights, all that resuming needs."""
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:  # a capturable Adam's device tensors: floats, for any device
            group.update({k: float(v) for k, v in group.items() if k in ("lr", "initial_lr")})
        scheduler = self.scheduler.state_dict()
        scheduler.update({k: [float(v) for v in scheduler[k]] for k in ("base_lrs", "_last_lr") if k in scheduler})
        return {"optimizer": optimizer, "scheduler": scheduler,
                "episode_gens": [g.get_state() for g in self.episode_rngs],
                "noise_gens": [g.get_state().cpu() for g in self.noise_rngs],
                "torch_rng": torch.get_rng_state(), "episodes_done": self.episodes_done}

    def load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.optimizer.defaults["capturable"]:  # the learning rate a captured step reads: a device tensor again
            for group in self.optimizer.param_groups:
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
        self.scheduler.load_state_dict(state["scheduler"])
        for g, s in zip(self.episode_rngs, state["episode_gens"]):
            g.set_state(s)
        for g, s in zip(self.noise_rngs, state["noise_gens"]):
            g.set_state(s.to(g.device) if g.device.type != "cpu" else s)
        torch.set_rng_state(state["torch_rng"])
        self.episodes_done = state["episodes_done"]


def _sync_buffers(model: nn.Module) -> None:
    """DDP keeps BatchNorm running statistics per process; evaluate everywhere with rank 0's."""
    import torch.distributed as dist

    if world()[1] > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def validation_episodes(data: DataSet, cfg: TrainConfig, device: torch.device):
    """The val split on `device` and the fixed val episodes every epoch is scored on
    (cfg.val_episodes of the test shape, seeded by cfg.val_seed)."""
    store = data.split("val").to(device)
    return store, sample_episodes(store, cfg.test_shape, cfg.val_episodes, cfg.val_seed, "val")


def train(model: FewShotClassifier, data: DataSet, cfg: TrainConfig, device: torch.device,
          checkpoint_dir: Path | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None,
          progress: Callable[[int], None] | None = None,
          resume: dict[str, Any] | None = None) -> TrainResult:
    """Train `model` for cfg.epochs x cfg.episodes_per_epoch episodic steps; validate after each epoch.

    Adam at cfg.lr, halved every cfg.lr_step steps (Snell et al. 2017). The epochs, validation,
    best-model keeping, early stopping and checkpoints are `fit`'s.
    """
    trainer = EpisodeTrainer(model, data.split("train").to(device), cfg, device)
    return fit(model, trainer, data, cfg, device, epochs=cfg.epochs, steps_per_epoch=cfg.episodes_per_epoch,
               checkpoint_dir=checkpoint_dir, on_epoch=on_epoch, progress=progress, resume=resume)


def _validate(model: FewShotClassifier, store, episodes: EpisodeIndices) -> float:
    """Mean accuracy on the fixed val episodes, by the prototype rule whatever --head says (val
    accuracies decide the best epoch and the champion, and must not depend on a test-time head)."""
    with model.using_head("prototype"):
        return evaluate(model, store, episodes).mean


def training_data_meta(data: DataSet) -> dict[str, Any]:
    """What a checkpoint records of the data it was trained on: its fingerprint and the names of
    its training classes, so that an evaluation on classes the model has seen says so."""
    return {"data_fingerprint": data.fingerprint, "train_classes": list(data.split("train").class_names)}


def fit(model: FewShotClassifier, trainer, data: DataSet, cfg: TrainConfig, device: torch.device, *, epochs: int,
        steps_per_epoch: int, checkpoint_dir: Path | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None, progress: Callable[[int], None] | None = None,
        resume: dict[str, Any] | None = None, prefix: str = "") -> TrainResult:
    """The epochs of one training phase (episodic: `train`; pre-training: `fsl.pretrain`).

    `trainer` takes the steps (`run(n)`, `state()`, `load_state()`, `scheduler`, `samples_per_step`).
    After each epoch, validation runs on a fixed set of cfg.val_episodes val episodes (test
    way/shot/queries, seeded by cfg.val_seed); the best epoch's weights are kept, written to
    `checkpoint_dir/<prefix>best.pt` and loaded back into the model at the end. A model whose
    test-time features need the base-class mean gets it from the training split first.
    With cfg.patience, training stops once val accuracy has not improved for that many epochs
    (the best epoch is in `last.pt`, so a resumed run stops where the uninterrupted one would).
    With `checkpoint_dir`, `<prefix>last.pt` is written atomically after every epoch, after
    `on_epoch` has recorded it (so a kill between the two loses no point that a resumed run would
    not record again): weights, optimiser, schedule, every RNG state, epoch and counters; `resume`
    is such a checkpoint to continue from.
    """
    rank, _ = world()
    val_store, val_episodes = validation_episodes(data, cfg, device)
    samples_per_epoch = steps_per_epoch * trainer.samples_per_step
    best_val, best_epoch, best_state, first_epoch = -1.0, 0, None, 1
    history: list[EpochStats] = []
    if resume is not None:
        model.load_state_dict(current_state_dict(resume))
        trainer.load_state(resume["trainer"] if rank == 0 else resume["trainer_by_rank"][rank])
        best_val, best_epoch = resume["best_val"], resume["best_epoch"]
        best_state = resume["best_state"] and current_state_dict(resume | {"state_dict": resume["best_state"]})
        history = [EpochStats(**h) for h in resume["history"]]
        first_epoch = resume["epoch"] + 1
    save = checkpoint_dir is not None and rank == 0
    best_path = checkpoint_dir / f"{prefix}best.pt" if checkpoint_dir else None
    if cfg.patience and first_epoch - 1 - best_epoch >= cfg.patience:
        first_epoch = epochs + 1  # the interrupted run had already stopped early
    for epoch in range(first_epoch, epochs + 1):
        stop_if_interrupted()  # a signal that landed in validation or checkpointing
        started = time.perf_counter()
        loss_sum, correct, first_bad = trainer.run(steps_per_epoch, progress)
        bad = int(first_bad)  # the one host sync of the epoch's training part
        if bad < steps_per_epoch:
            kept = f"the last good checkpoint is {best_path}" if best_path and best_path.exists() else \
                "no checkpoint was written"
            step = "pre-training batch" if prefix else "episode"
            raise NonFiniteLossError(f"non-finite training loss at epoch {epoch}, {step} {bad + 1} of "
                                     f"{steps_per_epoch}; {kept} (try a lower --lr or --precision fp32)")
        _sync_buffers(model)
        _refresh_base_statistics(model, trainer.store, pretraining=bool(prefix))
        val_acc = _validate(model, val_store, val_episodes)
        stats = EpochStats(epoch, float(loss_sum) / steps_per_epoch, float(correct) * 100 / samples_per_epoch,
                           val_acc, float(trainer.scheduler.get_last_lr()[0]), time.perf_counter() - started)
        history.append(stats)
        if val_acc > best_val:
            best_val, best_epoch = val_acc, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            if save and best_path is not None:
                meta = {"val_acc": val_acc, "epoch": epoch, "test_seed": cfg.test_seed} | training_data_meta(data)
                atomic_save(model.checkpoint(**meta), best_path)
        if on_epoch:
            on_epoch(stats)
        if checkpoint_dir is not None:
            _save_last(checkpoint_dir / f"{prefix}last.pt", model, trainer, epoch, best_val, best_epoch, best_state,
                       history)
        if cfg.patience and epoch - best_epoch >= cfg.patience:
            break  # early stopping: val accuracy has not improved for `patience` epochs

    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model, best_val, best_epoch, history, best_path)


@torch.no_grad()
def _refresh_base_statistics(model: FewShotClassifier, store, pretraining: bool) -> None:
    """Test-time statistics of the encoder as it now is: SimpleShot's base mean, and, while
    pre-training (no episodes to observe), the calibrated hallucinator's base statistics."""
    hallucinator = model.hallucinator
    calibrate = pretraining and hallucinator is not None and hallucinator.uses_base_statistics
    if model.needs_base_mean or calibrate:
        features, labels = base_class_features(model, store)
        if model.needs_base_mean:
            model.set_base_mean(features.mean(0))
        if calibrate and hallucinator is not None:
            hallucinator.calibrate(features, labels, store.n_classes)


@torch.no_grad()
def base_class_features(model: FewShotClassifier, store, per_class: int = 64, batch: int = 256
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features float [N, D] and labels int64 [N] of up to `per_class` images of every class of
    `store` (the first ones: the same images every time), in eval mode: what SimpleShot centres
    on, and what the calibrated hallucinator's base statistics are taken from."""
    rows = torch.cat([(store.labels == c).nonzero().flatten()[:per_class] for c in range(store.n_classes)])
    return encode_rows(model, store.images, rows, batch), store.labels[rows]


def _save_last(path: Path, model: FewShotClassifier, trainer, epoch: int, best_val: float,
               best_epoch: int, best_state, history: list[EpochStats]) -> None:
    """Rank 0 writes the resumable checkpoint; under DDP every rank's random generators go into it."""
    import torch.distributed as dist

    rank, world_size = world()
    states = [trainer.state()]
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, trainer.state())
        states = gathered
    if rank == 0:
        checkpoint = model.checkpoint() | {
            "trainer": states[0], "trainer_by_rank": states, "epoch": epoch, "best_val": best_val,
            "best_epoch": best_epoch, "best_state": best_state, "history": [asdict(h) for h in history]}
        atomic_save(checkpoint, path)
