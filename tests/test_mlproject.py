"""MLproject's entry points against the `fsl` commands they run: every parameter feeds an
option of that command, with that option's default, and every choice list has one source."""

import re
import shlex
from pathlib import Path

import pytest

from fsl.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def entry_points():
    from mlflow.projects._project_spec import load_project

    return load_project(str(ROOT))._entry_points


def option_feeding(command: str, parameter: str) -> str:
    """The option of `command` that `{parameter}` is passed to."""
    words = shlex.split(command)
    index = words.index("{" + parameter + "}")
    return words[index - 1]


@pytest.mark.parametrize("name", ["main", "protonet", "hallucinate", "sweep_m", "pretrain"])
def test_every_entry_point_parameter_defaults_to_its_cli_option_default(name):
    entry = entry_points()[name]
    words = shlex.split(entry.command)
    assert words[:5] == ["python", "-m", "fsl", words[3], "--from-mlproject"]
    command = cli.commands[words[3]]
    options = {opt: param for param in command.params for opt in getattr(param, "opts", [])}
    placeholders = set(re.findall(r"\{(\w+)\}", entry.command))
    assert placeholders == set(entry.parameters), "a parameter is declared but not passed, or passed undeclared"
    for parameter, spec in entry.parameters.items():
        option = options[option_feeding(entry.command, parameter)]
        default = option.default
        declared = spec.default
        if option.multiple:  # --encoder-arg: "none" is no setting given
            assert declared == "none", parameter
        elif default is None:  # AUTO_INT options: MLproject passes "auto"
            assert declared == "auto", parameter
        elif isinstance(default, float):
            assert float(declared) == default, parameter
        else:
            assert type(default)(declared) == default, parameter


def test_the_committed_mlproject_is_the_generated_one():
    """MLproject is written from one list (fsl/project_file.py): regenerate it after a change."""
    from fsl.project_file import project_file

    assert (ROOT / "MLproject").read_text() == project_file(), "run: python -m fsl.project_file > MLproject"


def test_main_is_protonet():
    points = entry_points()
    assert points["main"].command == points["protonet"].command
    assert points["main"].parameters.keys() == points["protonet"].parameters.keys()


@pytest.mark.parametrize("kind", ["ENCODERS", "HALLUCINATORS", "READERS", "DISTANCES", "AUGMENTATIONS"])
def test_every_registered_name_imports_and_is_the_choice_list_of_its_option(kind):
    """A registry is the one list of its axis: each "module:attribute" entry resolves to an
    object, and the CLI option that picks from it lists exactly its names."""
    from fsl import components

    table = getattr(components, kind)
    for name in table:
        assert table[name] is not None or (kind, name) == ("AUGMENTATIONS", "none"), name
    option = {"ENCODERS": "encoder", "HALLUCINATORS": "hallucinator", "READERS": "format",
              "DISTANCES": "distance", "AUGMENTATIONS": "augment"}[kind]
    command = cli.commands["hallucinate"]
    [param] = [p for p in command.params if p.name == option]
    assert tuple(param.type.choices) == table.names()


# Options whose name means something else in some commands, so their help differs on purpose.
MEANINGS_PER_COMMAND = {
    "--baseline": "sweep pairs any field, sweep-m pairs M",
    "--episodes": "a count for `fsl episodes`, a file for `fsl evaluate`",
    "--head": "one head of a training run, or a list that `fsl evaluate` scores side by side",
    "--head-arg": "a setting of the one head, or of each listed head that has it",
    "--epochs": "episodic epochs, or pre-training epochs",
    "--lr": "Adam for episodes, SGD for pre-training",
    "--model": "evaluate and predict take different URIs",
    "--out": "a CSV of episodes, or of predictions",
    "--param": "a sweep's values, or a search's ranges and choices",
    "--queries": "training episodes, or the episodes `fsl episodes` writes",
    "--register": "a flag of a run, a mode of a sweep or a search, off by default for pre-training",
    "--seed": "training, or the draw of an episode file",
    "--seeds": "a sweep's replicates, or the replicates of a search's retest",
    "--shots": "training episodes, or the episodes `fsl episodes` writes",
    "--split": "the split an episode file draws from, or the classes evaluate tests",
    "--test-episodes": "after training, of a pre-trained encoder, or of a saved model",
    "--test-shots": "its default is --shots in training, 1 elsewhere",
    "--test-seed": "evaluate's default is new episodes (the training's seed + 1), training's a fixed 2",
    "--ways": "training episodes, or the episodes `fsl episodes` writes",
}


def test_each_option_has_one_help_text_wherever_it_means_the_same():
    """Help is written once: an option shared by several commands is one click object (or one
    text), not a paraphrase per command, unless its meaning differs (MEANINGS_PER_COMMAND)."""
    import click

    texts: dict[str, set[str]] = {}

    def walk(group: click.Group) -> None:
        for command in group.commands.values():
            if isinstance(command, click.Group):
                walk(command)
                continue
            for param in command.params:
                if isinstance(param, click.Option) and not param.hidden:
                    texts.setdefault(max(param.opts, key=len), set()).add(param.help or "")

    walk(cli)
    differing = {name for name, helps in texts.items() if len(helps) > 1}
    assert differing == set(MEANINGS_PER_COMMAND), differing ^ set(MEANINGS_PER_COMMAND)
