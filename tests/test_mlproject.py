"""MLproject's entry points against the `fsl` commands they run: every parameter feeds an
option of that command, with that option's default, and every choice list has one source."""

import re
import shlex
from pathlib import Path

import pytest

from fsl import choices
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
    assert words[:3] == ["python", "-m", "fsl"]
    command = cli.commands[words[3]]
    options = {opt: param for param in command.params for opt in getattr(param, "opts", [])}
    placeholders = set(re.findall(r"\{(\w+)\}", entry.command))
    assert placeholders == set(entry.parameters), "a parameter is declared but not passed, or passed undeclared"
    for parameter, spec in entry.parameters.items():
        option = options[option_feeding(entry.command, parameter)]
        default = option.default
        declared = spec.default
        if default is None:  # AUTO_INT options: MLproject passes 'auto'
            assert declared == "auto", parameter
        elif isinstance(default, float):
            assert float(declared) == default, parameter
        else:
            assert type(default)(declared) == default, parameter


def test_main_is_protonet():
    points = entry_points()
    assert points["main"].command == points["protonet"].command
    assert points["main"].parameters.keys() == points["protonet"].parameters.keys()


def test_closed_choices_name_exactly_their_implementations():
    from fsl.data.augment import AUGMENTATIONS
    from fsl.data.readers import ARRAY_FORMATS, FILE_FORMATS
    from fsl.models.distances import DISTANCES

    assert tuple(DISTANCES) == choices.DISTANCES
    assert tuple(AUGMENTATIONS) == choices.AUGMENTATIONS
    assert set(FILE_FORMATS) | set(ARRAY_FORMATS) == set(choices.FORMATS)
    [distance] = [p for p in cli.commands["protonet"].params if p.name == "distance"]
    assert tuple(distance.type.choices) == choices.DISTANCES
