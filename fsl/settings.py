"""Component settings, declared once, on the component.

A registered component (an encoder, hallucinator, head or data reader) declares its settings as
keyword-only parameters of its constructor, each annotated with a `Setting` that gives its help
and bounds; the default is the parameter's own:

    class WangHallucinator(Hallucinator):
        def __init__(self, feature_dim: int, *,
                     dropout: Annotated[float, Setting("Dropout after each hidden layer.", low=0, high=1,
                                                       high_open=True)] = 0.5) -> None:
            ...
            self.dropout = dropout          # every setting is kept under its own name

From that one declaration, and nothing else:
- `Registry.create(name, *args, **settings)` builds it with checked, typed settings;
- the CLI takes them as `--hallucinator-arg dropout=0.3`, `fsl components` lists them;
- a run logs them as params `hallucinator.dropout` (`dotted`), a sweep grids over them
  (`--param hallucinator.dropout=0.3,0.5`), MLproject passes them (`-P hallucinator_args=...`);
- checkpoints and registered models save them (`settings_of(component)`), and rebuild with them.

A setting added later gets, on runs made before it, its default: a run whose setting is at the
default keeps the identity (`fsl.config_hash`) it had before the setting existed
(`fsl.compat.canonical_params`), so adding one touches no other file.

This module imports no torch.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from fsl.errors import UsageError

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class Setting:
    """What a setting means and what it may be: the help line, inclusive bounds `low` / `high`
    (`*_open`: strict), or `choices` for a text setting."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None

    def bounds(self) -> str:
        """The range as people read it: 'between 0 and 1', 'at least 0', 'greater than 0'."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        low = high = None
        if self.low is not None:
            low = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        if self.high is not None:
            high = f"less than {self.high:g}" if self.high_open else f"at most {self.high:g}"
        if low and high:
            return f"{low} and {high}"
        return low or high or "any value"


@dataclass(frozen=True)
class Spec:
    """One declared setting: its name, type (bool, int, float or str), default and `Setting`."""

    name: str
    type: type
    default: Any
    setting: Setting

    def cast(self, value: Any) -> Any:
        """`value` (as typed on a command line, logged, or given in Python) as this setting's type;
        ValueError if it is not one ('3' and 3.0 are the integer 3; 'yes' is True)."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
                return value.strip().lower() in TRUE
            raise ValueError(f"{value!r} is not true or false")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{value!r} is not a {self.type.__name__}")
        if self.type is str:
            return str(value).strip()
        number = float(value)  # ValueError for text that is not a number
        if self.type is float:
            return number
        if not number.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(number)

    def check(self, value: Any) -> str | None:
        """What is wrong with a cast value, or None."""
        s = self.setting
        if s.choices is not None:
            return None if value in s.choices else f"must be {s.bounds()}, got {value!r}"
        if self.type in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                return f"must be a finite number, got {value}"
            too_low = s.low is not None and (value <= s.low if s.low_open else value < s.low)
            too_high = s.high is not None and (value >= s.high if s.high_open else value > s.high)
            if too_low or too_high:
                return f"must be {s.bounds()}, got {value}"
        return None

    def describe(self) -> str:
        """`name` (type, default D; bounds): help, for `fsl components`."""
        bounds = self.setting.bounds()
        extra = "" if bounds == "any value" else f"; {bounds}"
        return f"{self.name} ({self.type.__name__}, default {self.default!r}{extra}): {self.setting.help}"


def specs(target: Any) -> dict[str, Spec]:
    """The settings a component declares: its keyword-only parameters annotated with `Setting`
    (a class's are its constructor's), in declaration order. A component without any has none."""
    return dict(_specs(target))


@functools.lru_cache(maxsize=None)
def _specs(target: Any) -> dict[str, Spec]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception:  # an annotation that does not resolve: no declared settings can be read from it
        hints = {}
    out = {}
    for parameter in inspect.signature(function).parameters.values():
        hint = hints.get(parameter.name)
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or typing.get_origin(hint) is not typing.Annotated:
            continue
        base, *metadata = typing.get_args(hint)
        declared = [m for m in metadata if isinstance(m, Setting)]
        if declared:
            if base not in (bool, int, float, str):
                raise TypeError(f"{target.__qualname__}: setting {parameter.name!r} must be bool, int, float or str")
            out[parameter.name] = Spec(parameter.name, base, parameter.default, declared[0])
    return out


def resolve(kind: str, name: str, target: Callable, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of component `name` of axis `kind`: the given ones cast and checked, the rest
    at their defaults, in declaration order. UsageError naming the option (`--<kind>-arg`) for an
    unknown setting or a bad value."""
    declared = specs(target)
    out = {key: spec.default for key, spec in declared.items()}
    for key, value in given.items():
        if key not in declared:
            have = f"its settings: {', '.join(declared)}" if declared else "it has none"
            raise UsageError(f"--{kind}-arg {key}: {kind} {name!r} has no setting {key!r} ({have})")
        spec = declared[key]
        try:
            cast = spec.cast(value)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--{kind}-arg {key}: {exc}") from None
        problem = spec.check(cast)
        if problem:
            raise UsageError(f"--{kind}-arg {key}: {name}'s {key} {problem}")
        out[key] = cast
    return out


def settings_of(component: Any) -> dict[str, Any]:
    """The settings a built component holds (each kept under its own name), for its checkpoint."""
    return {key: getattr(component, key) for key in specs(type(component))}


def parse_pairs(items: str | Sequence[str] | None, option: str) -> dict[str, str]:
    """`k=v` items (each may hold several, comma-separated; 'none' or '' is none) -> {k: v}.
    UsageError naming `option` for an item without '='."""
    texts = [items] if isinstance(items, str) else list(items or ())
    out: dict[str, str] = {}
    for text in texts:
        for item in text.split(","):
            item = item.strip()
            if not item or item.lower() == "none":
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"{option} must be NAME=VALUE (several comma-separated), got {item!r}")
            out[key.strip().replace("-", "_")] = value.strip()
    return out


def format_pairs(values: Mapping[str, Any]) -> str:
    """{k: v} -> 'k=v,k=v' ('none' when empty): how MLproject and run names spell settings."""
    return ",".join(f"{k}={v}" for k, v in values.items()) or "none"
