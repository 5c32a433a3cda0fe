"""The `fsl` command: parses options, builds a config and calls one module of `fsl.commands`.

Choices come from `fsl.choices` and the component tables, defaults from `fsl.config.DEFAULTS`,
and a component's settings from the component (`--encoder-arg`, `--hallucinator-arg`,
`--format-arg`), so none is written here a second time. `--recipe` applies a named file of
settings under the options given on the command line (`fsl.recipes`).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Callable

import click

import fsl
from fsl.choices import (
    COMPILE_MODES,
    FEATURE_TRANSFORMS,
    METHODS,
    PRECISIONS,
    RESUME_LATEST,
    SPLITS,
)
from fsl.components import AUGMENTATIONS, DISTANCES, ENCODERS, HALLUCINATORS, HEADS, READERS, Registry
from fsl.config import (
    BATCH_NORMS,
    DEFAULT_HALLUCINATOR,
    DEFAULT_M,
    DEFAULTS,
    INPUT_NORMS,
    MAX_M,
    DataConfig,
    EpisodeFileConfig,
    EvaluationConfig,
    TrainConfig,
)
from fsl.errors import FslError, UsageError

SHOW = {"show_default": True}


class FslGroup(click.Group):
    """Reports usage and data errors as one line ("Error: ..."), no traceback; exit code 2 for
    a bad parameter, 1 for unreadable data, 128 + 15 for SIGTERM."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort as exc:
            signum = getattr(exc.__cause__, "signum", None)
            click.echo("Terminated" if signum else "Aborted!", err=True)
            sys.exit(128 + signum if signum else 1)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except FslError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)


# `--help` lists a command's options under these headings (by the option's Python name), so each
# group fits a screen; an option not listed goes under "Other options".
OPTION_GROUPS = {
    "Data": ("data", "format", "format_arg", "image_size", "channels", "rotations", "reflections", "split_ratio",
             "split_file", "val_share", "test_split", "episodes_file", "split", "count", "out"),
    "Episodes": ("ways", "shots", "queries", "test_ways", "test_shots", "test_queries"),
    "Model": ("model_spec", "encoder", "encoder_arg", "encoder_width", "distance", "logit_scale", "learn_logit_scale",
              "input_norm", "hallucinator", "hallucinator_arg",
              "M", "diversity_weight", "augment", "no_augment", "head", "head_arg", "heads", "feature_transform",
              "test_views", "init"),
    "Schedule": ("recipe", "batch_norm", "epochs", "episodes_per_epoch", "episodes_per_step", "val_episodes", "lr",
                 "lr_step",
                 "patience", "batch_size", "weight_decay", "pretrain_epochs", "pretrain_lr", "pretrain_batch_size",
                 "pretrain_weight_decay", "seed", "val_seed"),
    "Test": ("test_data", "test_episodes", "test_seed"),
    "Sweep": ("params", "method", "values", "seeds", "baseline", "shard", "shards"),
    "Run and tracking": ("device", "precision", "compile", "deterministic", "experiment", "resume", "register",
                         "register_mode", "registered_model_name", "system_metrics", "tsne"),
}


