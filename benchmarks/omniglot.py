"""The real-data check: ProtoNet on Omniglot characters, tested on unseen alphabets.

Train on every character of images_background_small1 (Omniglot protocol: 28x28 greyscale,
rotations by 90/180/270 degrees as extra classes; a seeded 10% of classes for validation), then
test 5-way 1-shot and 20-way 1-shot on the three alphabets that only images_background_small2
holds (Japanese_(katakana), Sanskrit, Tagalog): every test class is unseen.

    python -m benchmarks.omniglot [--episodes 1000] [--steps 3000]

Needs ../shared/data/omniglot (not part of the repository); prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path

# ../shared beside the checkout; FSL_OMNIGLOT_DIR points elsewhere (a copy carried to a GPU machine).
OMNIGLOT = Path(os.environ.get("FSL_OMNIGLOT_DIR")
                or Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot")
UNSEEN = ("Japanese_(katakana)", "Sanskrit", "Tagalog")


def unseen_split_file(archive: Path, out: Path) -> Path:
    """A split list putting the characters of the UNSEEN alphabets in `test`, nothing else."""
    with zipfile.ZipFile(archive) as zf:
        chars = sorted({"/".join(n.split("/")[1:3]) for n in zf.namelist()
                        if n.count("/") >= 3 and n.split("/")[1] in UNSEEN})
    out.write_text("\n".join(f"test,{c}" for c in chars) + "\n")
    return out


TEST_VIEWS = 16  # views per test image of the test-time augmentation variant


def load_omniglot(image_size: int | None, reflections: bool):
    """(background: images_background_small1 with rotations, and mirror images where asked, as
    extra classes, 10% of the classes for validation; unseen: the test split of the UNSEEN alphabets)."""
    from fsl.data import load_dataset

    background = load_dataset(str(OMNIGLOT / "images_background_small1.zip"), image_size, rotations=True,
                              reflections=reflections, split_ratio=(0.9, 0.1, 0.0))
    split_file = unseen_split_file(OMNIGLOT / "images_background_small2.zip",
                                   Path(tempfile.mkdtemp(prefix="fsl-omniglot-")) / "omniglot_unseen.txt")
    unseen = load_dataset(str(OMNIGLOT / "images_background_small2.zip"), image_size, split_file=str(split_file))
    return background, unseen


def run(steps: int = 3000, episodes: int = 1000, ways: int = 60, queries: int = 5, seed: int = 0,
        device: str = "auto", augment: bool | str = False, pretrain_epochs: int = 0,
        feature_transform: str = "none", encoder: str = "conv4", encoder_width: float = 1.0,
        precision: str = "auto", image_size: int | None = None, reflections: bool = False,
        save: Path | None = None) -> dict:
    """Train (pre-training for `pretrain_epochs`, then `steps` episodes; either may be 0) and test
    on the unseen alphabets; a JSON-able summary. `save`: also write the trained model's
    checkpoint there (`fsl.models.classifier.load_checkpoint` reads it), so that a test-time
    variant can be screened later on the same model without training it again (`retest`)."""
    from fsl.config import TrainConfig
    from fsl.models.classifier import build_model
    from fsl.runtime import resolve_device, resolve_precision
    from fsl.train import train

    started = time.perf_counter()
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    background, unseen = load_omniglot(image_size, reflections)
    loaded = time.perf_counter() - started

    # Snell et al. train Omniglot 1-shot with 60-way episodes and 5 queries.
    per_epoch = max(1, steps // 10)
    # distance l2: the omniglot recipe's (its figures were measured with it; fsl's default since issue 32 is euclidean)
    cfg = TrainConfig(ways=ways, shots=1, queries=queries, test_ways=20, test_shots=1, test_queries=5, distance="l2",
                      epochs=steps // per_epoch, episodes_per_epoch=per_epoch, val_episodes=100,
                      lr_step=max(1, steps // 2), seed=seed, augment=augment, pretrain_epochs=pretrain_epochs,
                      feature_transform=feature_transform, encoder=encoder, encoder_args={"width": encoder_width})
    cfg.validate()
    model = build_model(cfg, background, dev, precision)
    t0 = time.perf_counter()
    if pretrain_epochs:
        from fsl.pretrain import pretrain

        result = pretrain(model, background, cfg, dev)
    if steps:
        result = train(model, background, cfg, dev)
    trained = time.perf_counter() - t0
    if save:
        import torch

        torch.save(result.model.checkpoint(seed=seed, steps=steps, pretrain_epochs=pretrain_epochs), save)
    test = unseen.split("test").to(dev)
    out = {"train_classes": background.split("train").n_classes, "test_classes": test.n_classes,
           "steps": cfg.epochs * cfg.episodes_per_epoch, "train_shape": str(cfg.train_shape), "augment": cfg.augment,
           "pretrain_epochs": pretrain_epochs, "feature_transform": feature_transform, "encoder": encoder,
           "encoder_width": encoder_width, "image_size": test.image_size, "reflections": reflections,
           "best_val_acc_20way": result.best_val_acc, "device": str(dev), "precision": precision,
           "load_seconds": round(loaded, 1), "train_seconds": round(trained, 1)}
    out |= test_variants(result.model, background.split("train").to(dev), test, episodes, cfg.augment)
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    return out


def test_variants(model, base, test, episodes: int, augment: str) -> dict:
    """The trained model tested on the same fixed 5- and 20-way 1-shot episodes as trained and, for
    no training time, with each test-time step of the recipe on the same weights (so paired with
    its own training): CL2N features centred on `base` (its training classes) (`_cl2n`), and test-
    time augmentation with TEST_VIEWS views from its training policy `augment` (`_views16`)."""
    from fsl.data.episodes import EpisodeShape
    from fsl.evaluate import evaluate, sample_episodes
    from fsl.models.classifier import config_value

    transform = config_value(model.config, "feature_transform")
    tested = {"": model}
    if transform == "none":
        tested["_cl2n"] = with_centred_features(model, base)
    if augment != "none" and not config_value(model.config, "test_views"):
        tested[f"_views{TEST_VIEWS}"] = with_config(model, augment=augment, test_views=TEST_VIEWS)
    episode_sets = {way: sample_episodes(test, EpisodeShape(way, 1, 5), episodes, seed=100 + way, split="test")
                    for way in (5, 20)}  # the same episodes for every model and variant
    out = {}
    for suffix, variant in tested.items():
        for way, eps in episode_sets.items():
            # with views, small chunks: the 2,000 test episodes took 5 min in chunks of 2 episodes, over
            # 14 in chunks of 34 (4,000 images; the latter partly beside a test run) on CPU-3
            res = evaluate(variant, test, eps, batch=2 if suffix.startswith("_views") else 0)
            out[f"test_{way}way_1shot{suffix}"] = {"acc": round(res.mean, 2), "ci95": round(res.ci95, 2),
                                                   "episodes": episodes, "per_episode": [round(a, 2) for a in res.accs]}
    return out


def retest(checkpoint: Path, episodes: int = 1000, device: str = "auto") -> dict:
    """A saved model (`--save`) tested again with today's variants. The summary `run` wrote beside
    it (the same name, .json), if any, gets the variants it lacks, after a check that the model
    as trained scores exactly what it recorded (the same episodes, the same weights)."""
    from fsl.models.classifier import config_value, load_checkpoint
    from fsl.runtime import resolve_device

    dev = resolve_device(device)
    summary_path = checkpoint.with_suffix(".json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    model = load_checkpoint(checkpoint).place(dev).eval()
    size = model.config["image_size"]
    background, unseen = load_omniglot(None if size == 28 else size, summary.get("reflections", False))
    augment = summary.get("augment") or config_value(model.config, "augment")
    fresh = test_variants(model, background.split("train").to(dev), unseen.split("test").to(dev), episodes, augment)
    for key, recorded in summary.items():
        if key in fresh and fresh[key]["per_episode"] != recorded["per_episode"]:
            raise SystemExit(f"{checkpoint}: {key} differs from the recorded one: not the same model or episodes")
    if summary:  # written whole or not at all
        partial = summary_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(summary | fresh, indent=2))
        os.replace(partial, summary_path)
    return summary | fresh


def with_config(model, **changes):
    """A copy of `model` with the same weights under a changed config (a test-time option)."""
    from fsl.models.classifier import FewShotClassifier

    twin = FewShotClassifier(model.config | changes).place(model.device)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def with_centred_features(model, base):
    """A copy of `model` that centres features on the mean of `base` (its training classes) and
    l2-normalises them at test time (`feature_transform="cl2n"`), with the same weights."""
    from fsl.models.classifier import FewShotClassifier
    from fsl.train import base_class_features

    twin = FewShotClassifier(model.config | {"feature_transform": "cl2n"}).place(base.images.device)
    twin.load_state_dict(model.state_dict(), strict=False)  # all but the base mean, set next
    twin.set_base_mean(base_class_features(twin, base)[0].mean(0))
    return twin.eval()


def study_table(folder: Path, baseline: str = "today") -> str:
    """The replicated study: `<recipe>_s<seed>.json` files (this script's output, one per recipe
    and seed) -> a markdown table, per recipe and test (5- and 20-way, as trained, with CL2N
    features and with test-time views): the mean over seeds ± t-CI, and the paired difference to `baseline` seed by seed
    (the same 1,000 test episodes), with its t-CI; and the training minutes per model."""
    from fsl.stats import paired_difference, seed_ci

    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*_s*.json")):
        recipe, seed = path.stem.rsplit("_s", 1)
        runs.setdefault(recipe, {})[int(seed)] = json.loads(path.read_text())
    tests = [("5-way", "test_5way_1shot"), ("20-way", "test_20way_1shot"),
             ("5-way, CL2N", "test_5way_1shot_cl2n"), ("20-way, CL2N", "test_20way_1shot_cl2n"),
             (f"5-way, {TEST_VIEWS} views", f"test_5way_1shot_views{TEST_VIEWS}"),
             (f"20-way, {TEST_VIEWS} views", f"test_20way_1shot_views{TEST_VIEWS}")]
    lines = ["| recipe | seeds | test | accuracy | vs " + baseline + " (paired) | training minutes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for recipe, by_seed in runs.items():
        minutes = sum(r["train_seconds"] for r in by_seed.values()) / 60 / len(by_seed)
        for label, key in tests:
            acc = {s: r[key]["acc"] for s, r in by_seed.items() if key in r}
            if not acc:
                continue
            mean = seed_ci(list(acc.values())) if len(acc) > 1 else None
            cell = f"{mean.mean:.2f} ± {mean.half:.2f}" if mean else f"{next(iter(acc.values())):.2f} (1 seed)"
            base_key = "test_20way_1shot" if "20way" in key else "test_5way_1shot"  # as trained, no CL2N
            base = {s: r[base_key]["acc"] for s, r in runs.get(baseline, {}).items()}
            common = sorted(acc.keys() & base.keys())
            diff = "—"
            if (recipe, key) != (baseline, base_key) and len(common) >= 2:
                d = paired_difference({s: acc[s] for s in common}, {s: base[s] for s in common})
                diff = f"{d.mean:+.2f} ± {d.half:.2f}{' ✓' if d.excludes_zero else ''}"
            elif (recipe, key) != (baseline, base_key) and len(common) == 1:
                diff = f"{acc[common[0]] - base[common[0]]:+.2f} (1 seed)"
            seeds = ",".join(map(str, sorted(acc)))
            lines.append(f"| {recipe} | {seeds} | {label} | {cell} | {diff} | {minutes:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--augment", nargs="?", const="omniglot", default="none",
                        help="augmentation policy (a bare --augment: omniglot, random rotation/scale/shift)")
    parser.add_argument("--pretrain-epochs", type=int, default=0, help="pre-train the encoder first (fsl.pretrain)")
    parser.add_argument("--feature-transform", default="none", help="test-time features: none or cl2n")
    parser.add_argument("--encoder", default="conv4")
    parser.add_argument("--encoder-width", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None, help="pixels (default: the reader's 28)")
    parser.add_argument("--reflections", action="store_true", help="mirrored characters as extra classes (x2)")
    parser.add_argument("--precision", default="auto", help="auto, bf16 or fp32 (the recipe study times fp32)")
    parser.add_argument("--save", type=Path, default=None, help="also write the trained model's checkpoint here")
    parser.add_argument("--retest", type=Path, default=None,
                        help="test a model saved with --save again, with today's test-time variants, instead")
    parser.add_argument("--table", type=Path, default=None,
                        help="print the study table of a folder of <recipe>_s<seed>.json outputs instead")
    parser.add_argument("--vs", default="today", help="with --table: the recipe every other one is paired with")
    args = parser.parse_args()
    if args.table:
        print(study_table(args.table, args.vs))
        return
    if not OMNIGLOT.exists():
        raise SystemExit(f"{OMNIGLOT} is absent: this check needs the shared Omniglot zips")
    if args.retest:
        print(json.dumps(retest(args.retest, args.episodes, args.device), indent=2))
        return
    print(json.dumps(run(args.steps, args.episodes, seed=args.seed, device=args.device, augment=args.augment,
                         pretrain_epochs=args.pretrain_epochs, feature_transform=args.feature_transform,
                         encoder=args.encoder, encoder_width=args.encoder_width, precision=args.precision,
                         image_size=args.image_size, reflections=args.reflections,
                         save=args.save), indent=2))


if __name__ == "__main__":
    main()
