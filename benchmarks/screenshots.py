"""The README's pictures of the MLflow UI, from real runs, in headless Chromium.

    python -m benchmarks.screenshots [--out docs] [--episodes 100]

Makes, in a temporary store: a registered `fsl protonet` and `fsl hallucinate` (2 epochs of
`--episodes` episodes on the built-in data), a replicated `fsl sweep-m --values 0,10 --seeds
0,1,2`, and an `fsl evaluate --model models:/fsl-hallucinate@champion`. Then serves the store
with `mlflow ui` and saves, each under 200 KB (256-colour PNG): `experiments_list.png` (the
experiments list, with fsl's description of its experiment), `runs_table.png` (the link fsl
prints: the results view), `run_page.png` (the best run), `registered_model.png` (the registry
page of `fsl-hallucinate`), `sweep_parent.png` and `evaluation.png`.

Needs Chromium (Debian: `apt-get install chromium`) and `pip install playwright` (driving the
system's /usr/bin/chromium; no browser download). Not part of the package or its tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fsl.processes import free_port

CHROMIUM = os.environ.get("FSL_CHROMIUM", "/usr/bin/chromium")
MAX_BYTES = 200_000


def fsl(store: str, folder: Path, *args: str) -> None:
    env = os.environ | {"MLFLOW_TRACKING_URI": store, "FSL_CACHE_DIR": str(folder / "cache")}
    subprocess.run([sys.executable, "-m", "fsl", *args], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def make_runs(store: str, folder: Path, episodes: int) -> None:
    short = ["--epochs", "2", "--episodes-per-epoch", str(episodes), "--no-system-metrics"]
    fsl(store, folder, "protonet", *short, "--register")
    fsl(store, folder, "hallucinate", *short, "-M", "10", "--register")
    fsl(store, folder, "sweep-m", *short, "--values", "0,10", "--seeds", "0,1,2")
    fsl(store, folder, "evaluate", "--model", "models:/fsl-hallucinate@champion")


def serve(store: str, folder: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", store, "--port", str(port)], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("mlflow ui did not start")


def pages(store: str, port: int) -> dict[str, str]:
    """Picture name -> UI address, from the runs just made."""
    import mlflow

    client = mlflow.MlflowClient(store)
    [experiment] = [e for e in client.search_experiments() if e.name == "fsl"]
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    parent = next(r for name, r in by_name.items() if name.startswith("sweep-"))
    evaluation = next(r for name, r in by_name.items() if name.startswith("evaluate-"))
    best = max((r for r in runs if "test_acc" in r.data.metrics and not r.data.tags.get("mlflow.parentRunId")
                and not r.info.run_name.startswith(("sweep-", "evaluate-"))), key=lambda r: r.data.metrics["test_acc"])
    root = f"http://127.0.0.1:{port}/#"
    base = f"{root}/experiments/{experiment.experiment_id}/runs"
    view = "workflowType=machine_learning"
    return {"experiments_list": f"{root}/experiments",
            "runs_table": f"{base}?{view}&viewStateShareKey=fsl-results",
            "run_page": f"{base}/{best.info.run_id}?{view}",
            "registered_model": f"{root}/models/fsl-hallucinate",
            "sweep_parent": f"{base}/{parent.info.run_id}?{view}",
            "evaluation": f"{base}/{evaluation.info.run_id}?{view}"}


def screenshot(url: str, out: Path, width: int = 1500, height: int = 820, wait_ms: int = 5000) -> Path:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_timeout(wait_ms)
        close = page.locator('button[aria-label="Close"]')  # the Assistant panel takes a third of the page
        if close.count():
            close.last.click(timeout=2000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out))
        browser.close()
    Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)
    if out.stat().st_size >= MAX_BYTES:
        raise SystemExit(f"{out} is {out.stat().st_size:,} bytes, over {MAX_BYTES:,}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fsl-screenshots-") as tmp:
        folder = Path(tmp)
        store = f"sqlite:///{folder / 'mlflow.db'}"
        make_runs(store, folder, args.episodes)
        port = free_port()
        server = serve(store, folder, port)
        try:
            for name, url in pages(store, port).items():
                print(screenshot(url, args.out / f"{name}.png"))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
