"""The heads study (issue 33): every test-time head on the same encoders and episodes, with the
hallucinator off and with `calibrated`, replicated over training seeds and paired; and each head's
speed, batched against a per-episode loop of the same maths.

    python -m benchmarks.head_study builtin --seeds 0,1,2 --out benchmarks/results/heads_cpu4
    python -m benchmarks.head_study omniglot --seeds 0,1,2 --out benchmarks/results/heads_cpu4
    python -m benchmarks.head_study wang --seeds 0,1,2 --out benchmarks/results/heads_cpu4
    python -m benchmarks.head_study speed --out benchmarks/results/heads_cpu4
    python -m benchmarks.head_study table benchmarks/results/heads_cpu4

builtin: the best built-in encoder (pre-training 10 epochs + CL2N: `--recipe simpleshot`, with the
calibrated hallucinator's base statistics, which do not change the weights), per seed, tested on
the same 600 5-way 1-shot and 5-shot 15-query episodes (test seed 2) and on 600 episodes of 1 shot
and 1 to 10 queries per class (the heads that assume balanced queries meet imbalance), every head
at M = 0 and the inductive ones also at M = 100 (`--transductive-m`: the transductive ones too; TIM
alone then took 5-7 minutes per 600 episodes on one thread: 1,000 gradient steps over 505 support
and 75 query features of D = 256, the built-in encoder's at 32 px, per episode). The models are saved as
`models/simpleshot_s<seed>.pt` under `--out` (git ignores *.pt) and reused, so a new head is
scored without training again.
wang: `recipes.sh wang`'s model (pre-training 10 epochs, then 2,000 episodes of fine-tuning with
Wang et al.'s generator, M = 10, CL2N) and its M = 0 twin, every head at M = 0 and 10 on the same
1-shot and 5-shot episodes; models saved as `models/wang_M<M>_s<seed>.pt`.
omniglot: the Omniglot recipe (`benchmarks.omniglot`: 6,000 60-way episodes, rotations and
reflections as classes, augmentation, tested with 16 views), every head on its 1,000 5- and
20-way 1-shot test episodes and on 1,000 5- and 20-way 5-shot ones, on the model's features and
on CL2N ones (test-time centring on the training classes' mean: tests `<test>_cl2n`, paired with the
prototype head on the model's own features); models saved as `models/omniglot_s<seed>.pt`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

HEAD_SETTINGS: dict[str, dict] = {}  # each head at its paper's defaults (fsl.models.heads)
M_VALUES = (0, 100)
TRANSDUCTIVE_M = [False]  # --transductive-m: score the transductive heads at M = 100 too
THREADS = [2]  # --threads
TESTS = ["1shot", "5shot", "unbalanced"]  # --tests: the built-in part's tests to score


def m_values(head: str) -> tuple[int, ...]:
    from fsl.components import HEADS

    return M_VALUES if TRANSDUCTIVE_M[0] or not HEADS[head].transductive else (0,)


def note(text: str) -> None:
    import sys

    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def heads() -> list[str]:
    from fsl.components import HEADS

    return list(HEADS.names())


def simpleshot_model(seed: int, folder: Path):
    """The pre-trained + CL2N model of `seed` (trained once, then loaded), on the built-in data."""
    from fsl.config import TrainConfig

    cfg = TrainConfig(seed=seed, precision="fp32", device="cpu", hallucinator="calibrated", M=100).with_values(
        {"epochs": 0, "pretrain_epochs": 10, "feature_transform": "cl2n"})
    return trained_once(folder / f"simpleshot_s{seed}.pt", cfg), cfg


def trained_once(path: Path, cfg):
    """The model of `cfg` (pre-training, then its episodic epochs if any), trained and saved to
    `path` the first time, loaded from it after; in eval mode."""
    from fsl.commands.training_setup import prepare_training
    from fsl.models.classifier import load_checkpoint
    from fsl.pretrain import pretrain
    from fsl.train import train

    if not path.exists():
        setup = prepare_training(cfg)
        started = time.perf_counter()
        result = pretrain(setup.model, setup.data, setup.cfg, setup.device)
        if setup.cfg.epochs:
            result = train(setup.model, setup.data, setup.cfg, setup.device)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result.model.checkpoint(train_seconds=time.perf_counter() - started), path)
    return load_checkpoint(path).eval()


def unbalanced_table(data, count: int, seed: int, folder: Path):
    """`count` 5-way 1-shot episodes of the test split of `data` with 1 to 10 queries per class
    (drawn), as a compiled episode file of `test:<row>` rows (with its source record)."""
    from fsl.data.episode_table import compile_episode_file
    from fsl.data.episodes import source_record_path

    store = data.split("test")
    g = np.random.default_rng(seed)
    labels = store.labels.numpy()
    rows = ["episode,role,label,path"]
    for e in range(count):
        for c in g.choice(store.n_classes, 5, replace=False):
            members = np.flatnonzero(labels == c)
            picked = g.choice(members, 1 + int(g.integers(1, 11)), replace=False)
            rows.append(f"{e},support,{store.class_names[c]},test:{picked[0]}")
            rows += [f"{e},query,{store.class_names[c]},test:{r}" for r in picked[1:]]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"unbalanced_{seed}.csv"
    path.write_text("\n".join(rows) + "\n")
    source_record_path(path).write_text(json.dumps({"data_set": data.name, "source_id": data.source_id}) + "\n")
    return compile_episode_file(path)


def score_heads(model, store, episodes, noise_seed: int, ms: tuple[int, ...] | None = None,
                names: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """{head: {"M0": per-episode accuracies, "M100": ...}} on one encoder pass; `ms`: every head at
    these M (default: `m_values`); `names`: these heads (default: every one)."""
    from fsl.evaluate import encode_episodes, evaluate

    encoded = encode_episodes(model, store, episodes, max(ms or M_VALUES))
    out: dict[str, dict[str, list[float]]] = {}
    for head in heads() if names is None else names:
        note(f"{head} on {len(episodes)} episodes")
        with model.using_head(head, **HEAD_SETTINGS.get(head, {})):
            out[head] = {f"M{m}": [round(float(a), 4) for a in evaluate(model, store, episodes, m, noise_seed,
                                                                       encoded=encoded).accs]
                         for m in ms or m_values(head)}
    return out


def finetuned_model(seed: int, M: int, folder: Path):
    """`recipes.sh wang`'s model of `seed`: pre-training 10 epochs, then 2,000 episodes of fine-tuning
    with Wang et al.'s generator making M features per class (M = 0: the same without it), CL2N at
    test time; trained once, then loaded from `folder/wang_M<M>_s<seed>.pt`."""
    from fsl.config import TrainConfig

    cfg = TrainConfig(seed=seed, precision="fp32", device="cpu", hallucinator="wang" if M else None, M=M).with_values(
        {"pretrain_epochs": 10, "feature_transform": "cl2n"})
    return trained_once(folder / f"wang_M{M}_s{seed}.pt", cfg), cfg


def wang(seed: int, out: Path) -> Path:
    """Every head on `recipes.sh wang`'s model (M = 10) at M = 0 and 10, and on its M = 0 twin, on
    the built-in part's 600 1-shot and 5-shot episodes; a JSON per seed."""
    from fsl.data import load_dataset
    from fsl.data.episodes import EpisodeShape
    from fsl.evaluate import sample_episodes

    torch.set_num_threads(THREADS[0])
    models = {M: finetuned_model(seed, M, out / "models") for M in (10, 0)}
    store = load_dataset("synthetic").split("test")
    result: dict = {"seed": seed, "recipe": "pre-training 10 epochs + 2,000 episodes with wang (M = 10), CL2N"}
    for shots in (1, 5):
        if f"{shots}shot" not in TESTS:
            continue
        model, cfg = models[10]
        episodes = sample_episodes(store, EpisodeShape(5, shots, 15), 600, cfg.test_seed, "test")
        scores = score_heads(model, store, episodes, cfg.test_seed, ms=(0, 10))
        twin = score_heads(models[0][0], store, episodes, cfg.test_seed, ms=(0,))
        result[f"{shots}shot"] = {head: scores[head] | {"twin_M0": twin[head]["M0"]} for head in scores}
    path = out / f"wang_s{seed}.json"
    path.write_text(json.dumps(result) + "\n")
    return path


