"""fsl's ProtoNet against another library's, easyfsl 1.5.0, at the same recipe on real Omniglot
(issue 32). easyfsl is installed for this benchmark only, never as a dependency of fsl:

    pip install --no-deps --target /tmp/peer-site easyfsl==1.5.0
    export PYTHONPATH=/tmp/peer-site
    python -m benchmarks.peer run --seeds 0,1,2 --steps 2000 --out benchmarks/results/peer_cpu4   # accuracy, RSS
    python -m benchmarks.peer speed                                                               # s/episode
    python -m benchmarks.peer one --library fsl --seed 0 --set distance=euclidean --out x.json   # one model
    python -m benchmarks.peer table benchmarks/results/peer_cpu4 [--vs fsl]

Held equal, both libraries: the Conv-4 (fsl's class, the same seeded initial weights), the data
(images_background_small1 decoded by fsl, 4 rotations as classes, 122 train and 14 val
characters), the training episodes (fsl's sampler and seed: the same classes and images in the
same order; easyfsl's TaskSampler is not used), 20-way 1-shot 5-query episodes, Adam at 1e-3, fp32,
2 threads, the same fixed val episodes after each of 10 epochs keeping the best, and the same
1,000 5-way and 1,000 20-way 1-shot test episodes of 3 alphabets never seen in training
(`benchmarks.omniglot`). What differs is each library's own: its distance and logit scale, its
BatchNorm batches, its input normalisation (fsl: the training split's mean and std; easyfsl:
[0, 1]); `--set` moves fsl's to the other library's one at a time (the screening of issue 32).

Each model trains in its own process, whose peak RSS (`ru_maxrss`) is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

STEPS, WAYS, SHOTS, QUERIES, EPOCHS = 2000, 20, 1, 5, 10
TEST_EPISODES = 1000
THREADS = 2  # each library's process, in every measurement


def base_config(seed: int, steps: int, settings: dict):
    from fsl.config import TrainConfig
    from fsl.sweeps import parse_grid

    # "fsl" is the squared distance, fsl's default until issue 32 (the results of benchmarks/results/peer_cpu4);
    # today's default is the row fsl+distance=euclidean
    cfg = TrainConfig(ways=WAYS, shots=SHOTS, queries=QUERIES, test_ways=WAYS, test_shots=1, test_queries=5,
                      distance="l2", epochs=EPOCHS, episodes_per_epoch=steps // EPOCHS, val_episodes=100, lr=1e-3,
                      seed=seed, precision="fp32", device="cpu")
    typed = parse_grid(cfg, [f"{k}={v}" for k, v in settings.items()])  # read as the options' types
    return cfg.with_values({k: v[0] for k, v in typed.items()})


def test_sets(unseen):
    """The fixed test episodes of the recipe check: 1,000 5-way and 1,000 20-way 1-shot 5-query."""
    from fsl.data.episodes import EpisodeShape
    from fsl.evaluate import sample_episodes

    store = unseen.split("test")
    return store, {way: sample_episodes(store, EpisodeShape(way, 1, 5), TEST_EPISODES, seed=100 + way, split="test")
                   for way in (5, 20)}


def train_fsl(background, seed: int, steps: int, settings: dict):
    """fsl's trainer as `fsl protonet` runs it (no tracking); the best-by-val model."""
    from fsl.models.classifier import build_model
    from fsl.train import train

    cfg = base_config(seed, steps, settings)
    cfg.validate()
    model = build_model(cfg, background, "cpu", "fp32")
    return train(model, background, cfg, torch.device("cpu")).model


def fsl_accuracies(model, store, episodes) -> list[float]:
    from fsl.evaluate import evaluate

    return [float(a) for a in evaluate(model, store, episodes).accs]


class EasyFSL:
    """easyfsl's PrototypicalNetworks around fsl's Conv-4, trained on fsl's episodes."""

    def __init__(self, background, seed: int) -> None:
        from easyfsl.methods import PrototypicalNetworks

        from fsl.models.encoders import Conv4
        from fsl.runtime import seed_everything

        seed_everything(seed)  # as build_model: the same initial weights as fsl's encoder
        self.model = PrototypicalNetworks(Conv4(background.channels, background.image_size))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.support_labels = torch.arange(WAYS).repeat_interleave(SHOTS)
        self.query_labels = torch.arange(WAYS).repeat_interleave(QUERIES)

    def step(self, images: torch.Tensor, support: torch.Tensor, query: torch.Tensor) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.process_support_set(images[support].float() / 255, self.support_labels)  # [0, 1] inputs
        loss = torch.nn.functional.cross_entropy(self.model(images[query].float() / 255), self.query_labels)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def steps(self, store, sampler, rng: torch.Generator, n: int) -> None:
        """n training steps on the next n episodes `sampler` draws from `store` with `rng` (fsl's
        sampler: the episodes fsl's trainer takes from the same generator)."""
        draws = sampler.sample(rng, n)
        for step in range(n):
            self.step(store.images, draws.support[step], draws.query[step])

    @torch.no_grad()
    def accuracies(self, store, episodes) -> list[float]:
        self.model.eval()
        support_labels, query_labels = episodes.support_labels(), episodes.query_labels()
        out = []
        for support, query in zip(episodes.support, episodes.query):
            self.model.process_support_set(store.images[support].float() / 255, support_labels)
            predicted = self.model(store.images[query].float() / 255).argmax(-1)
            out.append(100.0 * float((predicted == query_labels).float().mean()))
        return out


