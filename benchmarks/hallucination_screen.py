"""Screen a hallucinator against ProtoNet, paired by seed (issue 10 §3). No MLflow.

    python -m benchmarks.hallucination_screen --kind calibrated --seeds 0,1 --shots 1 --out screen.jsonl
    python -m benchmarks.hallucination_screen --kind none --seeds 0,1          # the ProtoNet rows

Each (kind, seed) model is trained on the study schedule (`study`: 4 x 500 episodes, 100 val
episodes) by the one training loop (`fsl.train.train`), then scored on the study's 600 fixed
test episodes (test_seed 2) at every M of `--ms` and with the generator off. A generator that
does not act in training (`trains_with_encoder = False`, e.g. `calibrated`) is trained once
and tested at every M; any other is trained once per M.

For speed the test split is encoded once (in eval mode BatchNorm uses its running statistics,
so an image's feature does not depend on its episode) and episodes are scored from the cached
features; hallucination noise comes from fixed per-chunk seeds, so a run repeats exactly.
`--from-checkpoint` scores saved checkpoints instead of training.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fsl.config import TrainConfig
from fsl.data import load_dataset
from fsl.evaluate import sample_episodes
from fsl.models.classifier import FewShotClassifier
from fsl.models.hallucinator import HALLUCINATORS
from fsl.runtime import make_generator, seed_everything
from fsl.train import train


@torch.no_grad()
def test_features(model: FewShotClassifier, store) -> torch.Tensor:
    """Eval-mode features of every image of a split, float32 [N, D]."""
    model.eval()
    return torch.cat([model.embed(store.images[i:i + 400]) for i in range(0, len(store.images), 400)])


@torch.no_grad()
def episode_accuracy(model: FewShotClassifier, features: torch.Tensor, episodes, m: int,
                     noise_seed: int = 2, chunk: int = 100) -> torch.Tensor:
    """Percent correct per episode, float32 [E], from cached features; M = m (0: generator off)."""
    model.eval()
    shape = episodes.shape
    support_labels = episodes.support_labels()[None].to(features.device)
    query_labels = episodes.query_labels().to(features.device)
    out = []
    for c, start in enumerate(range(0, len(episodes), chunk)):
        s = features[episodes.support[start:start + chunk]]
        q = features[episodes.query[start:start + chunk]]
        logits = model.logits_from_features(s, support_labels.expand(s.shape[0], -1), q, shape.ways,
                                            M=m, rng=make_generator(noise_seed * 1_000_003 + c))
        out.append((logits.argmax(-1) == query_labels).float().mean(-1) * 100)
    return torch.cat(out)


def study_config(kind: str | None, seed: int, shots: int, m: int, episodes: int) -> TrainConfig:
    per_epoch = max(1, episodes // 4)
    return TrainConfig(shots=shots, epochs=episodes // per_epoch, episodes_per_epoch=per_epoch, val_episodes=100,
                       seed=seed, hallucinator=kind, M=m if kind else 0, precision="fp32").resolved()


def screen(kind: str | None, seeds, shots: int, ms, episodes: int = 2000, save: str | None = None):
    data = load_dataset("synthetic")
    test = data.split("test")
    test_only = kind is not None and not getattr(HALLUCINATORS[kind], "trains_with_encoder", True)
    train_ms = [max(ms)] if (test_only or kind is None) else list(ms)
    for seed in seeds:
        for train_m in train_ms:
            cfg = study_config(kind, seed, shots, train_m, episodes)
            seed_everything(seed)
            model = FewShotClassifier.for_data(data, precision="fp32", hallucinator=kind, M=train_m)
            t0 = time.perf_counter()
            result = train(model, data, cfg, torch.device("cpu"))
            seconds = time.perf_counter() - t0
            if save:
                torch.save(result.model.checkpoint(), save.format(kind=kind or "protonet", seed=seed, shots=shots))
            episodes_ = sample_episodes(test, cfg.test_shape, 600, cfg.test_seed, "test")
            features = test_features(result.model, test)
            off = episode_accuracy(result.model, features, episodes_, 0)
            row = {"kind": kind or "protonet", "seed": seed, "shots": shots, "trained_M": train_m,
                   "best_epoch": result.best_epoch, "best_val": result.best_val_acc, "train_s": seconds,
                   "off": float(off.mean())}
            for m in ([] if kind is None else ms if test_only else [train_m]):
                row[f"M{m}"] = float(episode_accuracy(result.model, features, episodes_, m).mean())
            print(json.dumps(row), flush=True)


def step_cost(kind: str, m: int = 100, steps: int = 20, repeats: int = 5) -> dict:
    """Median ms per 5-way 1-shot 32x32 CPU training step, ProtoNet against `kind` at M = m, as
    `benchmarks.hallucination cost` measures it, with the timed blocks interleaved so that load
    from other processes hits both alike."""
    from fsl.train import EpisodeTrainer

    data = load_dataset("synthetic")
    store = data.split("train")
    trainers = {}
    for label, k, mm in (("protonet", None, 0), (kind, kind, m)):
        cfg = TrainConfig(hallucinator=k, M=mm, precision="fp32")
        seed_everything(0)
        model = FewShotClassifier.for_data(data, precision="fp32", hallucinator=k, M=mm)
        trainers[label] = EpisodeTrainer(model, store, cfg, torch.device("cpu"))
        float(trainers[label].run(3)[0])
    times = {label: [] for label in trainers}
    for _ in range(repeats):
        for label, trainer in trainers.items():
            t0 = time.perf_counter()
            float(trainer.run(steps)[0])
            times[label].append((time.perf_counter() - t0) / steps * 1e3)
    med = {label: sorted(t)[len(t) // 2] for label, t in times.items()}
    return {"ms_per_step": med, "ratio": med[kind] / med["protonet"], "blocks": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="calibrated", help="a HALLUCINATORS entry, or 'none' for ProtoNet")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--ms", default="10,50,100")
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--save", default=None, help="checkpoint path pattern with {kind}, {seed}, {shots}")
    p.add_argument("--cost", action="store_true", help="time training steps instead (M = max of --ms)")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.cost:
        print(json.dumps(step_cost(a.kind, max(int(m) for m in a.ms.split(","))), indent=1))
        return
    screen(None if a.kind == "none" else a.kind, [int(s) for s in a.seeds.split(",")], a.shots,
           [int(m) for m in a.ms.split(",")], a.episodes, a.save)


if __name__ == "__main__":
    main()