def score_table_heads(model, table, images, noise_seed: int) -> dict[str, dict[str, list[float]]]:
    from fsl.evaluate import encode_table, evaluate_table

    features = encode_table(model, table, images)
    out: dict[str, dict[str, list[float]]] = {}
    for head in heads():
        note(f"{head} on {table.count} episodes of a file")
        with model.using_head(head, **HEAD_SETTINGS.get(head, {})):
            out[head] = {f"M{m}": [round(float(a), 4) for a in evaluate_table(model, table, images, m, noise_seed,
                                                                             features=features).accs]
                         for m in m_values(head)}
    return out


def builtin(seed: int, out: Path) -> Path:
    """Every head on the built-in data for one training seed; a JSON per seed in `out`."""
    from fsl.data import load_dataset
    from fsl.data.episodes import EpisodeShape, episode_file_images
    from fsl.evaluate import sample_episodes

    torch.set_num_threads(THREADS[0])
    model, cfg = simpleshot_model(seed, out / "models")
    data = load_dataset("synthetic")
    store = data.split("test")
    result: dict = {"seed": seed, "recipe": "simpleshot + calibrated statistics", "train_seconds":
                    model.trained_with.get("train_seconds")}
    for shots in (1, 5):
        if f"{shots}shot" not in TESTS:
            continue
        episodes = sample_episodes(store, EpisodeShape(5, shots, 15), 600, cfg.test_seed, "test")
        started = time.perf_counter()
        result[f"{shots}shot"] = score_heads(model, store, episodes, cfg.test_seed)
        result[f"{shots}shot_seconds"] = round(time.perf_counter() - started, 1)
    if "unbalanced" in TESTS:
        table = unbalanced_table(data, 600, cfg.test_seed, out / "models")
        result["unbalanced"] = score_table_heads(model, table, episode_file_images(table, data, None, None),
                                                 cfg.test_seed)
    path = out / f"builtin_s{seed}.json"
    path.write_text(json.dumps(result) + "\n")
    return path