def train_easyfsl(background, seed: int, steps: int) -> EasyFSL:
    """The same schedule, episodes and val episodes as `train_fsl`, through easyfsl's model."""
    import copy

    from fsl.data.episodes import EpisodeSampler
    from fsl.runtime import make_generator
    from fsl.train import GENERATOR_STRIDE, validation_episodes

    cfg = base_config(seed, steps, {})
    peer = EasyFSL(background, seed)
    train_store = background.split("train")
    sampler = EpisodeSampler(train_store, cfg.train_shape, split="train")
    rng = make_generator(cfg.seed + GENERATOR_STRIDE * 0)  # rank 0's episode generator in fsl's trainer
    val_store, val_episodes = validation_episodes(background, cfg, torch.device("cpu"))
    best, best_state = -1.0, None
    for _ in range(cfg.epochs):
        peer.steps(train_store, sampler, rng, cfg.episodes_per_epoch)
        val = sum(peer.accuracies(val_store, val_episodes)) / cfg.val_episodes
        if val > best:
            best, best_state = val, copy.deepcopy(peer.model.state_dict())
    peer.model.load_state_dict(best_state)
    return peer


def one(library: str, seed: int, steps: int, settings: dict) -> dict:
    """Train one model in this process and test it on both test sets; with this process's peak RSS."""
    from benchmarks.omniglot import load_omniglot

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    background, unseen = load_omniglot(None, reflections=False)
    store, sets = test_sets(unseen)
    t0 = time.perf_counter()
    if library == "fsl":
        model = train_fsl(background, seed, steps, settings)
        trained = time.perf_counter() - t0
        accs = {f"acc{way}": fsl_accuracies(model, store.to("cpu"), episodes) for way, episodes in sets.items()}
    else:
        peer = train_easyfsl(background, seed, steps)
        trained = time.perf_counter() - t0
        accs = {f"acc{way}": peer.accuracies(store, episodes) for way, episodes in sets.items()}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
    return {"library": library, "seed": seed, "steps": steps, "settings": settings, "train_seconds": round(trained, 1),
            "total_seconds": round(time.perf_counter() - started, 1), "peak_rss_gib": round(rss, 3)} | accs


SPEED_WORKERS = ("fsl", "easyfsl", "easyfsl+kept")


def _speed_worker(library: str, steps: int, conn) -> None:
    """One library's training steps in this process, a block of `steps` per request: `fsl` as
    `fsl protonet` trains (its model placed on the CPU, which keeps freed memory for reuse), easyfsl
    as its users run it, and `easyfsl+kept` with fsl's allocator setting (where the gap comes from)."""
    from benchmarks.omniglot import load_omniglot
    from fsl.data.episodes import EpisodeSampler
    from fsl.models.classifier import build_model
    from fsl.runtime import keep_freed_memory, make_generator
    from fsl.train import EpisodeTrainer

    torch.set_num_threads(THREADS)
    background, _ = load_omniglot(None, reflections=False)
    cfg, store = base_config(0, STEPS, {"distance": "euclidean"}), background.split("train")  # fsl's default
    if library == "fsl":
        trainer = EpisodeTrainer(build_model(cfg, background, "cpu", "fp32"), store, cfg, torch.device("cpu"))

        def block() -> None:
            float(trainer.run(steps)[0])
    else:
        if library == "easyfsl+kept":
            keep_freed_memory()
        peer = EasyFSL(background, 0)
        sampler, rng = EpisodeSampler(store, cfg.train_shape, split="train"), make_generator(1)

        def block() -> None:
            peer.steps(store, sampler, rng, steps)
    conn.send("ready")
    while conn.recv() == "go":
        block()
        conn.send("done")
    conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)


def speed(steps: int = 20, repeats: int = 7) -> dict:
    """Seconds per training episode of each library, each in its own process (fsl's allocator
    setting is process-wide), blocks interleaved one process at a time so that a slower spell of
    the machine hits all of them; the peak RSS of each process."""
    import multiprocessing
    import statistics

    from benchmarks.timing import interleaved

    context = multiprocessing.get_context("spawn")
    pipes, workers = {}, []
    for library in SPEED_WORKERS:
        parent, child = context.Pipe()
        worker = context.Process(target=_speed_worker, args=(library, steps, child))
        worker.start()
        child.close()  # the worker's end: a worker that dies then ends the parent's recv (EOFError)
        pipes[library] = parent
        workers.append(worker)
    for library, conn in pipes.items():
        if not conn.poll(600) or conn.recv() != "ready":
            raise RuntimeError(f"the {library} worker did not start (easyfsl on PYTHONPATH?)")

    def request(conn) -> Callable[[], None]:
        return lambda: (conn.send("go"), conn.recv())

    times = interleaved({library: request(conn) for library, conn in pipes.items()}, repeats=repeats)
    rss = {}
    for library, conn in pipes.items():
        conn.send("stop")
        rss[library] = round(conn.recv(), 3)
    for worker in workers:
        worker.join()
    per = {k: statistics.median(v) / steps for k, v in times.items()}
    return {"seconds_per_episode": per, "fsl_speedup": per["easyfsl"] / per["fsl"],
            "fsl_speedup_vs_easyfsl_kept": per["easyfsl+kept"] / per["fsl"], "peak_rss_gib": rss,
            "steps_per_block": steps, "repeats": repeats, "threads": THREADS,
            "all_seconds": {k: [round(t, 4) for t in v] for k, v in times.items()}}


