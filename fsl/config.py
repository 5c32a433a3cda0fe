"""Typed run configuration, flattened under the CLI's option names for logging.

A training run is described by one frozen dataclass, `TrainConfig`, assembled from one group per
concern: the data (`DataConfig`), the episodes (`EpisodeConfig`), the model (`ModelSpec`: its
components and their settings), the schedule (`ScheduleConfig`), the test (`TestConfig`) and
where it runs (`RuntimeConfig`). Field names are the option names with dashes turned into
underscores (and `M` for `-M/--hallucinations`), which are also the MLproject parameter names,
so a value has one name from the command line to the MLflow UI. A component's settings are the
dict `<axis>_args` (`encoder_args`, `hallucinator_args`, `format_args`), logged as dotted params
(`encoder.width`); what each setting is, is declared on the component (`fsl.settings`).

The defaults here are the only ones: the CLI's options and MLproject's parameters read them
(a test checks MLproject against the CLI). This module imports no torch, so `fsl --help` is fast
(settings are checked at run time, importing their component).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Mapping

from fsl import compat
from fsl.choices import COMPILE_MODES, DEVICES, FEATURE_TRANSFORMS, PRECISIONS
from fsl.components import AUGMENTATIONS, DISTANCES, ENCODERS, HALLUCINATORS, HEADS, READERS, Registry
from fsl.errors import UsageError

if TYPE_CHECKING:
    from fsl.data.episodes import EpisodeShape

# `fsl hallucinate`'s own defaults (a ProtoNet run has no hallucinator and M = 0).
DEFAULT_HALLUCINATOR = "calibrated"  # issue 10: the replicated study in BENCHMARKS.md §4
DEFAULT_M = 100
# Upper bounds that keep a typo from asking for terabytes: Conv-4 at 512 px already makes
# 65,536-d features, and M = 1,000 hallucinations per class is 10x the paper's largest study.
MAX_IMAGE_SIZE = 512
MAX_M = 1000
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer
# Episode and epoch counts: room for real schedules (the paper's 20,000 training episodes, 10^5
# test episodes), not for a typo that would run until it is killed (10^12).
MAX_EPISODES = 10**6
MAX_EPOCHS = 10**4
MAX_EXPERIMENT_NAME = 256
MAX_TEST_VIEWS = 64  # each view is one more encoder pass over every test image
TEST_SPLITS = ("test", "all")  # --test-split: the test split of --test-data, or every class of it
INPUT_NORMS = ("data", "unit")  # --input-norm: the training split's mean and std, or none ([0, 1])
BATCH_NORMS = ("episode", "split")  # --batch-norm: one encoder call per episode, or support and query apart

# The axes whose components have settings: axis (the option that names the component) -> its
# table. The settings of the component named by option `<axis>` are the field `<axis>_args`, the
# option `--<axis>-arg`, the params `<axis>.<setting>` and the MLproject parameter `<axis>_args`.
COMPONENT_AXES: dict[str, Registry] = {"encoder": ENCODERS, "hallucinator": HALLUCINATORS, "head": HEADS,
                                        "format": READERS}


def check_head_takes(head: str, encoder: str) -> None:
    """UsageError where test-time head `head` cannot take the features of encoder `encoder`:
    PT-MAP power-transforms the raw features, which needs them >= 0, and ResNet-12's leaky ReLU
    makes them negative (training options and `fsl evaluate --head` on a saved model alike)."""
    if head == "pt-map" and encoder == "resnet12":
        raise UsageError("--head pt-map power-transforms the features, which needs them >= 0, and the resnet12 "
                         "encoder (leaky ReLU) makes them negative too")


def head_feature_warning(head: str, feature_transform: str, trained: bool = False) -> str | None:
    """The warning line where test-time head `head` gets features other than those its reference
    feeds it (`Head.wants_features`), else None: a warning, not a refusal, since a user may want to
    measure it. `trained`: the model exists (fsl evaluate, predict), so the advice is to train one
    with the right transform (CL2N's centre is the training classes' mean, kept at training)."""
    wanted = getattr(HEADS[head], "wants_features", None)
    if wanted is None or feature_transform == wanted:
        return None
    fix = f"a model trained with --feature-transform {wanted}" if trained else f"--feature-transform {wanted}"
    return (f"warning: head {head} expects {wanted} features, as its reference, and this model's are "
            f"'{feature_transform}': it can score near chance without them (use {fix})")


@dataclass(frozen=True)
class DataConfig:
    """Which data set a command reads, and how: the options of every command that takes --data.
    Each field is the option of the same name; its help, written once, is in fsl/cli.py."""

    data: str = "synthetic"
    format: str | None = None
    image_size: int | None = None
    channels: int | None = None
    rotations: bool = False
    reflections: bool = False
    split_ratio: str | None = None
    split_file: str | None = None
    val_share: float | None = None
    format_args: dict[str, Any] = field(default_factory=dict)  # the reader's own settings (needs --format)

    @property
    def split_ratios(self) -> tuple[float, float, float] | None:
        """--split-ratio as three floats (checked by `validate`), or None for the format's default."""
        if self.split_ratio is None:
            return None
        parts = tuple(float(v) for v in str(self.split_ratio).split(","))
        return parts  # type: ignore[return-value]

    def read_options(self) -> dict[str, Any]:
        """The split and reader keywords of `fsl.data.load_dataset` for --data."""
        return {"split_ratio": self.split_ratios, "split_file": self.split_file, "val_share": self.val_share,
                "format_args": dict(self.format_args)}

    def _validate_size(self) -> None:
        if self.image_size is not None and not 16 <= self.image_size <= MAX_IMAGE_SIZE:
            raise UsageError(f"--image-size must be between 16 (Conv-4 halves it four times) and {MAX_IMAGE_SIZE}, "
                             f"got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"--channels must be 1 or 3, got {self.channels}")

    def _validate_data_name(self) -> None:
        if not self.data.strip():
            raise UsageError("--data must not be empty (use 'synthetic' for the built-in set)")

    def _validate_split_options(self) -> None:
        if self.split_ratio is not None:
            try:
                ratios = self.split_ratios
            except ValueError:
                ratios = None
            if ratios is None or len(ratios) != 3 or any(not math.isfinite(r) or r < 0 for r in ratios) \
                    or abs(sum(ratios) - 1) > 1e-6:
                raise UsageError(f"--split-ratio must be three shares TRAIN,VAL,TEST, each >= 0, summing to 1 "
                                 f"(e.g. 0.9,0.1,0), got {self.split_ratio!r}")
        if self.split_ratio is not None and self.split_file is not None:
            raise UsageError("--split-ratio and --split-file both choose the splits: give one")
        if self.val_share is not None and not (math.isfinite(self.val_share) and 0 < self.val_share < 1):
            raise UsageError(f"--val-share must be between 0 and 1 (exclusive), got {self.val_share}")

    def _validate_format_args(self) -> None:
        if self.format_args and self.format is None:
            raise UsageError("--format-arg sets a reader's own settings: name the reader with --format")
        if self.format is not None and self.format in READERS:
            READERS.resolve(self.format, self.format_args)

    def validate(self) -> None:
        """UsageError naming the option for a value outside its range, before anything is read."""
        self._validate_size()
        self._validate_data_name()
        self._validate_split_options()
        self._validate_format_args()


@dataclass(frozen=True)
class EvaluationConfig(DataConfig):
    """`fsl evaluate`: a saved model tested on new episodes of --data (or on an episode file)."""

    test_ways: int = 5
    test_shots: int = 1
    test_queries: int = 15
    test_episodes: int = 600
    test_seed: int | None = None  # None: the training's test seed + 1 (`fresh_test_seed`), new episodes
    test_split: str = "test"
    device: str = "auto"
    experiment: str = "fsl"
    heads: tuple[str, ...] = ()            # --head a,b,c: each scored on the same episodes; () = the model's own
    head_args: dict[str, Any] = field(default_factory=dict)  # applied to each listed head that has the setting

    @property
    def test_shape(self) -> "EpisodeShape":
        from fsl.data.episodes import EpisodeShape

        return EpisodeShape(self.test_ways, self.test_shots, self.test_queries)

    def head_settings(self) -> dict[str, dict[str, Any]]:
        """Each --head with its settings, checked: a --head-arg goes to every listed head that
        declares it, and one that no listed head declares is refused."""
        from fsl.settings import specs

        out = {}
        for head in self.heads:
            _one_of("head", head, HEADS.names())
            out[head] = HEADS.resolve(head, {k: v for k, v in self.head_args.items() if k in specs(HEADS[head])})
        stray = [k for k in self.head_args if not any(k in specs(HEADS[h]) for h in self.heads)]
        if stray:
            listed = ", ".join(self.heads) or "listed"
            raise UsageError(f"--head-arg {stray[0]}: none of the heads ({listed}) has this setting (give --head)")
        return out

    def validate(self) -> None:
        """In TrainConfig's order of checks: counts and sizes, numbers, names, split options."""
        for name in ("test_queries", "test_episodes"):
            _at_least(name, getattr(self, name), 1)
        _at_most("test_episodes", self.test_episodes, MAX_EPISODES)
        _at_least("test_ways", self.test_ways, 2)
        _at_least("test_shots", self.test_shots, 1)
        self._validate_size()
        if self.test_seed is not None:
            _valid_seed("test_seed", self.test_seed)
        _validate_device(self.device)
        _validate_experiment(self.experiment)
        self._validate_data_name()
        self._validate_split_options()
        self._validate_format_args()
        _one_of("test_split", self.test_split, TEST_SPLITS)
        self.head_settings()


def fresh_test_seed(training_test_seed: int) -> int:
    """`fsl evaluate`'s default test seed: one past the training's, so that a model is tested on
    episodes its own run never scored (and its noise drawn anew); the training's own seed, given
    on purpose, reproduces the training's test."""
    return (training_test_seed + 1) % (MAX_SEED + 1)


@dataclass(frozen=True)
class EpisodeFileConfig(DataConfig):
    """`fsl episodes`: the episodes drawn into a file (`split` "all": every class, as a test set)."""

    split: str = "test"
    count: int = 600
    ways: int = 5
    shots: int = 1
    queries: int = 15
    seed: int = 0

    @property
    def shape(self) -> "EpisodeShape":
        from fsl.data.episodes import EpisodeShape

        return EpisodeShape(self.ways, self.shots, self.queries)

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.count <= MAX_EPISODES:
            raise UsageError(f"-n/--episodes must be between 1 and {MAX_EPISODES:,}, got {self.count:,}")
        _valid_seed("seed", self.seed)


@dataclass(frozen=True)
class EpisodeConfig:
    """The episodes: training's N-way K-shot Q-query shape, and validation's and test's."""

    ways: int = 5
    shots: int = 1
    queries: int = 15
    test_ways: int = 5
    test_shots: int | None = None          # None: --shots
    test_queries: int = 15


@dataclass(frozen=True)
class ModelSpec:
    """What model a run builds: its components (encoder, distance, hallucinator), their settings
    and the test-time feature options. Saved in every checkpoint (`fsl.models.classifier.model_config`)."""

    encoder: str = "conv4"                 # the network of Snell et al.: the baseline every result is paired with
    encoder_args: dict[str, Any] = field(default_factory=dict)
    # Euclidean, not squared: Snell et al.'s squared one ("l2") saturates the training softmax and
    # learned 7.0 points less on the built-in data (3 seeds) and 1.4 / 3.1 less on Omniglot (5
    # seeds; BENCHMARKS.md section 10)
    distance: str = "euclidean"
    logit_scale: float = 1.0               # logits = -scale x distance (TADAM's alpha); 1: Snell et al.'s
    learn_logit_scale: bool = False        # TADAM learns it, starting from logit_scale
    input_norm: str = "data"               # normalise images by the training split's mean and std (or "unit": [0, 1])
    # Hallucination (Wang et al. 2018); hallucinator None is a plain ProtoNet.
    hallucinator: str | None = None
    hallucinator_args: dict[str, Any] = field(default_factory=dict)
    M: int = 0
    augment: str = "none"
    head: str = "prototype"                # the test-time classifier; training and validation are the prototype's
    head_args: dict[str, Any] = field(default_factory=dict)
    feature_transform: str = "none"        # cl2n wins on the built-in data, loses on Omniglot (BENCHMARKS.md §6)
    test_views: int = 0                    # off: each view is one more encoder pass at validation and test

    def model_spec(self) -> "ModelSpec":
        """This config's model fields alone, as `build_model` and `model_config` take them."""
        return ModelSpec(**{f.name: getattr(self, f.name) for f in fields(ModelSpec)})


@dataclass(frozen=True)
class ScheduleConfig:
    """How the model is trained: episodic epochs, optional pre-training first, and the seeds."""

    epochs: int = 4                        # 2,000 episodes: the replicated study's schedule (BENCHMARKS.md §4)
    episodes_per_epoch: int = 500
    episodes_per_step: int = 1
    val_episodes: int = 100
    lr: float = 1e-3
    lr_step: int = 2000                    # the paper halves Adam's rate every 2,000 episodes
    patience: int = 0
    batch_norm: str = "episode"            # BatchNorm statistics over support and query together, as Snell et al.
    init: str | None = None
    # Pre-training (Chen et al. 2019): `fsl pretrain` is pre-training with no episodic epochs.
    pretrain_epochs: int = 0
    pretrain_lr: float = 0.05
    pretrain_batch_size: int = 64
    pretrain_weight_decay: float = 5e-4
    seed: int = 0
    val_seed: int = 1                      # part of the registry protocol: val accuracies compare only under it


@dataclass(frozen=True)
class TestConfig:
    """What the trained model is tested on."""

    test_data: str | None = None
    test_split: str = "test"
    test_episodes: int = 600               # as in the literature
    test_seed: int = 2


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a run computes, and where it is tracked."""

    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"
    deterministic: bool = False
    experiment: str = "fsl"
    recipe: str | None = None              # the --recipe the settings started from (logged; not the run's identity)


@dataclass(frozen=True)
class TrainConfig(RuntimeConfig, TestConfig, ScheduleConfig, ModelSpec, EpisodeConfig, DataConfig):
    """What a training run trains (`fsl protonet`, `fsl hallucinate`, `fsl pretrain`, sweeps): the
    fields of its groups, in this order: data, episodes, model, schedule, test, runtime. Every
    field is the `fsl` option of the same name (`image_size` is `--image-size`, `M` is `-M`), and
    what it means is that option's help, written once, in fsl/cli.py (`fsl protonet --help`). None
    means "decided at run time" (`auto` on the command line and in MLflow params). The comments
    say only why a default is what it is. `with_values` sets fields by option name, component
    settings by their dotted names and old option names by their aliases."""

    def __post_init__(self) -> None:
        # `augment` was a boolean before it named a policy: True (--augment) is `omniglot`.
        flag = {"true": "omniglot", "1": "omniglot", "yes": "omniglot", "false": "none", "0": "none", "no": "none"}
        if isinstance(self.augment, bool) or str(self.augment).lower() in flag:
            object.__setattr__(self, "augment", flag[str(self.augment).lower()])

    @property
    def train_shape(self) -> "EpisodeShape":
        from fsl.data.episodes import EpisodeShape

        return EpisodeShape(self.ways, self.shots, self.queries)

    @property
    def test_shape(self) -> "EpisodeShape":
        """Validation and test episodes use the test way, shot and queries."""
        from fsl.data.episodes import EpisodeShape

        return EpisodeShape(self.test_ways, self.test_shots or self.shots, self.test_queries)

    @property
    def method(self) -> str:
        if self.hallucinator:
            return "hallucinate"
        return "pretrain" if self.epochs == 0 else "protonet"  # `fsl pretrain`: no episodic epochs

    def settings(self, axis: str) -> dict[str, Any]:
        """Every setting of the component named by `axis` (`encoder`, `hallucinator`, ...), checked,
        the ones not given at their defaults; {} without that component. Imports the component."""
        name = getattr(self, axis)
        if name is None or name not in COMPONENT_AXES[axis]:
            return {}
        return COMPONENT_AXES[axis].resolve(name, getattr(self, f"{axis}_args"))

    def with_values(self, values: Mapping[str, Any]) -> "TrainConfig":
        """This config with `values` set: option names (`lr`, `shots`), component settings by their
        dotted names (`hallucinator.diversity_weight`) and old option names (`encoder_width`,
        `diversity_weight`, `hallucinations`: `fsl.compat.OPTION_ALIASES`). Values are not checked
        here (`validate` does); UsageError for a name that is none of these."""
        flat: dict[str, Any] = {}
        args = {axis: dict(getattr(self, f"{axis}_args")) for axis in COMPONENT_AXES}
        for key, value in values.items():
            key = compat.OPTION_ALIASES.get(key, key)
            axis, dot, setting = key.partition(".")
            if dot and axis in COMPONENT_AXES and setting:
                args[axis][setting] = value
            elif key in TrainConfig.__dataclass_fields__ and not key.endswith("_args"):
                flat[key] = value
            else:
                raise UsageError(f"{key!r} is not a training option or a component setting (such as "
                                 f"hallucinator.diversity_weight)")
        # a component named anew keeps the settings it also has (a width applies to both encoders);
        # the others were another component's
        for axis, table in COMPONENT_AXES.items():
            name = flat.get(axis, getattr(self, axis))
            if axis in flat and name != getattr(self, axis) and name in table:
                args[axis] = {k: v for k, v in args[axis].items() if k in table.settings(name)}
        changes: dict[str, Any] = flat | {f"{axis}_args": a for axis, a in args.items()}
        return replace(self, **changes)

    def validate(self) -> None:
        """Raise UsageError naming the option for any value outside its range: before any data
        is loaded and before any run opens. Checked in this order: counts and sizes, numbers,
        names, component settings, then the split options."""
        self._validate_counts()
        self._validate_numbers()
        self._validate_names()
        self._validate_feature_transform()
        for axis in ("encoder", "hallucinator", "head"):  # the reader's: with the data options
            if getattr(self, f"{axis}_args") and getattr(self, axis) is None:
                raise UsageError(f"--{axis}-arg: there is no {axis} to set (give --{axis})")
            self.settings(axis)
        self._validate_splits()

    def _validate_feature_transform(self) -> None:
        """Tukey's power transform and PT-MAP's (its own first step, on the raw features: the
        model's feature transform does not apply to PT-MAP) need features >= 0: Conv-4's are (a
        ReLU before the last max-pool), ResNet-12's are not (leaky ReLU), nor CL2N's."""
        _one_of("head", self.head, HEADS.names())
        negative = "--encoder resnet12 (leaky ReLU)" if self.encoder == "resnet12" else \
            "--feature-transform cl2n" if self.feature_transform == "cl2n" else None
        if self.feature_transform == "power" and negative:
            raise UsageError(f"--feature-transform power needs features >= 0, and {negative} makes them "
                             f"negative too: use --feature-transform none or cl2n")
        check_head_takes(self.head, self.encoder)  # CL2N does not apply to PT-MAP's features

    def _validate_counts(self) -> None:
        for name in ("shots", "queries", "test_queries", "episodes_per_epoch",
                     "episodes_per_step", "val_episodes", "test_episodes", "lr_step", "pretrain_batch_size"):
            _at_least(name, getattr(self, name), 1)
        _at_least("patience", self.patience, 0)
        _at_least("pretrain_epochs", self.pretrain_epochs, 0)
        _at_least("epochs", self.epochs, 0 if self.pretrain_epochs else 1)
        for name in ("episodes_per_epoch", "val_episodes", "test_episodes"):
            _at_most(name, getattr(self, name), MAX_EPISODES)
        for name in ("epochs", "pretrain_epochs"):
            _at_most(name, getattr(self, name), MAX_EPOCHS)
        # One class is no classification: loss 0 and 100% accuracy say nothing.
        _at_least("ways", self.ways, 2)
        _at_least("test_ways", self.test_ways, 2)
        if self.test_shots is not None:
            _at_least("test_shots", self.test_shots, 1)
        self._validate_size()

    def _validate_numbers(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive finite number, got {self.lr}")
        if not (math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise UsageError(f"--logit-scale must be a positive finite number, got {self.logit_scale}")
        if not (math.isfinite(self.pretrain_lr) and self.pretrain_lr > 0):
            raise UsageError(f"--pretrain-lr must be a positive finite number, got {self.pretrain_lr}")
        if not (math.isfinite(self.pretrain_weight_decay) and self.pretrain_weight_decay >= 0):
            raise UsageError(f"--pretrain-weight-decay must be a finite number >= 0, got {self.pretrain_weight_decay}")
        for name in ("seed", "val_seed", "test_seed"):
            _valid_seed(name, getattr(self, name))

    def _validate_names(self) -> None:
        _one_of("distance", self.distance, DISTANCES.names())
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("compile", self.compile, COMPILE_MODES)
        _one_of("encoder", self.encoder, ENCODERS.names())
        _one_of("augment", self.augment, AUGMENTATIONS.names())
        _one_of("feature_transform", self.feature_transform, FEATURE_TRANSFORMS)
        _one_of("input_norm", self.input_norm, INPUT_NORMS)
        _one_of("batch_norm", self.batch_norm, BATCH_NORMS)
        if not 0 <= self.test_views <= MAX_TEST_VIEWS:
            raise UsageError(f"--test-views must be between 0 and {MAX_TEST_VIEWS}, got {self.test_views}")
        if self.test_views and self.augment == "none":
            raise UsageError("--test-views draws its views from the training augmentation: "
                             "give --augment omniglot or standard, or --test-views 0")
        _validate_device(self.device)
        if self.hallucinator is not None:
            _one_of("hallucinator", self.hallucinator, HALLUCINATORS.names())
        if not 0 <= self.M <= MAX_M:
            raise UsageError(f"-M/--hallucinations must be between 0 and {MAX_M}, got {self.M}")
        _validate_experiment(self.experiment)
        self._validate_data_name()

    def _validate_splits(self) -> None:
        self._validate_split_options()
        self._validate_format_args()
        _one_of("test_split", self.test_split, TEST_SPLITS)
        if self.test_data is not None and not self.test_data.strip():
            raise UsageError("--test-data must not be empty")

    def resolved(self) -> "TrainConfig":
        """With `test_shots` decided and every component's settings filled in (checked)."""
        settings: dict[str, Any] = {f"{axis}_args": self.settings(axis) for axis in COMPONENT_AXES}
        # A run of no episodic epoch (pre-training alone, a test-time hallucinator on it) trains no
        # episode, and the nearest prototype is the same under the Euclidean distance and its
        # square: it keeps the square's name (the default before issue 32), and with it the
        # identity of every such run made before
        distance = "l2" if self.epochs == 0 and self.distance == "euclidean" else self.distance
        return replace(self, test_shots=self.test_shots or self.shots, distance=distance, **settings)

    def to_params(self) -> dict[str, Any]:
        """Flat dict of every value for MLflow params: keys named like the options, and each
        component setting as `<axis>.<setting>`."""
        resolved = self.resolved()
        params = {k: v for k, v in asdict(resolved).items() if not k.endswith("_args")}
        for axis in COMPONENT_AXES:
            params |= {f"{axis}.{k}": v for k, v in getattr(resolved, f"{axis}_args").items()}
        if not self.hallucinator:  # a ProtoNet run has no generator settings to record
            for key in [k for k in params if k in ("hallucinator", "M") or k.startswith("hallucinator.")]:
                params.pop(key)
        if not self.pretrain_epochs:  # nor a run without pre-training pre-training settings
            for key in PRETRAIN_FIELDS:
                params.pop(key)
        if self.method == "pretrain":  # nor `fsl pretrain` the settings of episodic training
            for key in EPISODIC_FIELDS:
                params.pop(key)
        return {k: (compat.UNSET_PARAMS.get(k, "none") if v is None else v) for k, v in params.items()}


# The fields that only episodic training reads.
EPISODIC_FIELDS = ("ways", "shots", "queries", "episodes_per_epoch", "episodes_per_step", "lr", "lr_step",
                   "compile", "init", "batch_norm")
# The fields that only pre-training reads.
PRETRAIN_FIELDS = ("pretrain_epochs", "pretrain_lr", "pretrain_batch_size", "pretrain_weight_decay")
# How a run made before today's spellings is recognised: `fsl.compat` (its one room).
canonical_params = compat.canonical_params


DEFAULTS = TrainConfig()
FIELD_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise UsageError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


def _valid_seed(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise UsageError(f"--{name.replace('_', '-')} must be between 0 and {MAX_SEED}, got {value}")


def _at_most(name: str, value: int, high: int) -> None:
    if value > high:
        raise UsageError(f"--{name.replace('_', '-')} must be at most {high:,}, got {value:,}")


def _validate_device(device: str) -> None:
    if not re.fullmatch(r"(auto|cpu|mps|cuda(:\d+)?)", device):
        raise UsageError(f"--device must be one of {', '.join(DEVICES)} or cuda:N, got {device!r}")


def _validate_experiment(experiment: str) -> None:
    if not experiment.strip():
        raise UsageError("--experiment must not be empty")
    if len(experiment) > MAX_EXPERIMENT_NAME or not experiment.isprintable():
        raise UsageError(f"--experiment must be at most {MAX_EXPERIMENT_NAME} printable characters, got "
                         f"{len(experiment)}")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {value!r}")