class GroupedCommand(click.Command):
    """A command whose `--help` lists its options under the headings of OPTION_GROUPS."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                group = next((g for g, names in OPTION_GROUPS.items() if param.name in names), "Other options")
                rows.setdefault(group, []).append(record)
        for group in [*OPTION_GROUPS, "Other options"]:
            if group in rows:
                with formatter.section(group):
                    formatter.write_dl(rows[group])


class AutoInt(click.ParamType):
    """An integer, or 'auto' for the default derived from other options (MLproject passes 'auto')."""

    name = "integer|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | None:
        if value is None or isinstance(value, int) or value == "auto":
            return None if value == "auto" else value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer or 'auto'", param, ctx)


AUTO_INT = AutoInt()


class Auto(click.ParamType):
    """A value of `cast`, or 'auto' for None (the option's default; MLproject passes 'auto')."""

    def __init__(self, cast: Callable[[str], Any], name: str) -> None:
        self.cast, self.name = cast, f"{name}|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or value == "auto":
            return None
        try:
            return self.cast(value)
        except ValueError:
            self.fail(f"{value!r} is not a {self.name}", param, ctx)


AUTO_TEXT, AUTO_FLOAT = Auto(str, "text"), Auto(float, "float")


class RegistryChoice(click.Choice):
    """A choice among a registry's names, read when used: a name registered after this module
    was imported (a plug-in, a test) is a valid choice and is listed in --help."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        super().__init__(registry.names())

    @property
    def choices(self):
        return self.registry.names()

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it
        pass


def _options(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


format_option = click.option("--format", type=RegistryChoice(READERS), default=None,
                             help="On-disk format of --data. [default: detected]")


def setting_option(axis: str, what: str) -> Callable:
    """`--<axis>-arg NAME=VALUE`: a setting of the component `--<axis>` names (repeatable; several
    comma-separated). The settings are declared on the component: `fsl components <axis>`."""
    return click.option(f"--{axis}-arg", f"{axis}_arg", multiple=True, metavar="NAME=VALUE",
                        help=f"A setting of the {what}, e.g. {SETTING_EXAMPLES[axis]} (repeatable; "
                        f"`fsl components {axis}` lists each one's settings).")


SETTING_EXAMPLES = {"encoder": "width=0.25", "hallucinator": "diversity_weight=0.3", "format": "NAME=VALUE",
                    "head": "steps=200"}
format_arg_option = setting_option("format", "--format reader")
image_size_option = click.option(
    "--image-size", type=AUTO_INT, default=None,
    help="Resize images to this side (16 to 512). [default: the data set's: 32 synthetic, 84 Mini-ImageNet, "
    "28 greyscale trees]")
split_options = _options(
    click.option("--split-ratio", type=AUTO_TEXT, default=None, metavar="TRAIN,VAL,TEST",
                 help="Split a class-per-folder tree by class in these shares, e.g. 0.9,0.1,0. "
                 "[default: 0.64,0.16,0.2]"),
    click.option("--split-file", type=AUTO_TEXT, default=None,
                 help="Split a class-per-folder tree by a file of `split,class` lines "
                 "(classes not listed are left out)."),
    click.option("--val-share", type=AUTO_FLOAT, default=None,
                 help="Course format: the share of train classes held out for validation. [default: 0.2]"),
)

data_options = _options(
    click.option("--data", default=DEFAULTS.data, help="Data set: 'synthetic' (built in, no download) or a path "
                 "(a folder, or a .zip of a class-per-folder tree)."),
    format_option,
    format_arg_option,
    image_size_option,
    click.option("--channels", type=click.Choice(["1", "3"]), default=None, callback=lambda c, p, v: v and int(v),
                 help="1 = greyscale, 3 = RGB. [default: inferred from the images]"),
    click.option("--rotations/--no-rotations", default=DEFAULTS.rotations,
                 help="Add 90/180/270-degree rotations of every class as new classes (the Omniglot protocol)."),
    click.option("--reflections/--no-reflections", default=DEFAULTS.reflections,
                 help="Add the mirror image of every class as a new class (characters, not photographs)."),
    split_options,
)

test_ways_option = click.option("--test-ways", default=DEFAULTS.test_ways,
                                help="Classes per test (and validation) episode, at least 2.")
test_queries_option = click.option("--test-queries", default=DEFAULTS.test_queries,
                                   help="Query images per class in test (and validation) episodes.")
TEST_SHOTS_HELP = "Support images per class in test (and validation) episodes."
val_episodes_option = click.option("--val-episodes", default=DEFAULTS.val_episodes,
                                   help="Fixed val episodes scored after each epoch.")
deterministic_option = click.option(
    "--deterministic/--no-deterministic", default=DEFAULTS.deterministic,
    help="PyTorch's deterministic algorithms: the same seed on the same machine and thread count gives the same "
    "numbers to the last digit (README: what it costs).")
patience_option = click.option(
    "--patience", default=DEFAULTS.patience,
    help="Stop after this many epochs without a better val accuracy (0 = train every epoch).")
registered_name_option = click.option("--registered-model-name", default=None,
                                      help="Registry name. [default: fsl-<method>]")
system_metrics_option = click.option(
    "--system-metrics/--no-system-metrics", default=True,
    help="Record CPU and memory use (and GPU use, with the nvidia-ml-py package) every 2 s.")

episode_options = _options(
    click.option("--ways", default=DEFAULTS.ways, help="Classes per training episode, at least 2 "
                 "(the paper trains 30-way for 1-shot)."),
    click.option("--shots", default=DEFAULTS.shots, help="Support images per class in training episodes."),
    click.option("--queries", default=DEFAULTS.queries, help="Query images per class in training episodes."),
    test_ways_option,
    click.option("--test-shots", type=AUTO_INT, default=None, help=TEST_SHOTS_HELP + " [default: --shots]"),
    test_queries_option,
)

test_run_options = _options(  # what a command that only tests a model reads, besides its test seed
    click.option("--device", default=DEFAULTS.device,
                 help="auto = CUDA, else Apple MPS, else CPU; or cpu, cuda, cuda:N, mps."),
    click.option("--experiment", default=DEFAULTS.experiment, help="MLflow experiment (ignored inside `mlflow run`)."),
)

run_options = _options(
    click.option("--seed", default=DEFAULTS.seed,
                 help="Seed of training episodes, initial weights and training noise."),
    click.option("--val-seed", default=DEFAULTS.val_seed, help="Seed of the fixed validation episodes."),
    click.option("--test-seed", default=DEFAULTS.test_seed,
                 help="Seed of the fixed test episodes and test-time noise."),
    test_run_options,
    click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULTS.precision,
                 help="auto = bf16 autocast where the device has bf16 units (CUDA, AMX CPUs), else fp32."),
)

model_options = _options(
    click.option("--encoder", type=RegistryChoice(ENCODERS), default=DEFAULTS.encoder,
                 help="Backbone: conv4 (Snell et al.) or resnet12 (64-160-320-640, as in MetaOptNet and FEAT)."),
    setting_option("encoder", "encoder"),
    click.option("--encoder-width", type=AUTO_FLOAT, default=None, metavar="FLOAT",
                 help="The same as --encoder-arg width=FLOAT (the option's name before fsl 0.2)."),
    click.option("--augment", type=RegistryChoice(AUGMENTATIONS), is_flag=False, flag_value="omniglot",
                 default=DEFAULTS.augment, help="Training-image augmentation, batched on the device: omniglot = random "
                 "rotation (15 deg), scale (0.9-1.1) and shift (10%) (a bare --augment); standard = random resized "
                 "crop, horizontal flip and colour jitter (RGB photographs); none (also --no-augment)."),
    click.option("--no-augment", "no_augment", is_flag=True, hidden=True, help="The same as --augment none."),
    click.option("--feature-transform", type=click.Choice(FEATURE_TRANSFORMS), default=DEFAULTS.feature_transform,
                 help="Test-time features: cl2n centres them on the base-class mean and l2-normalises them "
                 "(SimpleShot, Wang et al. 2019); power is Tukey's x^0.5 (Free Lunch; for features >= 0, not "
                 "ResNet-12's); training is unchanged."),
    click.option("--head", type=RegistryChoice(HEADS), default=DEFAULTS.head,
                 help="Test-time classifier: prototype (nearest prototype, Snell et al.), logistic (logistic "
                 "regression; inductive), or transductive (they also read the episode's queries): bd-cspn, "
                 "laplacian, tim, pt-map. Training and validation are the prototype's."),
    setting_option("head", "head"),
    click.option("--test-views", default=DEFAULTS.test_views,
                 help="Test-time augmentation: each validation and test feature is the mean over the image and "
                 "this many views drawn from the --augment policy. 0 = off."),
)

pretrain_options = _options(
    click.option("--pretrain-epochs", default=DEFAULTS.pretrain_epochs,
                 help="First pre-train the encoder for this many epochs as a classifier over all training classes "
                 "(fsl pretrain), then train episodically. 0 = no pre-training."),
    click.option("--pretrain-lr", default=DEFAULTS.pretrain_lr, help="Pre-training: SGD learning rate (cosine decay)."),
    click.option("--pretrain-batch-size", default=DEFAULTS.pretrain_batch_size, help="Pre-training: images per batch."),
    click.option("--pretrain-weight-decay", default=DEFAULTS.pretrain_weight_decay, help="Pre-training: weight decay."),
)

training_options = _options(
    data_options,
    episode_options,
    model_options,
    pretrain_options,
    click.option("--test-data", type=AUTO_TEXT, default=None, help="Test on this data set instead of --data's test "
                 "split (read at the model's size and channels; validation stays on --data). [default: --data]"),
    click.option("--test-split", type=click.Choice(["test", "all"]), default=DEFAULTS.test_split,
                 help="With --test-data: test on its test split, or on all of its classes."),
    click.option("--init", default=None, help="Start from a trained model (its encoder, and its hallucinator if "
                 "compatible): a checkpoint or an MLflow URI, e.g. the runs:/ID of an `fsl pretrain` run."),
    click.option("--distance", type=RegistryChoice(DISTANCES), default=DEFAULTS.distance,
                 help="Query-to-prototype distance (l2: squared, as in Snell et al.)."),
    click.option("--logit-scale", default=DEFAULTS.logit_scale,
                 help="Logits are -scale x distance (TADAM's alpha, Oreshkin et al. 2018); 1 is Snell et al.'s."),
    click.option("--learn-logit-scale/--fixed-logit-scale", default=DEFAULTS.learn_logit_scale,
                 help="Learn the logit scale with the encoder (TADAM), starting from --logit-scale."),
    click.option("--input-norm", type=click.Choice(INPUT_NORMS), default=DEFAULTS.input_norm,
                 help="data: normalise images by the training split's mean and std; unit: images in [0, 1] as they "
                 "are."),
    click.option("--batch-norm", type=click.Choice(BATCH_NORMS), default=DEFAULTS.batch_norm,
                 help="Training: BatchNorm's statistics over each episode's support and query together (Snell et al.), "
                 "or split: over each apart (easyfsl)."),
    click.option("--epochs", default=DEFAULTS.epochs,
                 help="Epochs; each ends with validation and keeps the best model."),
    click.option("--episodes-per-epoch", default=DEFAULTS.episodes_per_epoch, help="Optimiser steps per epoch."),
    click.option("--episodes-per-step", default=DEFAULTS.episodes_per_step,
                 help="Episodes averaged per optimiser step, per process, run through the encoder as one batch "
                 "(each with its own BatchNorm statistics: the same step as one after the other); torchrun: each "
                 "of N processes draws its own, so a step sees N x this many."),
    val_episodes_option,
    click.option("--test-episodes", default=DEFAULTS.test_episodes, help="Test episodes (600 as in the literature)."),
    click.option("--lr", default=DEFAULTS.lr, help="Adam learning rate."),
    click.option("--lr-step", default=DEFAULTS.lr_step,
                 help="Halve the learning rate every this many episodes (as in the paper)."),
    run_options,
    click.option("--compile", type=click.Choice(COMPILE_MODES), default=DEFAULTS.compile,
                 help="torch.compile the whole training step (forward, loss, backward, Adam; CUDA graphs "
                 "on CUDA); auto = on CUDA only, where compiling measured 27-34% faster. Under torchrun "
                 "only the encoder is compiled; a step that cannot be compiled runs eagerly, with a warning."),
    deterministic_option,
    patience_option,
)

tracking_options = _options(
    click.option("--register/--no-register", default=True,
                 help="Register the best checkpoint in the model registry (fsl-protonet / fsl-hallucinate)."),
    registered_name_option,
    system_metrics_option,
)

SWEEP_REGISTER = ("none", "best", "all")

sweep_tracking_options = _options(
    click.option("--register", "register_mode", type=click.Choice(SWEEP_REGISTER), default="none",
                 help="none: register nothing; best: after every child ends, register the child with the best "
                 "val accuracy of each registry name (champion rule); all: register every child."),
    click.option("--no-register", "no_register", is_flag=True, hidden=True, help="The same as --register none."),
    registered_name_option,
    system_metrics_option,
    click.option("--tsne/--no-tsne", default=False,
                 help="Draw the t-SNE of each hallucination child (seconds to minutes each; one run draws it always)."),
)

resume_option = click.option(
    "--resume", is_flag=False, flag_value=RESUME_LATEST, default=None, metavar="[RUN_ID]",
    help="Continue an interrupted run from its last epoch, in the same MLflow run: the newest unfinished "
    "(killed, failed or crashed) run of this configuration, or RUN_ID.")

hallucination_options = _options(
    click.option("-M", "--hallucinations", "M", default=DEFAULT_M,
                 help=f"Hallucinated features per class per episode (0 to {MAX_M})."),
    click.option("--hallucinator", type=RegistryChoice(HALLUCINATORS), default=DEFAULT_HALLUCINATOR,
                 help="wang: the original generator; improved: prototype-conditioned, residual, anti-collapse; "
                 "calibrated: sampled from a class distribution calibrated with base-class statistics."),
    setting_option("hallucinator", "hallucinator"),
    click.option("--diversity-weight", type=AUTO_FLOAT, default=None, metavar="FLOAT",
                 help="The same as --hallucinator-arg diversity_weight=FLOAT (improved only; the option's name "
                 "before fsl 0.2)."),
)


recipe_option = click.option(
    "--recipe", type=AUTO_TEXT, default=None, metavar="NAME|FILE",
    help="Start from a recipe: a named file of settings (`fsl recipes` lists them) or a TOML file of your own; "
    "options given on the command line override it.")
# MLproject passes every parameter, its default included: with this flag a value equal to the
# option's default counts as not given, so that `-P recipe=NAME` is not overridden by defaults.
from_mlproject_option = click.option("--from-mlproject", is_flag=True, hidden=True)
GIVEN = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def given_on_command_line(options: dict[str, Any], from_mlproject: bool = False) -> set[str]:
    """The options of the running command that were given (not left at their defaults)."""
    ctx = click.get_current_context()
    defaults = {p.name: p.default for p in ctx.command.params}
    return {name for name in options if ctx.get_parameter_source(name) in GIVEN
            and not (from_mlproject and options[name] == defaults.get(name))}


def data_config_options(options: dict[str, Any]) -> dict[str, Any]:
    """A data command's options with `--format-arg` read into `format_args`."""
    from fsl.settings import parse_pairs

    return options | {"format_args": parse_pairs(options.pop("format_arg", ()), "--format-arg")}


def train_config(options: dict[str, Any], renames: dict[str, str] | None = None,
                 fixed: dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of a training command's options: the command's defaults, under its
    --recipe's settings, under the options given on the command line (component settings and the
    old option names included). `renames`: option -> field where they differ (`fsl pretrain`'s
    --epochs is `pretrain_epochs`); `fixed`: fields the command sets whatever is given."""
    from fsl import compat
    from fsl.config import COMPONENT_AXES
    from fsl.recipes import load_recipe
    from fsl.settings import parse_pairs

    renames, fixed = renames or {}, fixed or {}
    recipe = load_recipe(options.pop("recipe", None))
    explicit = given_on_command_line(options, options.pop("from_mlproject", False))
    if options.pop("no_augment", False):
        options["augment"], explicit = "none", explicit | {"augment"}
    settings = {f"{axis}.{k}": v for axis in COMPONENT_AXES if f"{axis}_arg" in options
                for k, v in parse_pairs(options.pop(f"{axis}_arg"), f"--{axis}-arg").items()}
    aliases = {k: options.pop(k) for k in ("encoder_width", "diversity_weight") if k in options}
    settings |= {k: v for k, v in aliases.items() if v is not None}
    cfg = TrainConfig(**{renames.get(k, k): v for k, v in options.items()})
    if recipe is not None:
        cfg = cfg.with_values(recipe.values)
    cfg = cfg.with_values({renames.get(k, k): options[k] for k in explicit if k in options} | settings | fixed)
    for option, value in aliases.items():  # named as typed, not as the --*-arg it stands for
        axis, _, setting = compat.OPTION_ALIASES[option].partition(".")
        name, table = getattr(cfg, axis), COMPONENT_AXES[axis]
        if value is not None and name in table and setting not in table.settings(name):
            raise click.UsageError(f"--{option.replace('_', '-')}: {axis} {name!r} has no setting {setting!r} "
                                   f"(its settings: {', '.join(table.settings(name)) or 'none'})")
    return replace(cfg, recipe=recipe.name if recipe else None)


def _run_options(register: bool, registered_model_name: str | None, system_metrics: bool,
                 resume: str | None = None, tsne: bool = True):
    from fsl.commands.options import RunOptions

    return RunOptions(register=register, registered_model_name=registered_model_name,
                      system_metrics=system_metrics, resume=resume, tsne=tsne)


def _reporter():
    from fsl.commands.options import Reporter

    return Reporter(click.echo)


@click.group(cls=FslGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(fsl.__version__, prog_name="fsl")
def cli() -> None:
    """Few-shot image classification: Prototypical Networks and data hallucination, tracked in MLflow.

    Runs land in MLflow's default store (sqlite:///mlflow.db, artifacts under mlruns/) unless
    MLFLOW_TRACKING_URI says otherwise; `mlflow ui` shows them.
    """


# What `fsl protonet` and `fsl sweep --method protonet` are, whatever a recipe says.
PROTONET = {"hallucinator": None, "M": 0}


def training_command(name: str | None = None) -> Callable:
    """A command that trains: grouped --help, and --recipe."""
    def wrap(f: Callable) -> Callable:
        return cli.command(name, cls=GroupedCommand, context_settings=SHOW)(
            recipe_option(from_mlproject_option(f)))
    return wrap


@training_command()
@training_options
@tracking_options
@resume_option
def protonet(register: bool, registered_model_name: str | None, system_metrics: bool, resume: str | None,
             **options: Any) -> None:
    """Train a Prototypical Network (Snell et al. 2017), then test it on --test-episodes episodes."""
    from fsl.commands.cmd_train import run_training

    run_training(train_config(options, fixed=PROTONET),
                 _run_options(register, registered_model_name, system_metrics, resume), _reporter())


@training_command()
@training_options
@hallucination_options
@tracking_options
@resume_option
def hallucinate(register: bool, registered_model_name: str | None, system_metrics: bool, resume: str | None,
                **options: Any) -> None:
    """Train ProtoNet jointly with a feature hallucinator (Wang et al. 2018), then test it
    with the hallucinator on and off on the same episodes."""
    from fsl.commands.cmd_train import run_training

    run_training(train_config(options), _run_options(register, registered_model_name, system_metrics, resume),
                 _reporter())


# `fsl pretrain`'s options that are the pre-training fields of TrainConfig under shorter names.
PRETRAIN_OPTIONS = {"epochs": "pretrain_epochs", "batch_size": "pretrain_batch_size", "lr": "pretrain_lr",
                    "weight_decay": "pretrain_weight_decay"}


@training_command()
@data_options
@model_options
@click.option("--epochs", default=20, help="Pre-training epochs (passes over the training split).")
@click.option("--batch-size", default=DEFAULTS.pretrain_batch_size, help="Images per batch.")
@click.option("--lr", default=DEFAULTS.pretrain_lr, help="SGD learning rate (momentum 0.9, cosine decay to 0).")
@click.option("--weight-decay", default=DEFAULTS.pretrain_weight_decay, help="SGD weight decay.")
@test_ways_option
@click.option("--test-shots", default=1, help=TEST_SHOTS_HELP)
@test_queries_option
@val_episodes_option
@click.option("--test-episodes", default=DEFAULTS.test_episodes, help="Test episodes of the pre-trained encoder.")
@run_options
@deterministic_option
@patience_option
@click.option("--register/--no-register", default=False, help="Register the pre-trained model (fsl-pretrain).")
@registered_name_option
@system_metrics_option
@resume_option
def pretrain(register: bool, registered_model_name: str | None, system_metrics: bool, resume: str | None,
             **options: Any) -> None:
    """Pre-train the encoder as a classifier over all training classes (cross-entropy on batches
    of images; Chen et al. 2019), validate it by nearest prototype on the fixed val episodes after
    each epoch, keep the best, and test it as is. Fine-tune it with `fsl protonet --init runs:/ID`."""
    from fsl.commands.cmd_train import run_training

    cfg = train_config(options, renames=PRETRAIN_OPTIONS, fixed={"epochs": 0})
    try:
        run_training(cfg, _run_options(register, registered_model_name, system_metrics, resume), _reporter())
    except UsageError as exc:  # name this command's options, not the training fields they fill
        message = str(exc)
        for option, name in PRETRAIN_OPTIONS.items():
            message = message.replace(f"--{name.replace('_', '-')} ", f"--{option.replace('_', '-')} ")
        raise UsageError(message) from None


def _values(text: str, cast: Callable = str) -> list:
    try:
        return [cast(v.strip()) for v in text.split(",") if v.strip()]
    except (ValueError, KeyError) as exc:
        raise click.BadParameter(f"cannot read {text!r} as a comma-separated list: {exc}") from exc


seeds_option = click.option(
    "--seeds", default="auto", help="Train every grid point once per seed (e.g. 0,1,2) and aggregate over "
    "them: mean ± 95% t-CI, paired differences to --baseline. auto = once, with --seed.")


@training_command("sweep-m")
@training_options
@hallucination_options
@sweep_tracking_options
@click.option("--values", default="0,10,50,100", help="Values of M, comma-separated.")
@seeds_option
@click.option("--baseline", default=None, help="Pair every M with this point, seed by seed, e.g. M=0. "
              "[default: M=0 when 0 is among --values]")
def sweep_m(values: str, seeds: str, baseline: str | None, register_mode: str, no_register: bool,
            registered_model_name: str | None, system_metrics: bool, tsne: bool, **options: Any) -> None:
    """The M study: one hallucination model per M (M = 0 is a plain ProtoNet) and seed, nested
    runs under one parent with a table and a plot of test accuracy ± CI against M."""
    from fsl.commands.cmd_sweep import run_sweep
    from fsl.sweeps import parse_seeds

    ms = _values(values, int)
    run_sweep(train_config(options), {"M": ms},
              _run_options(False, registered_model_name, system_metrics, tsne=tsne),
              _reporter(), seeds=parse_seeds(seeds), baseline=baseline or ("M=0" if 0 in ms else None),
              register="none" if no_register else register_mode)


@training_command()
@training_options
@hallucination_options
@click.option("--param", "params", multiple=True, required=True,
              help="A swept option and its values, e.g. --param shots=1,5 --param distance=l2,cosine; a component "
              "setting by its dotted name, e.g. --param hallucinator.diversity_weight=0.1,0.3.")
@click.option("--method", type=click.Choice(METHODS), default="protonet",
              help="Train plain ProtoNets, or hallucination models.")
@click.option("--shard", default=0, help="This process's share of the grid: points with index % --shards == --shard.")
@click.option("--shards", default=1, help="How many processes share the grid.")
@seeds_option
@click.option("--baseline", default=None, help="FIELD=VALUE, e.g. M=0: pair every point with the point that "
              "differs from it only in FIELD, seed by seed (mean difference ± 95% t-CI over seeds).")
@sweep_tracking_options
def sweep(params: tuple[str, ...], method: str, shard: int, shards: int, seeds: str, baseline: str | None,
          register_mode: str, no_register: bool, registered_model_name: str | None, system_metrics: bool,
          tsne: bool, **options: Any) -> None:
    """Train and test a grid of configurations as nested runs under one parent run."""
    from fsl.commands.cmd_sweep import run_sweep
    from fsl.sweeps import parse_grid, parse_seeds

    base = train_config(options, fixed=PROTONET if method == "protonet" else None)
    run_sweep(base, parse_grid(base, params), _run_options(False, registered_model_name, system_metrics, tsne=tsne),
              _reporter(), seeds=parse_seeds(seeds), baseline=baseline, shard=shard, shards=shards,
              register="none" if no_register else register_mode)


DEFAULT_SPACE = ("lr=1e-4..1e-2:log",)


@training_command()
@training_options
@hallucination_options
@click.option("--param", "params", multiple=True,
              help="A searched option: a range lr=1e-4..1e-2:log (log-uniform) or ways=5..30 (an int option: "
              "integers), "
              "choices hallucinator=calibrated,wang, or a fixed value shots=5; a component setting by its dotted "
              "name. Several may share one --param, separated by spaces. [default: lr=1e-4..1e-2:log]")
@click.option("--method", type=click.Choice(METHODS), default="protonet",
              help="Train plain ProtoNets, or hallucination models.")
@click.option("--study", type=AUTO_TEXT, default=None,
              help="The study's name: workers given the same name (and store) work on "
              "one study. [default: named from the options and the space, so the same command joins it]")
@click.option("--storage", type=AUTO_TEXT, default=None, help="The study's Optuna database (SQLAlchemy URL), e.g. "
              "postgresql://host/fsl_optuna for workers on several machines. [default: <store>.optuna.db beside a "
              "local SQLite tracking store]")
@click.option("--trials", type=AUTO_INT, default=20, metavar="N", help="Finished (complete or pruned) trials "
              "the study runs, all workers together; auto = until --timeout.")
@click.option("--timeout", type=AUTO_FLOAT, default=None, help="Seconds after which this worker starts no trial.")
@click.option("--objective", default="best_val_acc", help="The validation figure maximised: best_val_acc or "
              "pretrain_best_val_acc. Never a test figure: settings selected on the test set are not tested by it.")
@click.option("--sampler-seed", default=0, help="TPE's seed in the worker that creates the study (a joining "
              "worker draws its own, logged on its trials).")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="median",
              help="Stop poor trials early from their per-epoch val_acc (and pretrain_val_acc).")
@click.option("--heartbeat", default=10.0, help="Seconds between a trial's heartbeats: a trial silent for 3 "
              "(its worker killed) is marked failed by another worker and run again.")
@click.option("--retest", default=0, help="Then train the K best settings again over --seeds and test them, "
              "paired seed by seed with the base configuration (one sweep).")
@click.option("--seeds", default="0,1,2", help="The seeds of --retest.")
@click.option("--register", "register_mode", type=click.Choice(["none", "best"]), default="none",
              help="best: register the best trial's model (as training registers one), once the study is done.")
@registered_name_option
def tune(params: tuple[str, ...], method: str, study: str | None, storage: str | None, trials: int | None,
         timeout: float | None, objective: str, sampler_seed: int, pruner: str, heartbeat: float, retest: int,
         seeds: str, register_mode: str, registered_model_name: str | None, **options: Any) -> None:
    """Search training settings with Optuna (TPE, pruning): each trial a run nested under the
    study's parent run, selected on validation accuracy only. Run it on several machines (or
    several times on one) with the same --study and store, and the workers share the study."""
    from fsl.commands.cmd_tune import TuneSettings, run_tune
    from fsl.search_space import parse_space
    from fsl.sweeps import parse_seeds

    base = train_config(options, fixed=PROTONET if method == "protonet" else None)
    items = [word for text in params for word in text.split() if word.lower() != "none"] or list(DEFAULT_SPACE)
    settings = TuneSettings(study=study, storage=storage, trials=trials, timeout=timeout, objective=objective,
                            sampler_seed=sampler_seed, pruner=pruner, heartbeat=heartbeat, retest=retest,
                            seeds=tuple(parse_seeds(seeds) or ()), register=register_mode)
    run_tune(base, parse_space(base, items), settings,
             _run_options(False, registered_model_name, False), _reporter())


@cli.group()
def data() -> None:
    """Inspect data sets and the decoded-data cache (no MLflow run)."""


@data.command(context_settings=SHOW)
@click.argument("path")
@format_option
@format_arg_option
@image_size_option
@split_options
def inspect(path: str, format: str | None, image_size: int | None, **splits: Any) -> None:
    """Print the format, splits, classes, images per class and image size of PATH."""
    from fsl.data import load_dataset

    cfg = DataConfig(data=path, format=format, image_size=image_size, **data_config_options(splits))
    cfg.validate()
    click.echo(load_dataset(path, image_size, format, **cfg.read_options()).describe())


@data.command(context_settings=SHOW)
@click.option("--clear", is_flag=True, help="Remove every cached data set and every kept checkpoint folder.")
def cache(clear: bool) -> None:
    """List the decoded data sets and the checkpoints of unfinished runs under the cache
    folder ($FSL_CACHE_DIR), with sizes."""
    from fsl.data.cache import describe_cache

    for line in describe_cache(clear):
        click.echo(line)


@cli.command(context_settings=SHOW)
@data_options
@click.option("--split", type=click.Choice([*SPLITS, "all"]), default="test",
              help="Split to draw from; all = every class of the data set (as a test set).")
@click.option("-n", "--episodes", "count", default=600, help="Number of episodes.")
@click.option("--ways", default=5, help="Classes per episode.")
@click.option("--shots", default=1, help="Support images per class.")
@click.option("--queries", default=15, help="Query images per class.")
@click.option("--seed", default=0, help="Seed of the episode draw.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="CSV file to write.")
def episodes(split: str, count: int, ways: int, shots: int, queries: int, seed: int, out: str,
             **options: Any) -> None:
    """Write a fixed, shareable episode file (CSV: episode,role,label,path)."""
    from fsl.commands.cmd_episodes import write_episodes

    write_episodes(EpisodeFileConfig(split=split, count=count, ways=ways, shots=shots, queries=queries, seed=seed,
                                     **data_config_options(options)), out, _reporter())


@cli.command(context_settings=SHOW)
@click.option("--model", "model_spec", required=True,
              help="A checkpoint (.pt) or an MLflow URI: runs:/ID, runs:/ID/path.pt, models:/NAME@ALIAS.")
@data_options
@test_ways_option
@click.option("--test-shots", default=1, help=TEST_SHOTS_HELP)
@test_queries_option
@click.option("--test-episodes", default=DEFAULTS.test_episodes, help="Test episodes.")
@click.option("--episodes", "episodes_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Evaluate on the episodes of this CSV file instead of sampling new ones.")
@click.option("--split", "test_split", type=click.Choice(["test", "all"]), default="test",
              help="Test on the data set's test split, or on every class of it (a data set the model never saw).")
@click.option("--test-seed", type=AUTO_INT, default=None,
              help="Seed of the test episodes and test-time noise. [default: the training's test seed + 1, so new "
              "episodes; give the training's --test-seed to reproduce its test]")
@click.option("--head", "heads", default=None, metavar="HEAD[,HEAD...]",
              help="Test with these heads, each on the same episodes and features (the encoder runs once); "
              "transductive results are labelled so. [default: the model's own]")
@setting_option("head", "heads")
@test_run_options
def evaluate(model_spec: str, episodes_file: str | None, heads: str | None, head_arg: tuple[str, ...],
             **options: Any) -> None:
    """Evaluate a saved model on new test episodes, or on an episode file (one MLflow run)."""
    from fsl.commands.cmd_evaluate import run_evaluation
    from fsl.settings import parse_pairs

    cfg = EvaluationConfig(**data_config_options(options), heads=tuple(_values(heads)) if heads else (),
                           head_args=parse_pairs(head_arg, "--head-arg"))
    run_evaluation(model_spec, cfg, episodes_file, _reporter())


@cli.command(context_settings=SHOW)
@click.option("--run-id", required=True, help="A finished training run.")
@registered_name_option
@click.option("--allow-failed", is_flag=True, help="Also register a run that did not finish (FAILED or KILLED).")
def register(run_id: str, registered_model_name: str | None, allow_failed: bool) -> None:
    """Register a chosen run's best checkpoint; `champion` moves only if it beats the champion
    under the same protocol. The run's status is never changed."""
    from fsl.commands.cmd_register import register_run

    register_run(run_id, registered_model_name, allow_failed, _reporter())


