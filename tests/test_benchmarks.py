"""Smoke tests of the benchmark scripts at a tiny size: they run and report both paths."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_speed_benchmark_runs_both_paths_at_a_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--tiny", "--workers", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("5way", "30way"):
        row = result["train"][key]
        assert row["product"]["median"] > 0 and row["reference"]["median"] > 0 and row["ratio"] > 0
    assert result["eval"]["5way"]["ratio"] > 0 and result["floor"]["matmul_tflops"] > 0
    assert set(result["first_episode_s"]) == {"product_cold", "product_warm", "reference"}
    assert "train 30-way 1-shot (episodes/s)" in done.stdout
