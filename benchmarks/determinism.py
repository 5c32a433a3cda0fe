"""What `--deterministic` costs: ms per training step with it off and on, side by side.

    python -m benchmarks.determinism [--steps 20] [--repeats 5]

5-way 1-shot 15-query steps at 32x32 on this machine's default device, for ProtoNet and for
Wang's hallucinator at M = 100; median of `repeats` blocks of `steps` steps after a warm-up,
the two settings interleaved block by block so that both see the same machine.
"""

from __future__ import annotations

import argparse
import json
import statistics

from benchmarks.timing import interleaved, training_block
from fsl.config import TrainConfig
from fsl.data import load_dataset
from fsl.models.classifier import build_model
from fsl.runtime import resolve_device, resolve_precision, set_deterministic
from fsl.train import EpisodeTrainer


def main(steps: int = 20, repeats: int = 5) -> dict:
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    data = load_dataset("synthetic", image_size=32)
    store = data.split("train").to(device)
    out = {"device": str(device), "precision": precision}
    for label, kind, m in (("protonet", None, 0), ("wang_M100", "wang", 100)):
        cfg = TrainConfig(hallucinator=kind, M=m, seed=0)
        model = build_model(cfg, data, device, precision)
        trainer = EpisodeTrainer(model, store, cfg, device)
        block = training_block(trainer, steps)
        seconds = interleaved({"off": lambda: (set_deterministic(False), block()),
                               "on": lambda: (set_deterministic(True), block())}, device, repeats)
        set_deterministic(False)
        off, on = (statistics.median(seconds[k]) / steps * 1e3 for k in ("off", "on"))
        out[label] = {"off_ms": off, "on_ms": on, "overhead": on / off - 1}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(main(args.steps, args.repeats), indent=1))
