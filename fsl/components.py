"""The components: the one list of names of each extension axis, imported on use.

A table maps a name to "module:attribute" (or to the object itself), so that the command line
can list and check the names without importing torch, and the object is imported only when it
is used. A new hallucinator, encoder or data format (reader) is one class plus one line:

    HALLUCINATORS.register("mine", "my_package.module:MyHallucinator")   # or the class itself

Its settings are declared on the class (`fsl.settings`), and `create(name, *args, **settings)`
builds it with them checked. The CLI's choices, `TrainConfig.validate`, checkpoints and
registered models all read these tables. ("Registry" here is a plug-in table; the MLflow Model
Registry is `fsl.tracking.model_registry`.)
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Iterator, Mapping

from fsl.settings import Spec, resolve, specs


class Registry:
    """An ordered name -> component table whose entries may be "module:attribute" strings."""

    def __init__(self, kind: str, entries: dict[str, Any]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def register(self, name: str, target: Any) -> None:
        """Add (or replace) `name`; `target` is the object or a "module:attribute" string."""
        self._entries[name] = target

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> Any:
        """The registered object (imported on first use); KeyError naming the choices."""
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}")
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            target = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return target

    def settings(self, name: str) -> dict[str, Spec]:
        """The settings component `name` declares (`fsl.settings.specs`), in declaration order."""
        return specs(self[name])

    def resolve(self, name: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every setting of `name`: `given` cast and checked, the rest at their defaults;
        UsageError naming `--<kind>-arg` for an unknown setting or a bad value."""
        return resolve(self.kind, name, self[name], given or {})

    def create(self, name: str, *args: Any, **settings: Any) -> Any:
        """Component `name` built with `args` (its structural arguments: feature size, channels,
        ...) and its settings, checked (`resolve`). A function component (a distance, a head) is
        returned with its settings bound."""
        target = self[name]
        values = self.resolve(name, settings)
        if isinstance(target, type):
            return target(*args, **values)
        return functools.partial(target, *args, **values) if values or args else target


ENCODERS = Registry("encoder", {
    "conv4": "fsl.models.encoders:Conv4",
    "resnet12": "fsl.models.encoders:ResNet12",
})

HALLUCINATORS = Registry("hallucinator", {
    "wang": "fsl.models.hallucinator:WangHallucinator",
    "improved": "fsl.models.hallucinator:PrototypeResidualHallucinator",
    "calibrated": "fsl.models.hallucinator:CalibratedHallucinator",
})


# Test-time classifiers of a batch of episodes (`--head`): fsl.models.heads.
HEADS = Registry("head", {
    "prototype": "fsl.models.heads:Prototype",
    "logistic": "fsl.models.heads:Logistic",
    "bd-cspn": "fsl.models.heads:BDCSPN",
    "laplacian": "fsl.models.heads:Laplacian",
    "tim": "fsl.models.heads:TIM",
    "pt-map": "fsl.models.heads:PTMap",
})

# Query-to-prototype distances: (queries [..., Q, D], prototypes [..., N, D]) -> [..., Q, N].
DISTANCES = Registry("distance", {
    "l2": "fsl.models.distances:l2",
    "euclidean": "fsl.models.distances:euclidean",
    "cosine": "fsl.models.distances:cosine",
    "dot": "fsl.models.distances:dot",
})

# `--augment` policies: (normalised batch, device generator, mean, std, per_image=True) -> augmented
# batch; per_image=False draws one transform for the whole batch (a test-time view, `--test-views`).
AUGMENTATIONS = Registry("augmentation", {
    "none": None,  # a bare --augment is omniglot (fsl 0.1)
    "omniglot": "fsl.data.augment:omniglot_augment",
    "standard": "fsl.data.augment:standard_augment",
})

# Detection tries the formats in this order (a catch-all one last): the order of fsl 0.1.
READERS = Registry("format", {
    "l2l-pickle": "fsl.data.formats:Learn2LearnPickle",
    "metaoptnet-pickle": "fsl.data.formats:MetaOptNetPickle",
    "ravi": "fsl.data.formats:Ravi",
    "course": "fsl.data.formats:Course",
    "split-folders": "fsl.data.formats:SplitFolders",
    "class-folders": "fsl.data.formats:ClassFolders",
})


def is_test_time(hallucinator: str | None) -> bool:
    """Whether `hallucinator` does not act in training (the trained weights do not depend on M,
    so a sweep trains one model per seed for all M). Imports the class."""
    return hallucinator is not None and not HALLUCINATORS[hallucinator].trains_with_encoder
