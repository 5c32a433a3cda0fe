"""What fsl 0.1.0 saved must still load: a checkpoint, a registered PyTorch model and a serving
model, written by that version (tests/fixtures/saved-by-fsl-0.1.0.zip: a Wang hallucination
model at 16 px, and the features it gave for four test images)."""

import base64
import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

FIXTURE = Path(__file__).parent / "fixtures" / "saved-by-fsl-0.1.0.zip"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved")
    with zipfile.ZipFile(FIXTURE) as archive:
        archive.extractall(folder)
    return folder


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
    assert model.config["encoder_width"] == 1.0 and model.config["feature_transform"] == "none"
    assert not model.needs_base_mean
    assert torch.allclose(model.eval().embed(images), torch.load(saved / "features.pt"), atol=1e-5)
    from fsl.models.classifier import load_checkpoint

    prediction = model.classify(images[:2], ["a", "b"], images)
    same = load_checkpoint(saved / "checkpoint.pt").classify(images[:2], ["a", "b"], images)
    assert prediction.probs.shape == (4, 2) and torch.allclose(prediction.probs, same.probs, atol=1e-5)


def test_a_serving_model_of_0_1_0_loads_and_answers(saved, images):
    import mlflow.pyfunc

    def png(image: torch.Tensor) -> str:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    frame = pd.DataFrame({"role": ["support", "support", "query"], "label": ["a", "b", ""],
                          "image": [png(images[0]), png(images[1]), png(images[0])]})
    out = mlflow.pyfunc.load_model(str(saved / "serve")).predict(frame)
    assert list(out["label"]) == ["a"]