OMNIGLOT_TESTS = ((5, 1), (20, 1), (5, 5), (20, 5))  # (way, shots), 5 queries per class
# The recipe's own features (no transform), and the same model's features centred on its training
# classes' mean and l2-normalised at test time (CL2N: what LaplacianShot's reference feeds it).
OMNIGLOT_FEATURES = ("", "_cl2n")


def omniglot_test(way: int, shots: int, features: str = "") -> str:
    """The JSON key of a test: "5way" (1-shot, as first recorded), "5way_5shot", "20way_cl2n"."""
    return f"{way}way" + ("" if shots == 1 else f"_{shots}shot") + features


def omniglot(seed: int, out: Path) -> Path:
    """Every head on the Omniglot recipe model of `seed` (trained once, then loaded), on its own
    features and on CL2N ones (not the heads that bring their own: PT-MAP). The JSON is written
    after each test; a head already scored on a test is not scored again, so a new head is
    scored on its own. CL2N's centre is the mean feature of the background alphabets' training
    classes without their mirror images (the model also trained on those)."""
    from benchmarks.omniglot import load_omniglot, run, with_centred_features, with_config
    from fsl.components import HEADS
    from fsl.data.episodes import EpisodeShape
    from fsl.evaluate import sample_episodes
    from fsl.models.classifier import load_checkpoint

    torch.set_num_threads(THREADS[0])
    path = out / "models" / f"omniglot_s{seed}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        run(steps=6000, episodes=10, seed=seed, augment="omniglot", reflections=True, precision="fp32", save=path)
    model = with_config(load_checkpoint(path), test_views=16)  # the recipe tests with 16 views
    background, unseen = load_omniglot(None, reflections=False)
    models = {"": model}  # "_cl2n": made when first needed (a pass over every background image)
    test = unseen.split("test")
    json_path = out / f"omniglot_s{seed}.json"
    result: dict = json.loads(json_path.read_text()) if json_path.exists() else \
        {"seed": seed, "recipe": "omniglot (6,000 episodes, reflections, 16 views)"}
    for features in OMNIGLOT_FEATURES:
        for way, shots in OMNIGLOT_TESTS:  # 1-shot: the recipe check's episodes (seed 100 + way)
            key = omniglot_test(way, shots, features)
            names = [h for h in heads() if not (features and HEADS[h].own_features) and h not in result.get(key, {})]
            if not names:
                continue
            if features not in models:
                models[features] = with_centred_features(model, background.split("train"))
            episodes = sample_episodes(test, EpisodeShape(way, shots, 5), 1000, seed=100 * shots + way, split="test")
            result[key] = result.get(key, {}) | score_heads(models[features], test, episodes, 0, ms=(0,),
                                                              names=names)  # no hallucinator
            partial = json_path.with_suffix(".partial")  # a kill mid-write never leaves half a JSON
            partial.write_text(json.dumps(result) + "\n")
            partial.replace(json_path)
    return json_path


