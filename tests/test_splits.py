"""Splits and test sets from the command line (issue 23): split a class-per-folder tree with
--split-ratio, test on another data set with --test-data/--test-split all, and evaluate or draw
episodes from every class of a data set with --split all."""

import json
from pathlib import Path

from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from fsl.cli import cli
from tests.conftest import TINY, all_runs


def class_tree(root: Path, prefix: str, classes: int, per_class: int = 4) -> Path:
    for c in range(classes):
        for i in range(per_class):
            path = root / f"{prefix}{c:02d}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 12), (c * 5 % 256, i * 60, 100 + c)).save(path)
    return root


def dataset_inputs(run) -> dict[str, dict]:
    out = {}
    for item in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        out[context] = {"digest": item.dataset.digest, "source": json.loads(item.dataset.source),
                        "profile": json.loads(item.dataset.profile)}
    return out


def test_train_on_a_split_tree_and_test_on_every_class_of_another(tracking, tmp_path):
    from fsl.data import load_dataset

    background = class_tree(tmp_path / "background", "bg", 50)
    evaluation = class_tree(tmp_path / "evaluation", "ev", 6)
    result = CliRunner().invoke(cli, ["protonet", *TINY, "--data", str(background), "--split-ratio", "0.9,0.1,0",
                                      "--test-data", str(evaluation), "--test-split", "all"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output  # no class name shared
    client = MlflowClient()
    [run] = all_runs(client)
    inputs = dataset_inputs(run)
    assert inputs["training"]["profile"]["train_classes"] == 45 and inputs["training"]["profile"]["val_classes"] == 5
    assert "test_classes" not in inputs["training"]["profile"]  # 0 test share: no test split at all
    assert inputs["training"]["source"]["split_ratio"] == [0.9, 0.1, 0.0]
    assert inputs["evaluation"]["profile"]["test_classes"] == 6
    profile = inputs["evaluation"]["profile"]
    assert set(profile) >= {"test_classes"} and "train_classes" not in profile
    assert inputs["evaluation"]["digest"] == load_dataset(str(evaluation), 16, channels=3, split="all").fingerprint
    assert run.data.params["split_ratio"] == "0.9,0.1,0" and run.data.params["test_split"] == "all"
    # the test drew on the evaluation tree's classes only: none of them is a training class
    train_names = set(load_dataset(str(background), 16, split_ratio=(0.9, 0.1, 0.0)).split("train").class_names)
    test_names = set(load_dataset(str(evaluation), 16, split="all").split("test").class_names)
    assert len(test_names) == 6 and not train_names & test_names


def test_a_test_set_sharing_class_names_with_the_training_set_gets_a_warning(tracking, tmp_path):
    background = class_tree(tmp_path / "background", "c", 50)
    result = CliRunner().invoke(cli, ["protonet", *TINY, "--data", str(background), "--split-ratio", "0.9,0.1,0",
                                      "--test-data", str(class_tree(tmp_path / "again", "c", 6)), "--test-split",
                                      "all"], catch_exceptions=False)
    assert result.exit_code == 0 and "shares 6 class name(s) with the training data (c00, c01" in result.output


def test_evaluate_and_episodes_take_every_class_with_split_all(tracking, tmp_path, trained_checkpoint):
    evaluation = class_tree(tmp_path / "evaluation", "ev", 6)
    out = CliRunner().invoke(cli, ["evaluate", "--model", str(trained_checkpoint), "--data", str(evaluation),
                                   "--split", "all", "--test-episodes", "4", "--test-queries", "3"])
    assert out.exit_code == 0, out.output
    client = MlflowClient()
    [run] = all_runs(client)
    assert dataset_inputs(run)["evaluation"]["profile"]["test_classes"] == 6 and run.data.params["split"] == "all"
    # the default split of 6 classes has only 1 test class: 5-way episodes are impossible there
    refused = CliRunner().invoke(cli, ["evaluate", "--model", str(trained_checkpoint), "--data", str(evaluation)])
    assert refused.exit_code != 0 and "test" in refused.output
    episodes = tmp_path / "episodes.csv"
    drawn = CliRunner().invoke(cli, ["episodes", "--data", str(evaluation), "--split", "all", "-n", "3",
                                     "--queries", "3", "-o", str(episodes)])
    assert drawn.exit_code == 0, drawn.output
    again = CliRunner().invoke(cli, ["evaluate", "--model", str(trained_checkpoint), "--data", str(evaluation),
                                     "--split", "all", "--episodes", str(episodes)])
    assert again.exit_code == 0, again.output


def test_a_split_file_assigns_classes_from_the_command_line(tmp_path):
    tree = class_tree(tmp_path / "tree", "k", 12)
    listing = tmp_path / "splits.txt"
    listing.write_text("".join(f"{s},k{c:02d}\n" for c, s in enumerate(["train"] * 6 + ["val"] * 3 + ["test"] * 3)))
    out = CliRunner().invoke(cli, ["data", "inspect", str(tree), "--split-file", str(listing)])
    assert out.exit_code == 0, out.output
    assert "train: 6 classes" in out.output and "  val: 3 classes" in out.output and " test: 3 classes" in out.output


def test_the_default_split_keeps_its_fingerprint_when_given_explicitly(tmp_path):
    from fsl.data import load_dataset

    tree = class_tree(tmp_path / "tree", "k", 12)
    assert load_dataset(str(tree)).fingerprint == load_dataset(str(tree), split_ratio=(0.64, 0.16, 0.2)).fingerprint
    assert load_dataset(str(tree)).fingerprint != load_dataset(str(tree), split_ratio=(0.5, 0.25, 0.25)).fingerprint
