"""A component with a setting of its own costs one file and one registration line, checked
mechanically: a copy of the package gets a new hallucinator (setting `mix_noise`) and a new data
reader (setting `images_key`), one file and one line in fsl/components.py each, and nothing else.
Through that copy: the CLI takes the settings, a sweep grids over one, MLproject needs no change,
the run identity of an earlier run holds, and a saved model reloads with its setting."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HALLUCINATOR_FILE = '''"""Hallucinates the class mean plus scaled noise: a hallucinator with a setting of its own."""

from typing import Annotated

import torch
from torch import nn

from fsl.models.hallucinator import Hallucinator
from fsl.settings import Setting


class MixedNoise(Hallucinator):
    def __init__(self, feature_dim: int, *,
                 mix_noise: Annotated[float, Setting("Scale of the noise around the class mean.", low=0.0)] = 0.1):
        super().__init__()
        self.mix_noise = mix_noise
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, seeds, noise, class_means):
        return class_means + self.mix_noise * self.gain * noise
'''

READER_FILE = '''"""train/val/test .npz files whose image array is named by a setting of the reader."""

from pathlib import Path
from typing import Annotated

from fsl.data.readers import ArrayReader
from fsl.settings import Setting


class KeyedNpz(ArrayReader):
    def __init__(self, *, images_key: Annotated[str, Setting("The image array of each .npz file.")] = "images"):
        self.images_key = images_key

    def detects(self, root: Path) -> bool:
        return root.is_dir() and all((root / f"{split}.npz").is_file() for split in ("train", "val", "test"))

    def arrays(self, root: Path):
        import numpy as np

        out = {}
        for split in ("train", "val", "test"):
            with np.load(root / f"{split}.npz") as arrays:
                out[split] = (arrays[self.images_key], [str(name) for name in arrays["labels"]])
        return out
'''

LINES = ['HALLUCINATORS.register("mixed-noise", "fsl.models.mixed_noise:MixedNoise")\n',
         'READERS.register("npz-keyed", "fsl.data.npz_keyed:KeyedNpz")\n']

# Runs in a process whose `fsl` is the copy; prints one JSON line of what it saw.
DRIVER = '''
import json, sys
from pathlib import Path
import numpy as np
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from fsl.cli import cli

TINY = %(tiny)s
out = {}

def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output

def runs():
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])

# the CLI takes the setting; the run logs it; the saved model rebuilds with it
invoke("hallucinate", *TINY, "--hallucinator", "mixed-noise", "--hallucinator-arg", "mix_noise=0.3", "-M", "3")
[run] = runs()
out["param"] = run.data.params.get("hallucinator.mix_noise")
from fsl.commands.inputs import load_model
model = load_model(f"runs:/{run.info.run_id}")
out["reloaded"] = [type(model.hallucinator).__name__, model.hallucinator.mix_noise, model.config["hallucinator_args"]]
out["help"] = "mix_noise" in invoke("components", "hallucinator")
# a sweep over the setting: the M = 0 points are one ProtoNet
invoke("sweep", *TINY, "--method", "hallucinate", "--hallucinator", "mixed-noise", "--param", "M=0,3",
       "--param", "hallucinator.mix_noise=0.1,0.3", "--experiment", "sweep")
children = [r for r in runs() if r.data.tags.get("mlflow.parentRunId")]
out["children"] = sorted(r.info.run_name for r in children)
# the run identity: an earlier run's command line keeps its hash; the new setting at its default adds nothing
sys.path.insert(0, %(root)r)
from tests.fixtures.make_hashes import identity
out["wang_hash"] = identity(%(wang)r)["config_hash"]
base = ["hallucinate", "--image-size", "16", "--precision", "fp32", "--device", "cpu", "--hallucinator", "mixed-noise"]
def hashed(*extra):
    return identity(base + list(extra))["config_hash"]
out["default_same"] = hashed() == hashed("--hallucinator-arg", "mix_noise=0.1")
out["other_differs"] = hashed() != hashed("--hallucinator-arg", "mix_noise=0.2")
# MLproject: the generated file is the committed one (nothing to add for a new component)
from fsl.project_file import project_file
out["mlproject_same"] = project_file() == Path("MLproject").read_text()
# the reader: its option reaches it, enters the fingerprint, and a run trains on it
root = Path("npz")
root.mkdir()
rng = np.random.default_rng(0)
for split, classes in (("train", 6), ("val", 5), ("test", 5)):
    names = np.array([f"{split}{c}" for c in range(classes) for _ in range(4)])
    pixels = rng.integers(0, 256, (classes * 4, 24, 24, 3), dtype=np.uint8)
    np.savez(root / f"{split}.npz", images=pixels // 2, pixels=pixels, labels=names)
from fsl.data import load_dataset
one = load_dataset("npz", fmt="npz-keyed", format_args={"images_key": "pixels"})
two = load_dataset("npz", fmt="npz-keyed")
out["fingerprints_differ"] = one.fingerprint != two.fingerprint
out["pixels_read"] = int(one.split("train").images.max()) > int(two.split("train").images.max())
invoke("protonet", *TINY, "--data", "npz", "--format", "npz-keyed", "--format-arg", "images_key=pixels",
       "--test-ways", "5", "--experiment", "npz")
out["npz_run"] = [r.data.params["format"] for r in runs() if r.data.params.get("format") == "npz-keyed"]
print(json.dumps(out))
'''


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_a_hallucinator_and_a_reader_with_settings_are_one_file_and_one_line_each(tmp_path, migrated_db):
    from tests.conftest import TINY

    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "fsl", copy / "fsl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "MLproject", copy / "MLproject")
    before = tree_digest(copy)
    (copy / "fsl" / "models" / "mixed_noise.py").write_text(HALLUCINATOR_FILE)
    (copy / "fsl" / "data" / "npz_keyed.py").write_text(READER_FILE)
    with (copy / "fsl" / "components.py").open("a") as f:
        f.writelines(LINES)
    after = tree_digest(copy)
    assert sorted(set(after) - set(before)) == ["fsl/data/npz_keyed.py", "fsl/models/mixed_noise.py"]
    assert [name for name in before if before[name] != after[name]] == ["fsl/components.py"]
    original = (ROOT / "fsl" / "components.py").read_text()
    assert (copy / "fsl" / "components.py").read_text() == original + "".join(LINES)

    from tests.fixtures.make_hashes import as_recorded

    hashes = json.loads((ROOT / "tests" / "fixtures" / "hashes-e9d6a4a.json").read_text())["runs"]
    driver = DRIVER % {"tiny": TINY, "root": str(ROOT), "wang": as_recorded(hashes["wang"]["args"])}
    shutil.copy(migrated_db, copy / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "PYTHONPATH": str(copy), "MLFLOW_TRACKING_URI": f"sqlite:///{copy / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-c", driver], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["param"] == "0.3" and seen["help"]
    assert seen["reloaded"] == ["MixedNoise", 0.3, {"mix_noise": 0.3}]
    assert seen["children"] == ["hallucinate-mixed-noise-M=3,hallucinator.mix_noise=0.1",
                                "hallucinate-mixed-noise-M=3,hallucinator.mix_noise=0.3", "protonet-M=0"]
    assert seen["wang_hash"] == hashes["wang"]["config_hash"]
    assert seen["default_same"] and seen["other_differs"] and seen["mlproject_same"]
    assert seen["fingerprints_differ"] and seen["pixels_read"] and seen["npz_run"] == ["npz-keyed"]