def label(result: dict) -> str:
    if result["library"] != "fsl":
        return result["library"]
    return "fsl" + "".join(f"+{k}={v}" for k, v in sorted(result["settings"].items()))


def table(folder: Path, vs: str = "easyfsl") -> str:
    """Every configuration paired with `vs` seed by seed on the same test episodes: the mean
    per-seed difference of the mean accuracy with its t-CI over seeds, per way; RSS and minutes."""
    from fsl.stats import paired_difference, seed_ci

    results: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        results.setdefault(label(result), {})[result["seed"]] = result
    lines = [f"| configuration | seeds | 5-way | 20-way | vs {vs} 5-way | vs {vs} 20-way | per seed (5 / 20) "
             "| peak RSS GiB | train min |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = results.get(vs, {})

    def mean(r: dict, way: int) -> float:
        return sum(r[f"acc{way}"]) / len(r[f"acc{way}"])

    for name, seeds in sorted(results.items()):
        cells = [str(seed_ci([mean(r, w) for r in seeds.values()])).split(" (")[0] for w in (5, 20)]
        common = sorted(seeds.keys() & base.keys())
        diffs, per_seed = [], []
        for way in (5, 20):
            if name == vs or not common:
                diffs.append("—")
                continue
            d = paired_difference({s: mean(seeds[s], way) for s in common}, {s: mean(base[s], way) for s in common})
            diffs.append(f"{d.mean:+.2f} ± {d.half:.2f}" + (" ✓" if d.excludes_zero else ""))
        if name != vs and common:
            per_seed = [f"{mean(seeds[s], 5) - mean(base[s], 5):+.2f} / {mean(seeds[s], 20) - mean(base[s], 20):+.2f}"
                        for s in common]
        rss = max(r["peak_rss_gib"] for r in seeds.values())
        minutes = sum(r["train_seconds"] for r in seeds.values()) / len(seeds) / 60
        lines.append(f"| {name} | {','.join(map(str, sorted(seeds)))} | {cells[0]} | {cells[1]} | {diffs[0]} | "
                     f"{diffs[1]} | {'; '.join(per_seed) or '—'} | {rss:.2f} | {minutes:.1f} |")
    return "\n".join(lines)


def run_all(seeds: list[int], steps: int, out: Path, settings: list[dict]) -> None:
    """Each (library or fsl setting, seed) in its own process, its JSON in `out`; done ones skipped."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [("easyfsl", {})] + [("fsl", s) for s in settings]
    for seed in seeds:
        for library, setting in jobs:
            name = label({"library": library, "settings": setting}).replace("=", "-").replace("+", "_")
            path = out / f"{name}_s{seed}.json"
            if path.exists():
                continue
            args = [sys.executable, "-m", "benchmarks.peer", "one", "--library", library, "--seed", str(seed),
                    "--steps", str(steps), "--out", str(path)] + [f"--set={k}={v}" for k, v in setting.items()]
            print(" ".join(args[2:]), file=sys.stderr, flush=True)
            subprocess.run(args, check=True, env=os.environ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["one", "run", "speed", "table"])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--library", choices=["fsl", "easyfsl"], default="fsl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--set", action="append", default=[], help="an fsl setting, e.g. distance=euclidean")
    parser.add_argument("--screen", action="store_true", help="run: also every screened fsl setting")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--vs", default="easyfsl")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    if args.what == "one":
        result = one(args.library, args.seed, args.steps, settings)
        text = json.dumps(result)
        if args.out:
            args.out.write_text(text + "\n")
        print(json.dumps({k: v for k, v in result.items() if not k.startswith("acc")} | {
            k: round(sum(v) / len(v), 2) for k, v in result.items() if k.startswith("acc")}))
    elif args.what == "run":
        screened = [{}] + (SCREEN if args.screen else [])
        run_all([int(s) for s in args.seeds.split(",")], args.steps, args.out or Path("peer"), screened)
        print(table(args.out or Path("peer"), args.vs))
    elif args.what == "speed":
        print(json.dumps(speed(), indent=1))
    else:
        print(table(args.folder, args.vs))


# The screening of issue 32: each setting moves fsl one step towards the other library, or to
# TADAM's learned logit scale.
SCREEN = [{"distance": "euclidean"}, {"logit_scale": "0.1"}, {"learn_logit_scale": "true"},
          {"batch_norm": "split"}, {"input_norm": "unit"}]


if __name__ == "__main__":
    main()
