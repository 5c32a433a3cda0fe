"""DDP scaling on one machine: episodes per second with 1 and with N torchrun processes (gloo).

    python -m benchmarks.ddp_scaling [--processes 2] [--steps 200]

Each configuration trains `--steps` optimiser steps of 5-way 1-shot (15 queries) on the built-in
data with `fsl protonet`; N processes take N episodes per step. The figure is training episodes
per second from the run's `epoch_seconds` (validation: 10 episodes, included), median of epochs
2..E (epoch 1 warms up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fsl.processes import free_port


def measure(processes: int, steps: int, epochs: int, work: Path) -> dict:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{work / f'ddp{processes}.db'}"
    args = ["protonet", "--epochs", str(epochs), "--episodes-per-epoch", str(steps), "--val-episodes", "10",
            "--test-episodes", "10", "--no-register", "--experiment", f"ddp{processes}"]
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "GLOO_SOCKET_IFNAME": "lo",
                        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    launcher = [sys.executable, "-m", "fsl"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
        "127.0.0.1", "--master_port", str(free_port()), "-m", "fsl"]
    subprocess.run(launcher + args, env=env, check=True, capture_output=True, cwd=work)
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name(f"ddp{processes}").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "epoch_seconds")
    seconds = [m.value for m in sorted(history, key=lambda m: m.step)]
    per_epoch = statistics.median(seconds[1:] or seconds)
    return {"processes": processes, "threads_per_process": int(env["OMP_NUM_THREADS"]),
            "epoch_seconds": seconds, "episodes_per_s": processes * steps / per_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fsl-ddp-"))
    one = measure(1, args.steps, args.epochs, work)
    many = measure(args.processes, args.steps, args.epochs, work)
    print(json.dumps({"single": one, "ddp": many, "speedup": many["episodes_per_s"] / one["episodes_per_s"],
                      "cores": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
