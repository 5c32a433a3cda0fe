"""Decode once: reading a 60,000-image 84x84 JPEG tree by decoding it, against loading its cache.

    python -m benchmarks.decode_cache [--classes 100 --per-class 600]

Generates the tree (train/val/test class folders, like Mini-ImageNet), then times
`fsl.data.readers.read` cold (decode every JPEG in parallel and write the cache) and warm
(memory-map the cache), each in a fresh process. `*_s` times the read itself (after Python
has imported torch, ~1 s either way); `*_process_s` times the whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench import make_tree

READ = ("import sys, time; from fsl.data.readers import read; t = time.perf_counter(); "
        "d = read(sys.argv[1]); n = sum(s.images.shape[0] for s in d.splits.values()); "
        "x = d.split('train').images[::997].sum().item(); "  # touch pages so the mmap is really read
        "print(n, time.perf_counter() - t)")


def timed_read(tree: Path, env: dict) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", READ, str(tree)], env=env, capture_output=True, text=True, check=True)
    images, inner = out.stdout.split()
    return int(images), float(inner), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=100, help="classes in all (64/16/20 split)")
    parser.add_argument("--per-class", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=None, help="reuse a generated tree")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fsl-decode-"))
    t0 = time.perf_counter()
    train = args.classes * 64 // 100
    tree = args.tree or make_tree(work / "tree", train, args.per_class, 84, eval_per_class=args.per_class)
    generated = time.perf_counter() - t0
    env = os.environ | {"FSL_CACHE_DIR": str(work / "cache")}
    images, cold_inner, cold = timed_read(tree, env)
    warm = [timed_read(tree, env) for _ in range(args.repeats)]
    warm_inner = sorted(w[1] for w in warm)[len(warm) // 2]
    warm_total = sorted(w[2] for w in warm)[len(warm) // 2]
    result = {"images": images, "generate_s": generated, "cold_decode_s": cold_inner, "cold_process_s": cold,
              "warm_load_s_median": warm_inner, "warm_process_s_median": warm_total,
              "speedup_load": cold_inner / warm_inner, "speedup_process": cold / warm_total, "cores": os.cpu_count()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
