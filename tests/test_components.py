"""Every registered component keeps its contract, as timm tests every registered model; settings
are declared once and checked; recipes are files; `--help` is grouped."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import pytest
import torch
from click.testing import CliRunner

from fsl.cli import cli
from fsl.components import AUGMENTATIONS, DISTANCES, ENCODERS, HALLUCINATORS, READERS
from fsl.errors import UsageError
from fsl.settings import Setting, parse_pairs, resolve, settings_of, specs


def declared_defaults(table, name: str) -> dict:
    return {k: spec.default for k, spec in table.settings(name).items()}


@pytest.mark.parametrize("name", ENCODERS.names())
def test_every_encoder_maps_images_to_out_dim_features_and_holds_its_settings(name):
    for size in (16, 32):
        encoder = ENCODERS.create(name, 3, size)
        assert encoder(torch.rand(2, 3, size, size)).shape == (2, encoder.out_dim)
    assert settings_of(encoder) == declared_defaults(ENCODERS, name)  # every setting kept under its name
    again = ENCODERS.create(name, 3, 32, **settings_of(encoder))
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in encoder.state_dict().items()}
    assert all(spec.setting.help for spec in ENCODERS.settings(name).values())


@pytest.mark.parametrize("name", HALLUCINATORS.names())
def test_every_hallucinator_makes_m_features_per_class_and_holds_its_settings(name):
    from fsl.models.hallucinator import hallucinate
    from tests.conftest import noise_keys

    hallucinator = HALLUCINATORS.create(name, 64)
    features, labels = torch.rand(2, 10, 64), torch.arange(5).repeat(2).expand(2, -1)
    fake, fake_labels = hallucinate(hallucinator, features, labels, 5, 3, noise_keys(0, 2))
    assert fake.shape == (2, 15, 64) and fake_labels.shape == (2, 15) and torch.isfinite(fake).all()
    assert settings_of(hallucinator) == declared_defaults(HALLUCINATORS, name)
    assert all(spec.setting.help for spec in HALLUCINATORS.settings(name).values())


@pytest.mark.parametrize("name", READERS.names())
def test_every_reader_builds_with_its_defaults_and_recognises_nothing_in_an_empty_folder(name, tmp_path):
    reader = READERS.create(name)
    assert settings_of(reader) == declared_defaults(READERS, name)
    assert reader.detects(tmp_path) is False and set(reader.options) <= {"split_ratio", "split_file", "val_share"}


@pytest.mark.parametrize("name", DISTANCES.names())
def test_every_distance_gives_query_by_prototype_scores_zero_at_the_prototype(name):
    queries, protos = torch.rand(2, 7, 16) + 0.1, torch.rand(2, 5, 16) + 0.1
    scores = DISTANCES[name](queries, protos)
    assert scores.shape == (2, 7, 5)
    at_proto = DISTANCES[name](protos, protos).diagonal(dim1=-2, dim2=-1)
    assert (at_proto <= scores.min() + 1e-5).all() or name == "dot"  # a prototype is nearest itself


@pytest.mark.parametrize("name", [n for n in AUGMENTATIONS.names() if AUGMENTATIONS[n] is not None])
def test_every_augmentation_keeps_the_batch_shape_and_is_seeded(name):
    x, mean, std = torch.rand(4, 3, 16, 16), torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    a = AUGMENTATIONS[name](x, torch.Generator().manual_seed(0), mean, std)
    b = AUGMENTATIONS[name](x, torch.Generator().manual_seed(0), mean, std)
    assert a.shape == x.shape and torch.equal(a, b)


class Knobbed:
    def __init__(self, size: int, *, p: Annotated[float, Setting("A share.", low=0.0, high=1.0, high_open=True)] = 0.5,
                 n: Annotated[int, Setting("A count.", low=1)] = 3, on: Annotated[bool, Setting("A switch.")] = False,
                 kind: Annotated[str, Setting("A choice.", choices=("a", "b"))] = "a", plain: int = 2) -> None:
        self.p, self.n, self.on, self.kind = p, n, on, kind


def test_settings_are_the_annotated_keyword_only_parameters_cast_and_checked():
    assert list(specs(Knobbed)) == ["p", "n", "on", "kind"]  # `size` is structural, `plain` undeclared
    assert resolve("encoder", "knobbed", Knobbed, {"p": "0.25", "n": "4.0", "on": "yes"}) == \
        {"p": 0.25, "n": 4, "on": True, "kind": "a"}
    bad = {"p": "1", "n": "2.5", "on": "maybe", "kind": "c", "q": "1"}
    messages = {"p": "knobbed's p must be at least 0 and less than 1, got 1.0", "n": "'2.5' is not an integer",
                "on": "'maybe' is not true or false", "kind": "must be one of a, b, got 'c'",
                "q": "encoder 'knobbed' has no setting 'q' (its settings: p, n, on, kind)"}
    for key, message in messages.items():
        with pytest.raises(UsageError, match="^--encoder-arg " + key) as error:
            resolve("encoder", "knobbed", Knobbed, {key: bad[key]})
        assert message in str(error.value)
    assert parse_pairs(["a=1,b-c=x", "none"], "--x-arg") == {"a": "1", "b_c": "x"}
    with pytest.raises(UsageError, match="--x-arg must be NAME=VALUE"):
        parse_pairs(["a"], "--x-arg")


def test_dotted_settings_and_old_names_set_the_same_config():
    from fsl.config import TrainConfig

    base = TrainConfig(hallucinator="improved", M=5)
    old = base.with_values({"diversity_weight": 0.3, "encoder_width": 0.5, "hallucinations": 7})
    new = base.with_values({"hallucinator.diversity_weight": 0.3, "encoder.width": 0.5, "M": 7})
    assert old == new and new.hallucinator_args == {"diversity_weight": 0.3}
    params = new.to_params()
    assert params["hallucinator.diversity_weight"] == 0.3 and params["hallucinator.dropout"] == 0.1
    assert params["encoder.width"] == 0.5 and "encoder_width" not in params
    # naming another component keeps the settings it also has, and drops the first one's others
    assert new.with_values({"hallucinator": "wang"}).hallucinator_args == {}
    assert new.with_values({"encoder": "resnet12"}).encoder_args == {"width": 0.5}
    with pytest.raises(UsageError, match="'nope' is not a training option or a component setting"):
        base.with_values({"nope": 1})
    with pytest.raises(UsageError, match="hallucinator 'wang' has no setting 'diversity_weight'"):
        replace(new, hallucinator="wang").validate()


def test_a_model_built_from_parts_needs_no_registration(tiny_dataset):
    from torch import nn

    from fsl.models.classifier import FewShotClassifier

    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = FewShotClassifier.from_parts(backbone, image_size=16).eval()
    assert model.feature_dim == 8 and model.encoder is backbone
    images = tiny_dataset.split("test").images[:6]
    assert model.classify(images[:2], ["a", "b"], images).probs.shape == (6, 2)


def captured_config(*args: str):
    """The TrainConfig a training command line builds (the command stops before it trains)."""
    import fsl.commands.cmd_train as cmd_train

    seen = []
    real = cmd_train.run_training
    cmd_train.run_training = lambda cfg, *a, **k: seen.append(cfg)
    try:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    finally:
        cmd_train.run_training = real
    assert result.exit_code == 0, result.output
    return seen[0]


def test_a_recipe_sets_what_the_command_line_does_not_and_the_run_logs_its_name(tmp_path):
    from fsl.recipes import load_recipe, shipped

    cfg = captured_config("protonet", "--recipe", "simpleshot", "--pretrain-epochs", "3", "--seed", "4")
    assert (cfg.pretrain_epochs, cfg.epochs, cfg.feature_transform, cfg.seed) == (3, 0, "cl2n", 4)
    assert cfg.recipe == "simpleshot" and cfg.to_params()["recipe"] == "simpleshot"
    # under MLproject every parameter is passed: one at its default does not override the recipe
    cfg = captured_config("protonet", "--from-mlproject", "--recipe", "simpleshot", "--epochs", "4", "--seed", "4")
    assert (cfg.epochs, cfg.pretrain_epochs, cfg.seed) == (0, 10, 4)
    mine = tmp_path / "mine.toml"
    mine.write_text('description = "mine"\n[settings]\nshots = 5\n"encoder.width" = 0.5\n')
    cfg = captured_config("hallucinate", "--recipe", str(mine))
    assert (cfg.shots, cfg.encoder_args, cfg.recipe) == (5, {"width": 0.5}, str(mine))
    for name in shipped():  # every shipped recipe is a valid configuration
        recipe = load_recipe(name)
        assert recipe is not None and recipe.description and recipe.evidence
        TrainConfig_with(recipe.values).validate()


def test_a_recipe_extends_its_base_and_a_circle_or_missing_base_is_named(tmp_path, monkeypatch):
    from fsl.errors import UsageError
    from fsl.recipes import load_recipe

    omniglot, variant = load_recipe("omniglot"), load_recipe("omniglot-pt-map")
    assert omniglot is not None and variant is not None
    assert variant.values == {**omniglot.values, "head": "pt-map"} and "head" not in omniglot.values
    (tmp_path / "a.toml").write_text('base = "b.toml"\n[settings]\nshots = 5\n')
    (tmp_path / "b.toml").write_text('base = "simpleshot"\n[settings]\nshots = 3\nways = 7\n')
    mine = load_recipe(str(tmp_path / "a.toml"))  # its own settings win over its base's, theirs over simpleshot's
    assert mine is not None and [mine.values[k] for k in ("shots", "ways", "pretrain_epochs")] == [5, 7, 10]
    (tmp_path / "b.toml").write_text('base = "a.toml"\n[settings]\n')
    with pytest.raises(UsageError, match=r"in a circle \(\S*/a.toml -> \S*/b.toml -> \S*/a.toml\)"):
        load_recipe(str(tmp_path / "a.toml"))
    (tmp_path / "b.toml").write_text('base = "omniglott"\n[settings]\n')
    with pytest.raises(UsageError, match="its base omniglott: no such recipe"):
        load_recipe(str(tmp_path / "b.toml"))
    (tmp_path / "b.toml").write_text('base = "simpleshot"\nways = 3\n')  # [settings] forgotten: not ignored
    with pytest.raises(UsageError, match=r"no \[settings\] table"):
        load_recipe(str(tmp_path / "b.toml"))
    monkeypatch.chdir(tmp_path)  # a relative path is the user's file, even under a shipped name
    (tmp_path / "simpleshot.toml").write_text('base = "a.toml"\n[settings]\nways = 9\n')
    (tmp_path / "a.toml").write_text('[settings]\nways = 2\n')
    mine = load_recipe("simpleshot.toml")
    assert mine is not None and mine.name == "simpleshot.toml" and mine.values == {"ways": 9}


def TrainConfig_with(values):
    from fsl.config import TrainConfig

    return TrainConfig().with_values(values)


def test_the_run_identity_ignores_the_recipe_name_but_not_its_settings():
    from fsl.commands.run_identity import config_hash

    plain = captured_config("pretrain", "--epochs", "10", "--feature-transform", "cl2n").to_params()
    recipe = captured_config("pretrain", "--recipe", "simpleshot").to_params()
    assert recipe["recipe"] == "simpleshot" and config_hash(recipe) == config_hash(plain)
    assert config_hash(captured_config("pretrain", "--recipe", "simpleshot", "--epochs", "9").to_params()) \
        != config_hash(plain)


def test_help_lists_options_under_headings_each_a_screen_long():
    import re

    text = CliRunner().invoke(cli, ["protonet", "--help"], terminal_width=100).output
    headings = re.findall(r"^([A-Z][a-z ]+):$", text, re.M)
    assert headings[:6] == ["Data", "Episodes", "Model", "Schedule", "Test", "Run and tracking"]
    sections = re.split(r"^[A-Z][a-z ]+:$", text, flags=re.M)[1:]
    assert max(len(s.strip().splitlines()) for s in sections) <= 40
    assert "--encoder-arg NAME=VALUE" in sections[2] and "--recipe NAME|FILE" in sections[3]
