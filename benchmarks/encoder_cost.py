"""What each encoder costs: seconds per training episode and per test episode, 5-way 1-shot
15-query, on the built-in data at each image size, through the trainer and evaluation fsl uses
(`fsl.train.EpisodeTrainer`, `fsl.evaluate.episode_correct`). Medians of --repeats timed blocks
after one warm-up block (`benchmarks.timing.rate`). Prints a markdown table and writes JSON.

    python -m benchmarks.encoder_cost [--encoders conv4,resnet12,resnet12@0.25] [--sizes 32,84]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.bench import device_peak_mib, reset_device_peak
from benchmarks.timing import rate
from fsl.config import TrainConfig
from fsl.data import load_dataset
from fsl.data.episodes import EpisodeShape
from fsl.evaluate import episode_correct, sample_episodes
from fsl.models.classifier import build_model
from fsl.runtime import resolve_device, resolve_precision
from fsl.train import EpisodeTrainer


def parse_encoder(text: str) -> tuple[str, float]:
    """`resnet12@0.25` -> ("resnet12", 0.25); a bare name has width 1."""
    name, _, width = text.partition("@")
    return name, float(width or 1)


def encoder_cost(name: str, width: float, size: int, device: torch.device, precision: str, steps: int,
                 repeats: int) -> dict:
    data = load_dataset("synthetic", image_size=size)
    model = build_model(TrainConfig(encoder=name, encoder_args={"width": width}, seed=0), data, device, precision)
    shape = EpisodeShape(5, 1, 15)
    trainer = EpisodeTrainer(model, data.split("train").to(device), TrainConfig(compile="off"), device)
    reset_device_peak(device)
    train = rate(lambda: (trainer.run(steps), steps)[1], device, warmup=1, repeats=repeats)
    store = data.split("test").to(device)
    episodes = sample_episodes(store, shape, steps * 4, seed=0, split="test")
    model.eval()
    test = rate(lambda: (episode_correct(model, store, episodes), steps * 4)[1], device, warmup=1, repeats=repeats)
    return {"encoder": name, "width": width, "size": size, "feature_dim": model.feature_dim,
            "parameters": sum(p.numel() for p in model.encoder.parameters()),
            "train_seconds_per_episode": 1 / train["median"], "train_range": [1 / train["max"], 1 / train["min"]],
            "test_seconds_per_episode": 1 / test["median"], "device_peak_mib": device_peak_mib(device),
            "device": str(device), "precision": precision, "threads": torch.get_num_threads(),
            "steps": steps, "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default="conv4,resnet12@0.25,resnet12@0.5,resnet12")
    parser.add_argument("--sizes", default="32,84")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=2, help="training episodes per timed block (x4 test episodes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("encoder_cost.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for name, width in map(parse_encoder, args.encoders.split(",")):
            rows.append(encoder_cost(name, width, size, device, precision, args.steps, args.repeats))
            args.out.write_text(json.dumps(rows, indent=2))  # a run cut short keeps its rows
    print("| encoder | width | px | feature dim | parameters | train s/episode | test s/episode |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['encoder']} | {r['width']:g} | {r['size']} | {r['feature_dim']} | {r['parameters']:,} | "
              f"{r['train_seconds_per_episode']:.3f} | {r['test_seconds_per_episode']:.4f} |")


if __name__ == "__main__":
    main()
