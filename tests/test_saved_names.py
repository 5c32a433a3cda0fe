"""What fsl 0.1.0 saved must still load: a checkpoint, a registered PyTorch model and a serving
model, written by that version (tests/fixtures/saved-by-fsl-0.1.0.zip: a Wang hallucination
model at 16 px, and the features it gave for four test images), and what this release saves
(tests/fixtures/saved-by-fsl-8eb3b68.zip, made by tests/fixtures/make_saved.py: a calibrated model
with centred, normalised test features)."""

import base64
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

FIXTURE = Path(__file__).parent / "fixtures" / "saved-by-fsl-0.1.0.zip"


def png(image: torch.Tensor) -> str:
    """A uint8 [C, H, W] image as base64 PNG, as a serving request carries it."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def extracted(tmp_path_factory, archive_path: Path) -> Path:
    folder = tmp_path_factory.mktemp(archive_path.stem)
    with zipfile.ZipFile(archive_path) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return extracted(tmp_path_factory, FIXTURE)


@pytest.fixture(scope="module")
def images(tiny_dataset) -> torch.Tensor:
    return tiny_dataset.split("test").images[:4]


def test_a_checkpoint_of_0_1_0_loads_and_gives_the_same_features(saved, images):
    from fsl.models.classifier import load_checkpoint

    model = load_checkpoint(saved / "checkpoint.pt").eval()
    assert model.config["hallucinator"] == "wang" and model.M == 5
    assert torch.allclose(model.embed(images), torch.load(saved / "features.pt"), atol=1e-5)


def test_a_registered_model_of_0_1_0_loads_with_mlflow_and_classifies(saved, images):
    import mlflow.pytorch

    from fsl.models.classifier import FewShotClassifier

    model = mlflow.pytorch.load_model(str(saved / "model"))
    assert isinstance(model, FewShotClassifier)
    # its pickle skips __init__: the config keys added since get the values that reproduce it
    assert model.config["encoder_args"] == {"width": 1.0} and model.config["feature_transform"] == "none"
    assert not model.needs_base_mean
    assert torch.allclose(model.eval().embed(images), torch.load(saved / "features.pt"), atol=1e-5)
    from fsl.models.classifier import load_checkpoint

    prediction = model.classify(images[:2], ["a", "b"], images)
    same = load_checkpoint(saved / "checkpoint.pt").classify(images[:2], ["a", "b"], images)
    assert prediction.probs.shape == (4, 2) and torch.allclose(prediction.probs, same.probs, atol=1e-5)


def test_a_serving_model_of_0_1_0_loads_and_answers(saved, images):
    import mlflow.pyfunc

    frame = pd.DataFrame({"role": ["support", "support", "query"], "label": ["a", "b", ""],
                          "image": [png(images[0]), png(images[1]), png(images[0])]})
    out = mlflow.pyfunc.load_model(str(saved / "serve")).predict(frame)
    assert list(out["label"]) == ["a"]


# ------------------------------------------- what this release saves (tests/fixtures/make_saved.py)
TODAY = Path(__file__).parent / "fixtures" / "saved-by-fsl-8eb3b68.zip"


@pytest.fixture(scope="module")
def saved_today(tmp_path_factory) -> Path:
    return extracted(tmp_path_factory, TODAY)


def test_a_checkpoint_of_8eb3b68_with_its_base_mean_loads_and_gives_the_same_features(saved_today, images):
    from fsl.models.classifier import load_checkpoint

    model = load_checkpoint(saved_today / "checkpoint.pt").eval()
    assert model.config["hallucinator"] == "calibrated" and model.M == 5
    assert model.config["feature_transform"] == "cl2n" and model.needs_base_mean
    assert model.base_mean.abs().sum() > 0  # the base-class mean of the final encoder, not zeros
    assert torch.allclose(model.embed(images), torch.load(saved_today / "features.pt"), atol=1e-5)


def test_a_registered_model_of_8eb3b68_loads_with_mlflow_and_classifies_as_its_checkpoint(saved_today, images):
    import mlflow.pytorch

    from fsl.models.classifier import load_checkpoint

    model = mlflow.pytorch.load_model(str(saved_today / "model")).eval()
    checkpoint = load_checkpoint(saved_today / "checkpoint.pt").eval()
    assert torch.equal(model.base_mean, checkpoint.base_mean)
    prediction = model.classify(images[:2], ["a", "b"], images)
    same = checkpoint.classify(images[:2], ["a", "b"], images)
    assert prediction.probs.shape == (4, 2) and torch.allclose(prediction.probs, same.probs, atol=1e-5)


def test_a_serving_model_of_8eb3b68_loads_as_code_and_answers(saved_today, images):
    import mlflow.pyfunc

    assert not (saved_today / "serve" / "python_model.pkl").exists()  # models-from-code: no pickle
    frame = pd.DataFrame({"role": ["support", "support", "query"], "label": ["a", "b", ""],
                          "image": [png(images[0]), png(images[1]), png(images[0])]})
    out = mlflow.pyfunc.load_model(str(saved_today / "serve")).predict(frame)
    assert list(out["label"]) == ["a"]


# ------------------- made just before settings became per-component (e9d6a4a): identities and a model
HASHES = Path(__file__).parent / "fixtures" / "hashes-e9d6a4a.json"
IMPROVED = Path(__file__).parent / "fixtures" / "saved-by-fsl-e9d6a4a-improved.zip"


@pytest.mark.parametrize("name", sorted(json.loads(HASHES.read_text())["runs"]))
def test_a_command_line_of_e9d6a4a_keeps_its_run_identity(name, fsl_cache):
    """The same command line, and its spelling with today's per-component settings, give the config
    hash the run got before (so `--resume` and sweep reuse find it), and no option differs."""
    from fsl.commands.run_identity import differences
    from tests.fixtures.make_hashes import as_recorded, identity

    recorded = json.loads(HASHES.read_text())["runs"][name]
    now = identity(as_recorded(recorded["args"]))
    assert now["config_hash"] == recorded["config_hash"], (now["params"], recorded["params"])
    assert differences(recorded["params"], now["params"]).startswith("its configuration differs")
    # today's default distance (euclidean, issue 32) is another run than the recorded one
    # (`fsl pretrain` trains no episode and keeps the old distance)
    assert (identity(recorded["args"])["config_hash"] == recorded["config_hash"]) == (name == "pretrain")
    respelled = [{"--encoder-width": "--encoder-arg", "--diversity-weight": "--hallucinator-arg"}.get(a, a)
                 for a in as_recorded(recorded["args"])]
    respelled = [f"width={v}" if prev == "--encoder-arg" else f"diversity_weight={v}" if prev == "--hallucinator-arg"
                 else v for prev, v in zip(["", *respelled], respelled)]
    assert identity(respelled)["config_hash"] == recorded["config_hash"], respelled


@pytest.fixture(scope="module")
def saved_improved(tmp_path_factory) -> Path:
    return extracted(tmp_path_factory, IMPROVED)


def test_an_improved_model_of_e9d6a4a_loads_with_its_settings(saved_improved, images):
    import mlflow.pytorch

    from fsl.models.classifier import load_checkpoint

    checkpoint = load_checkpoint(saved_improved / "checkpoint.pt").eval()
    assert checkpoint.config["encoder_args"] == {"width": 0.5} and checkpoint.encoder.width == 0.5
    assert checkpoint.config["hallucinator_args"] == {"dropout": 0.1, "initial_mix": 0.1, "diversity_weight": 0.1}
    pickled = mlflow.pytorch.load_model(str(saved_improved / "model")).eval()
    assert pickled.hallucinator.diversity_weight == 0.3  # trained with it: the pickle kept the attribute
    assert pickled.config["encoder_args"] == {"width": 0.5}
    prediction = pickled.classify(images[:2], ["a", "b"], images)
    assert torch.allclose(prediction.probs, checkpoint.classify(images[:2], ["a", "b"], images).probs, atol=1e-5)
    assert torch.allclose(checkpoint.embed(images), torch.load(saved_improved / "features.pt"), atol=1e-5)
