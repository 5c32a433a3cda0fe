"""What a new user meets in the first hour: order-free answers, new test episodes from
`fsl evaluate`, a loadable model from every run, clean provenance from a fresh clone, and a Python
API that is one import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fsl.cli import cli
from fsl.components import HALLUCINATORS
from fsl.config import ModelSpec
from fsl.models.classifier import FewShotClassifier, model_config
from tests.conftest import TINY, all_runs

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def model_with(hallucinator: str | None, M: int = 6) -> FewShotClassifier:
    torch.manual_seed(0)
    spec = ModelSpec(hallucinator=hallucinator, M=M if hallucinator else 0)
    model = FewShotClassifier(model_config(spec, image_size=16, channels=3, mean=[0.5] * 3, std=[0.25] * 3))
    if hallucinator == "calibrated":  # statistics as training leaves them, so the noise matters
        for name, value in (("grand_mean", 0.3), ("within_var", 0.2), ("between_var", 0.05)):
            getattr(model.hallucinator, name).fill_(value)
    return model.eval()


@pytest.mark.parametrize("hallucinator", [None, *sorted(HALLUCINATORS)])
def test_classify_gives_the_same_labels_and_probabilities_for_any_order_of_support_and_queries(hallucinator):
    model = model_with(hallucinator)
    generator = torch.Generator().manual_seed(1)
    support = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=generator)
    labels = ["owl", "cat", "emu", "fox", "dog"] * 2
    queries = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8, generator=generator)
    first = model.classify(support, labels, queries)
    order = torch.randperm(10, generator=generator)
    reverse = torch.arange(6, -1, -1)
    second = model.classify(support[order], [labels[i] for i in order], queries[reverse])
    assert [second.labels[i] for i in reverse] == first.labels
    # columns follow each call's first-appearance order of the labels: compare by label
    classes_1, classes_2 = list(dict.fromkeys(labels)), list(dict.fromkeys(labels[i] for i in order))
    columns = [classes_2.index(c) for c in classes_1]
    assert torch.allclose(second.probs[reverse][:, columns], first.probs, atol=1e-6)


@pytest.mark.parametrize("hallucinator", [None, "wang", "calibrated"])
def test_an_evaluation_gives_the_same_numbers_however_its_episodes_are_chunked(hallucinator, tiny_dataset):
    from fsl.data.episodes import EpisodeShape
    from fsl.evaluate import evaluate, sample_episodes

    model = model_with(hallucinator, M=4)
    store = tiny_dataset.split("test")
    episodes = sample_episodes(store, EpisodeShape(5, 1, 3), 9, 2, "test")
    whole = evaluate(model, store, episodes, noise_seed=3)
    for batch in (1, 4):
        assert list(evaluate(model, store, episodes, noise_seed=3, batch=batch).accs) == list(whole.accs)
    if hallucinator:  # the noise seed matters to a model that hallucinates
        other = evaluate(model, store, episodes, noise_seed=4, M=40)
        assert list(other.accs) != list(evaluate(model, store, episodes, noise_seed=3, M=40).accs)


def test_evaluate_draws_new_episodes_by_default_and_the_training_seed_reproduces_the_training_test(tracking):
    invoke("protonet", *TINY, "--test-seed", "7")
    [trained] = all_runs(MlflowClient())
    spec = f"runs:/{trained.info.run_id}"
    invoke("evaluate", "--model", spec, "--image-size", "16", "--test-queries", "3", "--test-episodes", "5")
    invoke("evaluate", "--model", spec, "--image-size", "16", "--test-queries", "3", "--test-episodes", "5",
           "--test-seed", "7")
    fresh, again = sorted((r for r in all_runs(MlflowClient()) if r.info.run_id != trained.info.run_id),
                          key=lambda r: r.info.start_time)
    assert fresh.data.params["test_seed"] == "8" and again.data.params["test_seed"] == "7"
    assert again.data.metrics["test_acc"] == trained.data.metrics["test_acc"]
    episode_accs = [m.value for m in MlflowClient().get_metric_history(trained.info.run_id, "test_episode_acc")]
    fresh_accs = [m.value for m in MlflowClient().get_metric_history(fresh.info.run_id, "test_episode_acc")]
    assert fresh_accs != episode_accs  # other episodes


def test_every_run_logs_a_loadable_model_registered_or_not_pretraining_too(tracking, tiny_dataset):
    import mlflow.pytorch

    invoke("pretrain", "--image-size", "16", "--epochs", "1", "--val-episodes", "3", "--test-episodes", "5",
           "--test-queries", "3", "--precision", "fp32")
    [run] = all_runs(MlflowClient())
    assert "fsl.registered_model" not in run.data.tags  # registration stays a choice
    names = {m.name for m in MlflowClient().search_logged_models(experiment_ids=[run.info.experiment_id])}
    assert names == {"fsl-pretrain-5w1s", "fsl-pretrain-5w1s-serve"}
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/fsl-pretrain-5w1s")
    images = tiny_dataset.split("test").images[:4]
    assert model.classify(images[:2], ["a", "b"], images).labels[:2] == ["a", "b"]


def test_import_fsl_is_cheap_and_its_names_are_lazy():
    code = ("import sys, fsl; assert 'torch' not in sys.modules and 'mlflow' not in sys.modules; "
            "cfg = fsl.TrainConfig(epochs=1); assert 'torch' not in sys.modules; "
            "assert callable(fsl.run_training) and callable(fsl.load_model) and 'mlflow' not in sys.modules; "
            "import fsl.train, fsl.evaluate; assert fsl.run_training is not fsl.train; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def readme_python_example() -> str:
    """The README's first Python block: the notebook example."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    return text[start:text.index("```", start)]


@pytest.mark.slow
def test_the_readme_python_example_runs_in_under_a_minute_and_a_fresh_clone_logs_it_clean(tmp_path):
    """The README's notebook example, run as a newcomer would in a fresh clone (one run serves both checks):
    it finishes in under a minute, and nothing fsl writes in its own checkout (the store, its lock,
    artifacts, the registered model) makes the run dirty."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: fsl records no commit, so nothing to be dirty")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"PYTHONPATH": str(clone)}
    timed = ("import time; started = time.perf_counter()\n" + readme_python_example()
             + "\nprint(f'seconds={time.perf_counter() - started:.1f} accuracy={summary.test.mean:.2f}')\n")
    out = subprocess.run([sys.executable, "-c", timed], cwd=clone, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = dict(item.split("=") for item in out.stdout.strip().splitlines()[-1].split())
    assert float(figures["seconds"]) < 60, figures
    assert float(figures["accuracy"]) > 20, figures  # better than chance at 5-way
    [run] = all_runs(MlflowClient(f"sqlite:///{clone / 'mlflow.db'}"))
    assert run.data.tags["fsl.git_commit"] and run.data.tags["fsl.git_dirty"] == "false", run.data.tags
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout == ""  # the store, its lock and the artifacts are all ignored


def test_the_readme_is_a_newcomers_page_and_history_lives_in_the_changelog():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 350
    setup = "pip install -e . && mlflow run . -e main --env-manager local --experiment-name fsl"
    for must in (setup, "pip install -e '.[test]' && python -m pytest -q", "## One minute", "--device cuda",
                 "MLFLOW_TRACKING_URI", "mlflow models serve", "mlflow runs delete", "BENCHMARKS.md"):
        assert must in readme, must
    assert "Names changed on" not in readme and "Names changed on" in (ROOT / "CHANGELOG.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci  # CI runs the README's test command
