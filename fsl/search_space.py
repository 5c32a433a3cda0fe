"""`fsl tune`'s search space: pure parsing and checking, no Optuna, no MLflow.

`--param` is spelled as in `fsl sweep`, with ranges added:
- `lr=1e-4..1e-2:log`, `ways=5..30`: a range (an int range for an int option), log-uniform with `:log`;
- `hallucinator=calibrated,wang`: a choice;
- `shots=5`: a value fixed for every trial (any training option can also be given as usual).

A name is a training option or a component setting by its dotted name
(`hallucinator.diversity_weight`), typed as `fsl.sweeps.parse_grid` types it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from fsl.config import COMPONENT_AXES, TrainConfig
from fsl.errors import UsageError
from fsl.sweeps import option_name, parse_grid

RANGE, CHOICE, FIXED = "range", "choice", "fixed"


@dataclass(frozen=True)
class Axis:
    """One --param: a range [low, high] (int or float, `log`-uniform or not), a choice, or a fixed value."""

    name: str
    kind: str
    values: tuple[Any, ...]  # range: (low, high); choice: the choices; fixed: (value,)
    log: bool = False

    def spelled(self) -> str:
        """As it is written on the command line, e.g. `lr=0.0001..0.01:log`."""
        text = ",".join("none" if v is None else str(v) for v in self.values)
        if self.kind == RANGE:
            text = f"{self.values[0]}..{self.values[1]}" + (":log" if self.log else "")
        return f"{self.name}={text}"

    def suggest(self, trial: Any) -> Any:
        """This axis's value for an Optuna trial."""
        if self.kind == FIXED:
            return self.values[0]
        if self.kind == CHOICE:
            return trial.suggest_categorical(self.name, list(self.values))
        low, high = self.values
        if isinstance(low, int):
            return trial.suggest_int(self.name, low, high, log=self.log)
        return trial.suggest_float(self.name, low, high, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    axes: tuple[Axis, ...]

    @property
    def searched(self) -> tuple[Axis, ...]:
        return tuple(a for a in self.axes if a.kind != FIXED)

    def fixed_values(self) -> dict[str, Any]:
        return {a.name: a.values[0] for a in self.axes if a.kind == FIXED}

    def signature(self) -> str:
        """What a study is keyed on besides its name: workers joining it must search the same space."""
        return json.dumps([a.spelled() for a in self.axes])

    def describe(self) -> str:
        return ", ".join(a.spelled() for a in self.axes) or "(nothing)"

    def corners(self) -> list[dict[str, Any]]:
        """Values to check before any work: every bound and every choice, each with the other
        axes at their first value (a bound out of an option's range fails here, not in trial 7)."""
        first = {a.name: a.values[0] for a in self.axes}
        return [first | {a.name: v} for a in self.axes for v in a.values]


def parse_space(base: TrainConfig, items: Sequence[str]) -> SearchSpace:
    """`--param` items -> the search space, every value typed and checked against `base` (see the
    module's docstring). UsageError naming the item for: no `=`, an unknown name, an empty range
    (low >= high), a log range with a bound <= 0, a range over an option that is not a number, a
    name given twice, and any bound or choice the training options refuse."""
    axes: list[Axis] = []
    # the component choices (`hallucinator=improved,wang`): what types a component setting's values
    context = [i.strip() for i in items if i.partition("=")[0].strip() in COMPONENT_AXES and ".." not in i]
    for item in items:
        key, sep, text = item.partition("=")
        name = option_name(key)
        if not sep or not text.strip():
            raise UsageError(f"--param must be NAME=LOW..HIGH[:log], NAME=A,B,... or NAME=VALUE, got {item!r}")
        if any(a.name == name for a in axes):
            raise UsageError(f"--param {name} is given twice")
        text = text.strip()
        log = text.endswith(":log")
        body = text.removesuffix(":log")
        if ".." in body:
            axes.append(_range(base, name, body, log, item, context))
        else:
            if log:
                raise UsageError(f"--param {item}: :log applies to a range LOW..HIGH")
            values = parse_grid(base, [*context, f"{name}={body}"])[name]
            if not values:
                raise UsageError(f"--param {item}: no values")
            axes.append(Axis(name, CHOICE if len(values) > 1 else FIXED, tuple(dict.fromkeys(values))))
    space = SearchSpace(tuple(axes))
    for corner in space.corners():
        base.with_values(corner).validate()  # UsageError naming the option
    return space


def _range(base: TrainConfig, name: str, body: str, log: bool, item: str, context: list[str]) -> Axis:
    low_text, _, high_text = body.partition("..")
    if not low_text.strip() or not high_text.strip():
        raise UsageError(f"--param {item}: a range needs two bounds, LOW..HIGH")
    low, high = parse_grid(base, [*context, f"{name}={low_text.strip()},{high_text.strip()}"])[name]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise UsageError(f"--param {item}: {name} is not a number, so it takes choices (A,B,...), not a range")
    if low >= high:
        raise UsageError(f"--param {item}: an empty range ({low} is not below {high}; for one value write "
                         f"{name}={low_text.strip()})")
    if log and low <= 0:
        raise UsageError(f"--param {item}: a log range needs bounds above 0, got {low}")
    return Axis(name, RANGE, (low, high), log)
