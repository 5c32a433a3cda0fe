"""Large evaluations (issue 36): `fsl evaluate` of an episode file and of sampled episodes, this
code against another checkout (54a2c1a, before evaluation streamed) in the same run, with each
process's wall time and peak RSS.

    git worktree add /tmp/old54 54a2c1a
    python -m benchmarks.streaming prepare --out /tmp/stream
    python -m benchmarks.streaming compare --out /tmp/stream --old /tmp/old54 > benchmarks/results/streaming_cpu4.json
    python -m benchmarks.streaming large --out /tmp/stream --episodes 100000 >> ...

prepare: the built-in test split written as PNG files (`test/<class>/<n>.png`, 32 px: 20 classes x 60),
a 32 px and an 84 px model (untrained, seeded: the work does not depend on the weights), and
episode files of 5-way 1-shot 15-query episodes of those files (`fsl episodes`).
compare: each command once per checkout, alternating, after one untimed warm-up of each.
large: this checkout alone on the large file, and a 600-episode evaluation as the memory baseline;
with --screenshot, the run page of the large evaluation in headless Chromium (does it open with
its per-episode series?).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measured(args: list[str], checkout: Path, cwd: Path, store: Path | None = None) -> dict:
    """Wall seconds and peak RSS (GiB, sampled every 20 ms) of `python -m fsl <args>` run from
    `checkout`, in a fresh tracking store, or in `store` (a SQLite file made already: a user's
    store, whose schema exists); its last lines."""
    import psutil

    store = store or Path(tempfile.mkdtemp(dir=cwd)) / "m.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "PYTHONPATH": str(checkout), "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
        "FSL_CACHE_DIR": str(cwd / f"cache-{checkout.name}")}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "fsl", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        handle = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                peak[0] = max(peak[0], handle.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out = process.communicate()[0]
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} ({checkout}) failed:\n{out[-3000:]}")
    lines = [line for line in out.splitlines() if line.startswith(("test (", "run "))]
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_gib": round(peak[0] / 2**30, 3),
            "lines": lines}


def prepare(out: Path) -> None:
    import torch
    from PIL import Image

    from fsl.config import TrainConfig
    from fsl.data import load_dataset
    from fsl.models.classifier import build_model

    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("synthetic", image_size=32)
    store = data.split("test")
    for row in range(len(store.images)):
        path = out / "tree" / "test" / store.class_names[int(store.labels[row])] / f"{row}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(store.images[row].permute(1, 2, 0).numpy()).save(path)
    for size in (32, 84):
        model = build_model(TrainConfig(image_size=size, precision="fp32"), load_dataset("synthetic", size), "cpu")
        torch.save(model.checkpoint(test_seed=2), out / f"model{size}.pt")
    for count in (600, 1000, 100_000):
        subprocess.run([sys.executable, "-m", "fsl", "episodes", "--data", str(out / "tree"), "--split", "test",
                        "-n", str(count), "--ways", "5", "--shots", "1", "--queries", "15", "-o",
                        str(out / f"episodes{count}.csv")], check=True, cwd=out, env=os.environ | {
                            "PYTHONPATH": str(ROOT)})


def compare(out: Path, old: Path, repeats: int = 2, existing_store: bool = False,
            only: str | None = None) -> dict:
    """This checkout against `old`: a 1,000-episode file at 32 px, and 600 sampled episodes at 84 px
    (`only`: one of them). Each run in a fresh tracking store, or with `existing_store` in a store
    made before the first run (one per checkout, as a user evaluates into the store they train in:
    MLflow's ~3 s of creating a schema is then not part of the evaluation)."""
    commands = {
        "file_1000_32px": ["evaluate", "--model", str(out / "model32.pt"), "--data", str(out / "tree"),
                           "--episodes", str(out / "episodes1000.csv")],
        "sampled_600_84px": ["evaluate", "--model", str(out / "model84.pt"), "--image-size", "84",
                             "--test-episodes", "600"],
    }
    result: dict = {"old": str(old), "repeats": repeats, "existing_store": existing_store}
    stores = {label: Path(tempfile.mkdtemp(dir=out)) / "m.db" if existing_store else None for label in ("old", "new")}
    for name, args in commands.items():
        if only and name != only:
            continue
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for round_ in range(repeats + 1):  # round 0: warm-up (decode caches, page cache; makes the stores)
            for label, checkout in (("old", old), ("new", ROOT)):
                measurement = measured(args, checkout, out, stores[label])
                if round_:
                    runs[label].append(measurement)
                else:  # with existing_store, the warm-up is the run that made the store: a fresh-store figure
                    result.setdefault(name + "_warmup", {})[label] = measurement
        result[name] = runs
        seconds = {k: sorted(r["seconds"] for r in v)[len(v) // 2] for k, v in runs.items()}
        result[name + "_speedup"] = round(seconds["old"] / seconds["new"], 1)
        print(name, seconds, file=sys.stderr, flush=True)
    return result


def large(out: Path, episodes: int, screenshot: bool) -> dict:
    """This checkout on the large file, and on 600 episodes of the same files (the memory baseline)."""
    base = measured(["evaluate", "--model", str(out / "model32.pt"), "--data", str(out / "tree"), "--episodes",
                     str(out / "episodes600.csv")], ROOT, out)
    big = measured(["evaluate", "--model", str(out / "model32.pt"), "--data", str(out / "tree"), "--episodes",
                    str(out / f"episodes{episodes}.csv")], ROOT, out)
    result = {"episodes": episodes, "baseline_600": base, "large": big,
              "rss_above_baseline_gib": round(big["peak_rss_gib"] - base["peak_rss_gib"], 3)}
    if screenshot:
        result["screenshot"] = str(run_page_screenshot(big, out))
    return result


def run_page_screenshot(measurement: dict, out: Path) -> Path:
    """The run page of an evaluation (its link is the command's last line), served by `mlflow ui`."""
    from benchmarks.screenshots import screenshot, serve
    from fsl.processes import free_port

    link = next(line for line in measurement["lines"] if line.startswith("run "))
    store = link.split("--backend-store-uri ")[1].rstrip(")")
    page = link.split(": ", 1)[1].split(" ;")[0]
    port = free_port()
    server = serve(store, out, port)
    try:
        # 10^5 points of test_episode_acc: the page is given 60 s to draw them
        return screenshot(page.replace("127.0.0.1:5000", f"127.0.0.1:{port}"), out / "large_run_page.png",
                          wait_ms=60_000)
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["prepare", "compare", "large"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/stream"))
    parser.add_argument("--old", type=Path)
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--screenshot", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="compare: timed runs of each, after a warm-up")
    parser.add_argument("--existing-store", action="store_true", help="compare: one store per checkout, made by "
                        "the warm-up, instead of a fresh store per run")
    parser.add_argument("--only", choices=["file_1000_32px", "sampled_600_84px"], help="compare: one row")
    args = parser.parse_args()
    if args.what == "prepare":
        prepare(args.out)
    elif args.what == "compare":
        print(json.dumps(compare(args.out, args.old, args.repeats, args.existing_store, args.only), indent=1))
    else:
        print(json.dumps(large(args.out, args.episodes, args.screenshot), indent=1))


if __name__ == "__main__":
    main()
