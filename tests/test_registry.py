"""Model registry: champion rule, loading by alias without the repository, predict and serve."""

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from fsl.cli import cli
from fsl.processes import free_port
from tests.conftest import TINY, tracking_store

TRAIN = [a for a in TINY if a != "--no-register"] + ["--val-episodes", "8"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory, migrated_db):
    """One tracking store for the module: three finished runs with distinct val accuracies."""
    folder = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp, tracking_store(folder, migrated_db, mp) as uri:
        runs = {}
        for seed in range(6):
            result = CliRunner().invoke(cli, ["protonet", *TRAIN, "--no-register", "--seed", str(seed)],
                                        catch_exceptions=False)
            assert result.exit_code == 0, result.output
            run = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("fsl").experiment_id],
                                             order_by=["attributes.start_time DESC"], max_results=1)[0]
            runs.setdefault(run.data.metrics["best_val_acc"], run.info.run_id)
            if len(runs) == 3:
                break
        assert len(runs) == 3, f"need three distinct val accuracies, got {sorted(runs)}"
        yield folder, uri, [runs[v] for v in sorted(runs)]  # worst, middle, best


def versions(name):
    return {v.version: v for v in MlflowClient().search_model_versions(f"name='{name}'")}


@pytest.fixture(scope="module")
def registered(store):
    """Register the middle run, then the worst, then the best: the champion rule's three cases."""
    folder, uri, (worst, middle, best) = store
    outputs = {}
    for label, run_id in (("middle", middle), ("worst", worst), ("best", best)):
        result = CliRunner().invoke(cli, ["register", "--run-id", run_id], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[label] = result.output
    return store, outputs


def test_the_champion_moves_only_to_a_better_version_under_the_same_protocol(registered):
    (folder, uri, runs), outputs = registered
    client = MlflowClient(uri)
    v1, v2, v3 = (client.get_model_version("fsl-protonet", str(v)) for v in (1, 2, 3))
    assert v1.tags["fsl.champion"] == "true" and "first version" in v1.tags["fsl.decision"]
    # the worse run: registered as version 2, the champion stays on 1, and the tags say why
    assert "does not beat the champion" in outputs["worst"]
    assert v2.tags["fsl.champion"] == "false" and "does not beat" in v2.tags["fsl.decision"]
    assert float(v2.tags["fsl.previous_champion_val_acc"]) == pytest.approx(float(v1.tags["fsl.val_acc"]))
    assert float(v2.tags["fsl.val_acc"]) < float(v1.tags["fsl.val_acc"])
    assert v2.tags["fsl.previous_champion_version"] == "1"
    # the better run: champion moves to 3, on the PyTorch and the serving model together
    assert "beats the champion" in v3.tags["fsl.decision"] and v3.tags["fsl.previous_champion_version"] == "1"
    assert client.get_model_version_by_alias("fsl-protonet", "champion").version == 3
    assert client.get_model_version_by_alias("fsl-protonet-serve", "champion").version == 3
    # what the runs say of their models, for the results table and the run pages: one champion
    (worst, middle, best) = (client.get_run(r).data.tags for r in runs)
    assert middle["fsl.model"] == "fsl-protonet v1 · champion until v3"
    assert worst["fsl.model"] == "fsl-protonet v2 · not champion" and best["fsl.model"] == "fsl-protonet v3 · champion"
    assert middle["mlflow.note.content"].startswith("test ") and \
        middle["mlflow.note.content"].endswith(" · fsl-protonet v1 · champion until v3")
    mean, ci = client.get_run(runs[2]).data.metrics["test_acc"], client.get_run(runs[2]).data.metrics["test_ci95"]
    assert best["fsl.result"] == f"{mean:.2f} ± {ci:.2f}"


def test_a_different_protocol_leaves_the_champion_alone_and_says_so():
    from fsl.champion import champion_decision

    same = {"ways": 5, "shots": 1, "data_fingerprint": "a"}
    promote, why = champion_decision(99.0, same | {"shots": 5}, {"val_acc": 10.0, "protocol": same})
    assert not promote and "protocol differs" in why and "shots" in why
    assert champion_decision(50.0, same, None)[0]
    assert not champion_decision(50.0, same, {"val_acc": 50.0, "protocol": same})[0]  # a tie does not move it


def test_training_registers_by_default_and_no_register_skips(registered, store):
    folder, uri, _ = store
    before = len(versions("fsl-protonet"))
    result = CliRunner().invoke(cli, ["protonet", *TRAIN, "--registered-model-name", "fsl-custom"],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "registered fsl-custom version 1" in result.output
    assert MlflowClient().get_model_version_by_alias("fsl-custom", "champion").version == 1
    assert len(versions("fsl-protonet")) == before


@pytest.mark.slow
def test_the_champion_loads_in_a_fresh_process_without_the_repository_and_reproduces_its_val_acc(registered, store):
    folder, uri, runs = store
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("fsl-protonet", "champion")
    run = client.get_run(champion.run_id)
    script = f"""
import json, sys
sys.path = [p for p in sys.path if p not in ('', {str(REPO)!r})]
sys.meta_path = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '').lower()]
try:
    import fsl
    raise SystemExit('the repository is importable: ' + fsl.__file__)
except ModuleNotFoundError:
    pass
import mlflow.pytorch
model = mlflow.pytorch.load_model('models:/fsl-protonet@champion')
import fsl
from fsl.data import load_dataset
from fsl.data.episodes import EpisodeShape
from fsl.evaluate import evaluate, sample_episodes
store = load_dataset('synthetic', image_size=16).split('val')
shape = EpisodeShape({run.data.params['test_ways']}, {run.data.params['test_shots']}, {run.data.params['test_queries']})
episodes = sample_episodes(store, shape, {run.data.params['val_episodes']}, {run.data.params['val_seed']}, 'val')
print(json.dumps({{'acc': evaluate(model, store, episodes).mean, 'fsl': fsl.__file__,
                  'classify': callable(model.classify)}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": uri}
    out = subprocess.run([sys.executable, "-c", script], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["fsl"].startswith(str(REPO))  # the code came with the model
    assert result["classify"]
    assert result["acc"] == pytest.approx(run.data.metrics["best_val_acc"], abs=1e-9)


def png_folder(root: Path, tiny_dataset, classes=(0, 1, 2), per_class=2, queries=4) -> tuple[Path, Path]:
    test = tiny_dataset.split("test")
    for c in classes:
        rows = (test.labels == c).nonzero().flatten()
        folder = root / "support" / test.class_names[c]
        folder.mkdir(parents=True)
        for i in rows[:per_class].tolist():
            Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).resize((40, 40)).save(folder / f"{i}.png")
        (root / "query").mkdir(exist_ok=True)
        for i in rows[per_class:per_class + queries].tolist():
            Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(root / "query" / f"{c}_{i}.png")
    return root / "support", root / "query"


def test_predict_classifies_a_folder_of_pngs_and_writes_csv(registered, store, tmp_path, tiny_dataset):
    support, query = png_folder(tmp_path, tiny_dataset)
    result = CliRunner().invoke(cli, ["predict", "--model", "models:/fsl-protonet@champion", "--support",
                                      str(support), "--query", str(query), "--out", str(tmp_path / "p.csv")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "query,predicted,probability" and len(rows) == 1 + 12
    names = set(tiny_dataset.split("test").class_names[:3])
    assert all(r.split(",")[1] in names and 0 < float(r.split(",")[2]) <= 1 for r in rows[1:])


def encode(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def request_frame(tiny_dataset):
    import pandas as pd

    test = tiny_dataset.split("test")
    rows = []
    for c in range(3):
        idx = (test.labels == c).nonzero().flatten().tolist()
        image = encode(test.images[idx[0]].permute(1, 2, 0).numpy())
        rows.append({"role": "support", "label": f"class-{c}", "image": image})
        rows.append({"role": "query", "label": "", "image": encode(test.images[idx[1]].permute(1, 2, 0).numpy())})
    return pd.DataFrame(rows)


def test_the_serving_pyfunc_predicts_labels_for_base64_images(registered, store, tiny_dataset):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model("models:/fsl-protonet-serve@champion")
    out = model.predict(request_frame(tiny_dataset))
    assert list(out.columns) == ["query", "label", "probability"] and len(out) == 3
    assert set(out["label"]) <= {"class-0", "class-1", "class-2"}
    again = model.predict(request_frame(tiny_dataset))
    assert out.equals(again)


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_json_request(registered, store, tiny_dataset):
    folder, uri, _ = store
    port = free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", "models:/fsl-protonet-serve@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        frame = request_frame(tiny_dataset)
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode()
        deadline, answer = time.monotonic() + 90, None
        while time.monotonic() < deadline and answer is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(req, timeout=10).read())
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        assert answer is not None, "the server did not answer within 90 s"
        predictions = answer["predictions"]
        assert len(predictions) == 3 and {p["label"] for p in predictions} <= {"class-0", "class-1", "class-2"}
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.slow
def test_mlflow_models_serve_answers_each_bad_request_with_a_400_naming_the_row(registered, store, tiny_dataset,
                                                                              tmp_path):
    """A real `mlflow models serve`, with pickle deserialisation disabled, and a real HTTP client:
    each bad request is a 400 whose body names the row and the field and holds no stack trace; a
    decompression bomb is refused from its header within a second."""
    import urllib.error

    from tests.test_bad_inputs import bomb_png

    folder, uri, _ = store
    port = free_port()
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", "models:/fsl-protonet-serve@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=folder, env=os.environ | {"MLFLOW_TRACKING_URI": uri,
                                                           # models-from-code: no pickle to allow
                                                           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def post(frame) -> tuple[int, dict, float]:
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read()), time.monotonic() - started
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), time.monotonic() - started

    good = request_frame(tiny_dataset)
    bomb = base64.b64encode(bomb_png(tmp_path / "bomb.png", side=9400).read_bytes()).decode()
    cases = {
        "role": (good.assign(role=["SUPPORT", "query", "support", "Query", "suport", "query"]),
                 "row 4, field 'role': 'suport' is not 'support' or 'query'"),
        "label": (good.assign(label=["class-0", "", None, "", "class-2", ""]),
                  "row 2, field 'label': a support row needs a non-empty string label"),
        "no query": (good[good["role"] == "support"], "at least one row with role 'support'"),
        "bomb": (good.assign(image=[*good["image"][:5], bomb]), "row 5, field 'image': 9400x9400 pixels"),
    }
    try:
        deadline = time.monotonic() + 90
        while True:  # the server is up once it answers a good request
            try:
                status, answer, _ = post(good)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        assert status == 200 and len(answer["predictions"]) == 3
        # upper-case and padded roles are roles: nothing is dropped
        status, answer, _ = post(good.assign(role=[" SUPPORT", "Query", "support ", "QUERY", "Support", "query"]))
        assert status == 200 and len(answer["predictions"]) == 3
        for name, (frame, needle) in cases.items():
            status, answer, seconds = post(frame)
            assert status == 400, (name, answer)
            assert needle in answer["message"], (name, answer["message"][-500:])
            assert answer["error_code"] == "INVALID_PARAMETER_VALUE", name
            assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer), name
            assert seconds < 5, (name, seconds)  # the bomb: refused from its header, not decoded
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_a_support_folder_without_class_folders_is_reported(registered, store, tmp_path, tiny_dataset):
    support, query = png_folder(tmp_path, tiny_dataset)
    result = CliRunner().invoke(cli, ["predict", "--model", "models:/fsl-protonet@champion",
                                      "--support", str(query), "--query", str(query)])
    assert result.exit_code == 2 and "needs one sub-folder of images per class" in result.output


def test_an_image_that_does_not_decode_is_named(registered, store, tmp_path, tiny_dataset):
    support, query = png_folder(tmp_path, tiny_dataset)
    (query / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(cli, ["predict", "--model", "models:/fsl-protonet@champion",
                                      "--support", str(support), "--query", str(query)])
    assert result.exit_code == 1 and "broken.png" in result.output


def test_classify_refuses_images_with_a_channel_count_the_model_cannot_take(trained_checkpoint):
    import torch

    from fsl.models.classifier import load_checkpoint

    model = load_checkpoint(trained_checkpoint)
    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="takes 3-channel images, got 2"):
        model.classify(images, ["a", "b"], torch.zeros(1, 2, 16, 16, dtype=torch.uint8))
    prediction = model.classify(images, ["a", "b"], images[:1, :1])  # grey is a valid RGB image
    assert prediction.probs.shape == (1, 2)


def test_a_failed_run_registers_nothing(tracking):
    result = CliRunner().invoke(cli, ["protonet", *TRAIN, "--lr", "1e30", "--distance", "dot",
                                      "--registered-model-name", "fsl-never"])
    assert result.exit_code != 0
    assert MlflowClient().search_registered_models(filter_string="name = 'fsl-never'") == []


class _Payload:
    """Unpickling this writes `marker`: the proof that a pickle ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("the registered pickle ran",))


def version_experiment(client, version) -> str:
    return client.get_run(version.run_id).info.experiment_id


@pytest.mark.slow
def test_fsl_commands_never_run_a_registered_models_pickle_or_its_code_folder(tracking, tmp_path, tiny_dataset):
    """The registered model's data/model.pth is replaced by a payload and a module is planted in
    its code/ folder: evaluate, predict and --init of models:/ URIs still work (from the run's
    weights-only checkpoint) and run neither; a version whose checkpoint is gone is refused."""
    import torch

    invoke = CliRunner().invoke
    assert invoke(cli, ["protonet", *TRAIN], catch_exceptions=False).exit_code == 0
    client = MlflowClient()
    version = client.get_model_version_by_alias("fsl-protonet", "champion")
    model_id = version.source.removeprefix("models:/")
    folder = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    marker, planted = tmp_path / "pickle-ran", tmp_path / "code-ran"
    torch.save(_Payload(str(marker)), folder / "data" / "model.pth")
    code = folder / "code"  # MLflow puts this first on sys.path when it loads the model
    (code / "sitecustomize.py").write_text(f"open({str(planted)!r}, 'w').write('planted code ran')\n")
    init = code / "fsl" / "__init__.py"
    init.write_text(f"open({str(planted)!r}, 'w').write('planted code ran')\n" + init.read_text())
    support, query = png_folder(tmp_path, tiny_dataset)
    for uri in ("models:/fsl-protonet@champion", f"models:/fsl-protonet/{version.version}",
                f"models:/{model_id}", "models:/fsl-protonet/latest"):
        evaluated = invoke(cli, ["evaluate", "--model", uri, "--image-size", "16", "--test-episodes", "3"])
        assert evaluated.exit_code == 0, evaluated.output
        lines = [line for line in evaluated.output.splitlines() if line.strip()]  # tqdm may end in blank lines
        assert any(line.split("\r")[-1].startswith("test (") for line in lines[-3:]), lines[-3:]
        evaluation = client.search_runs([version_experiment(client, version)], order_by=["attributes.start_time DESC"],
                                        max_results=1)[0]
        assert evaluation.info.run_name.startswith("evaluate-")  # the newest run is this evaluation, which
        assert evaluation.data.params["model_run_id"] == version.run_id  # recorded the run that trained it
        predicted = invoke(cli, ["predict", "--model", uri, "--support", str(support), "--query", str(query)])
        assert predicted.exit_code == 0, predicted.output
    tuned = invoke(cli, ["protonet", *TINY, "--init", "models:/fsl-protonet@champion"])
    assert tuned.exit_code == 0, tuned.output
    assert not marker.exists() and not planted.exists()
    # the same pickle does run under mlflow.pytorch.load_model: the payload is live, the test is real
    import mlflow.pytorch

    with pytest.raises(Exception):
        mlflow.pytorch.load_model("models:/fsl-protonet@champion")
    assert marker.exists()
    # a version whose run lost its checkpoint is refused, naming the version; no fallback to the pickle
    marker.unlink()
    run_artifacts = Path(client.get_run(version.run_id).info.artifact_uri.removeprefix("file://"))
    (run_artifacts / "checkpoints" / "best.pt").unlink()
    gone = invoke(cli, ["evaluate", "--model", "models:/fsl-protonet@champion", "--image-size", "16"])
    assert gone.exit_code == 2 and f"version {version.version} of fsl-protonet" in gone.output
    assert "never falls back" in gone.output and not marker.exists()