# batched calls that would take minutes on 1,000 episodes are timed on fewer (the cost is linear in
# the episodes there: TIM at D = 1600 is bound by its 2 x 1,000 [5, 80] x [80, 1600] products each)
SPEED_EPISODES = {("tim", 1600): 250}


def speed(dims=(64, 1600), episodes: int = 1000, loop_episodes: int = 20) -> dict:
    """Seconds per 1,000 5-way 1-shot 15-query episodes of each head at each feature size: the
    batched call on `episodes` episodes (fewer where SPEED_EPISODES says; median of 3 after a
    warm-up) against the per-episode loop of the same maths (`head_maths.per_episode`, timed on
    `loop_episodes` episodes and scaled), and the largest accuracy difference between the two on
    those episodes (points)."""
    import statistics

    from benchmarks.timing import interleaved
    from fsl.components import HEADS
    from fsl.models.head_maths import per_episode

    torch.set_num_threads(THREADS[0])
    out: dict = {"episodes": episodes, "loop_episodes": loop_episodes, "threads": torch.get_num_threads()}
    for dim in dims:
        g = torch.Generator().manual_seed(dim)
        centres = torch.randn(episodes, 5, dim, generator=g) + 1.0
        support = (centres + 0.7 * torch.randn(episodes, 5, dim, generator=g)).relu()
        labels = torch.arange(5).expand(episodes, -1).contiguous()
        truth = torch.arange(5).repeat_interleave(15).expand(episodes, -1)
        queries = (centres.repeat_interleave(15, 1) + 0.7 * torch.randn(episodes, 75, dim, generator=g)).relu()
        for name in HEADS.names():
            head = HEADS.create(name)
            e = SPEED_EPISODES.get((name, dim), episodes)
            batched = lambda h=head, e=e: h(support[:e], labels[:e], queries[:e], 5)  # noqa: E731
            n = loop_episodes

            def loop(h=head, n=n):
                return per_episode(lambda s, lab, q, w, weights=None: h(s, lab, q, w))(
                    support[:n], labels[:n], queries[:n], 5)

            times = interleaved({"batched": batched, "loop": loop}, repeats=3, warmup=1)
            acc_b = (batched()[:n].argmax(-1) == truth[:n]).double().mean(-1) * 100
            acc_l = (loop().argmax(-1) == truth[:n]).double().mean(-1) * 100
            per_1000_batched = statistics.median(times["batched"]) * 1000 / e
            per_1000_loop = statistics.median(times["loop"]) * 1000 / n
            out[f"{name}_d{dim}"] = {"batched_episodes": e, "batched_s_per_1000": round(per_1000_batched, 3),
                                     "loop_s_per_1000": round(per_1000_loop, 3),
                                     "speedup": round(per_1000_loop / per_1000_batched, 1),
                                     "max_acc_difference": float((acc_b - acc_l).abs().max())}
            print(name, dim, out[f"{name}_d{dim}"], flush=True)
        out[f"tim_products_d{dim}"] = tim_product_floor(support, queries)
        print("tim's products alone", dim, out[f"tim_products_d{dim}"], flush=True)
    return out