@cli.command(context_settings=SHOW)
@click.option("--model", "model_spec", required=True, help="models:/NAME@ALIAS, runs:/ID or a checkpoint.")
@click.option("--support", "support_dir", required=True, help="A folder with one sub-folder of images per class.")
@click.option("--query", "query_dir", required=True, help="A folder of images to classify.")
@click.option("--out", default=None, help="Also write the table as CSV here.")
def predict(model_spec: str, support_dir: str, query_dir: str, out: str | None) -> None:
    """Classify new images: print query file, predicted class and probability."""
    from fsl.commands.cmd_predict import predict_folder

    predict_folder(model_spec, support_dir, query_dir, out, _reporter())


@cli.command(context_settings=SHOW)
@click.argument("axis", required=False, type=click.Choice(["encoder", "hallucinator", "format"]))
def components(axis: str | None) -> None:
    """List the registered components of AXIS (default: every axis) with their settings, as
    `--<axis>-arg NAME=VALUE` and `--param <axis>.NAME=...` take them."""
    from fsl.config import COMPONENT_AXES

    for name, table in COMPONENT_AXES.items():
        if axis in (None, name):
            click.echo(f"{name} (--{name}; settings: --{name}-arg NAME=VALUE)")
            for component in table:
                doc = (getattr(table[component], "__doc__", None) or "").strip().splitlines()
                click.echo(f"  {component}: {doc[0] if doc else ''}")
                for spec in table.settings(component).values():
                    click.echo(f"      {spec.describe()}")


@cli.command(context_settings=SHOW)
def recipes() -> None:
    """List the shipped recipes (`--recipe NAME`): what each sets and where its figures are."""
    from fsl.recipes import load_recipe, shipped

    for name in shipped():
        recipe = load_recipe(name)
        assert recipe is not None
        click.echo(f"{name}: {recipe.description}\n    {recipe.command_line()}\n    figures: {recipe.evidence}")


def main() -> None:
    cli(prog_name="fsl")