def tim_product_floor(support: torch.Tensor, queries: torch.Tensor, iterations: int = 1000) -> dict:
    """Seconds per 1,000 episodes that TIM-GD's two matrix products take alone at its iteration
    count: per step the logits w x^T [E, N, S+Q] and the gradient G x [E, N, D] (what no
    implementation of the method avoids), median of 5 after a warm-up, on 100 episodes; and the
    arithmetic they are, in TFLOP per 1,000 episodes."""
    import statistics

    from benchmarks.timing import interleaved

    x = torch.cat([support, queries], 1)[:100]
    w = x[:, :5].clone()
    g = torch.rand(x.shape[0], 5, x.shape[1])
    times = interleaved({"products": lambda: (w @ x.transpose(1, 2), g @ x)}, repeats=5, warmup=1)["products"]
    flop = 2 * 2 * 5 * x.shape[1] * x.shape[2] * iterations * 1000
    return {"s_per_1000": round(statistics.median(times) * iterations * 1000 / x.shape[0], 2),
            "tflop_per_1000": round(flop / 1e12, 3)}


def seed_runs(folder: Path, kind: str) -> dict[int, dict]:
    """{seed: the JSON of `<kind>_s<seed>.json`} in `folder`."""
    return {int(p.stem.rsplit("_s", 1)[1]): json.loads(p.read_text()) for p in folder.glob(f"{kind}_s*.json")}


def table(folder: Path) -> str:
    """Markdown: per data set and test, each head's mean accuracy over seeds (t-CI), the paired
    difference to the prototype head with the hallucinator off, and the paired gain of
    `calibrated` (M = 100) over the same head at M = 0; transductive heads marked."""
    from fsl.components import HEADS
    from fsl.stats import paired_difference, seed_ci

    lines = []
    omniglot_tests = tuple(omniglot_test(way, shots, f) for f in OMNIGLOT_FEATURES for way, shots in OMNIGLOT_TESTS)
    for kind, tests in (("builtin", ("1shot", "5shot", "unbalanced")), ("omniglot", omniglot_tests)):
        runs = seed_runs(folder, kind)
        if not runs:
            continue
        lines += [f"\n**{kind}** (seeds {','.join(map(str, sorted(runs)))})\n",
                  "| test | head | M = 0 | vs prototype | M = 100 (calibrated) | calibrated's gain | vs prototype |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for test in tests:
            def mean(seed: int, head: str, m: str) -> float:
                return float(np.mean(runs[seed][test][head][m]))

            seeds = sorted(s for s in runs if test in runs[s])
            if not seeds:  # a part scored with --tests leaving this one out
                continue
            # the baseline is the prototype head on the model's own features (CL2N is a test-time option)
            base = {s: float(np.mean(runs[s][test.removesuffix("_cl2n")]["prototype"]["M0"])) for s in seeds}
            for head in HEADS.names():
                if head not in runs[seeds[0]][test]:
                    continue
                label = head + (" (transductive)" if HEADS[head].transductive else "")
                cells = []
                if "M100" not in runs[seeds[0]][test][head]:  # not scored: --transductive-m
                    value = {s: mean(s, head, "M0") for s in seeds}
                    interval, d = seed_ci(list(value.values())), paired_difference(value, base)
                    lines.append(f"| {test} | {label} | {interval.mean:.2f} ± {interval.half:.2f} | "
                                 f"{d.mean:+.2f} ± {d.half:.2f}{' ✓' if d.excludes_zero else ''} | — | — | — |")
                    continue
                for m in ("M0", "M100"):
                    value = {s: mean(s, head, m) for s in seeds}
                    interval = seed_ci(list(value.values()))
                    cells.append(f"{interval.mean:.2f} ± {interval.half:.2f}")
                    d = paired_difference(value, base)
                    cells.append("—" if head == "prototype" and m == "M0" else
                                 f"{d.mean:+.2f} ± {d.half:.2f}" + (" ✓" if d.excludes_zero else ""))
                gain = paired_difference({s: mean(s, head, "M100") for s in seeds},
                                         {s: mean(s, head, "M0") for s in seeds})
                gain_cell = f"{gain.mean:+.2f} ± {gain.half:.2f}" + (" ✓" if gain.excludes_zero else "")
                lines.append(f"| {test} | {label} | {cells[0]} | {cells[1]} | {cells[2]} | {gain_cell} | {cells[3]} |")
    return "\n".join(lines)


def wang_table(folder: Path) -> str:
    """Markdown: each head on `recipes.sh wang`'s model at M = 10 and M = 0 and on its M = 0 twin
    (fine-tuned the same way without the generator), differences paired seed by seed."""
    from fsl.components import HEADS
    from fsl.stats import paired_difference, seed_ci

    runs = seed_runs(folder, "wang")
    if not runs:
        return ""
    lines = [f"\n**wang** (seeds {','.join(map(str, sorted(runs)))})\n",
             "| test | head | M = 0 twin | wang model, M = 0 | wang model, M = 10 | M = 10 vs twin | M = 10 vs M = 0 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for test in ("1shot", "5shot"):
        seeds = sorted(s for s in runs if test in runs[s])
        for head in HEADS.names() if seeds else ():
            value = {key: {s: float(np.mean(runs[s][test][head][key])) for s in seeds}
                     for key in ("twin_M0", "M0", "M10")}
            cells = [f"{ci.mean:.2f} ± {ci.half:.2f}"
                     for ci in (seed_ci(list(value[k].values())) for k in ("twin_M0", "M0", "M10"))]
            for other in ("twin_M0", "M0"):
                d = paired_difference(value["M10"], value[other])
                cells.append(f"{d.mean:+.2f} ± {d.half:.2f}" + (" ✓" if d.excludes_zero else ""))
            label = head + (" (transductive)" if HEADS[head].transductive else "")
            lines.append(f"| {test} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["builtin", "omniglot", "wang", "speed", "table"])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/heads"))
    parser.add_argument("--transductive-m", action="store_true", help="score transductive heads at M = 100 too")
    parser.add_argument("--tests", default=",".join(TESTS), help="builtin: the tests to score (comma-separated)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the speed rows: 2, the CPU's cores)")
    args = parser.parse_args()
    TRANSDUCTIVE_M[0] = args.transductive_m
    THREADS[0] = args.threads
    TESTS[:] = args.tests.split(",")
    if args.what == "table":
        print(table(args.folder or args.out) + wang_table(args.folder or args.out))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "speed":
        (args.out / "speed.json").write_text(json.dumps(speed(), indent=1) + "\n")
        return
    for seed in (int(s) for s in args.seeds.split(",")):
        print({"builtin": builtin, "omniglot": omniglot, "wang": wang}[args.what](seed, args.out), flush=True)


if __name__ == "__main__":
    main()
