"""Recipes: named files of settings (nanoGPT's `config/*.py`, easyfsl's JSON configs).

A recipe is a small TOML file: a `description`, where its figures are (`evidence`), and a
`[settings]` table of training options by their names (`ways = 30`), component settings by
their dotted names (`"hallucinator.diversity_weight" = 0.3`). `fsl <command> --recipe NAME`
starts from it, and options given on the command line override it; the run logs the recipe's
name (param `recipe`) and, as always, every resolved setting. The shipped recipes are the files
of this folder (`fsl recipes` lists them); a path to a file of your own works the same.
A recipe may extend another (`base = "omniglot"`: a shipped name, or a path relative to the
recipe's own folder): the base's settings come first and the recipe's own override them, so a variant
(another head, another shot) states only what it changes, and a fix to the base reaches every
variant. benchmarks/recipes.sh and the README read the same files.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsl.errors import UsageError

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Recipe:
    """A named set of settings: `values` maps option (or dotted setting) names to values."""

    name: str
    description: str
    evidence: str
    values: dict[str, Any]

    def command_line(self) -> str:
        """The recipe as options, e.g. `--pretrain-epochs 10 --feature-transform cl2n`."""
        from fsl.settings import format_pairs

        words = []
        for key, value in self.values.items():
            if "." in key:
                axis, _, setting = key.partition(".")
                words.append(f"--{axis}-arg {format_pairs({setting: value})}")
            elif isinstance(value, bool):
                words.append(f"--{'' if value else 'no-'}{key.replace('_', '-')}")
            else:
                words.append(f"{'-M' if key == 'M' else '--' + key.replace('_', '-')} {value}")
        return " ".join(words)


def shipped() -> list[str]:
    """The names of the recipes that come with fsl."""
    return sorted(p.stem for p in HERE.glob("*.toml"))


def load_recipe(spec: str | None) -> Recipe | None:
    """The recipe `spec` names: a path to a TOML file if it ends in .toml or holds a /, else a
    shipped name; None for None or 'none'. UsageError naming the recipes for an unknown name, and
    the problem for a bad file."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    return _load(spec, Path(), ())


def _load(spec: str, folder: Path, chain: tuple[Path, ...]) -> Recipe:
    """The recipe `spec` (a path relative to `folder`, or a shipped name) with its bases' settings
    merged under its own; `chain` holds the recipes that extend it, to name a circle."""
    path = (folder / spec) if spec.endswith(".toml") or "/" in spec else HERE / f"{spec}.toml"
    label = f"--recipe {_name(chain[0])}: its base {spec}" if chain else f"--recipe {spec}"
    if not path.is_file():
        raise UsageError(f"{label}: no such recipe (shipped: {', '.join(shipped())}; or a path to a .toml "
                         f"file)")
    if path.resolve() in {p.resolve() for p in chain}:
        names = " -> ".join(_name(p) for p in (*chain, path))
        raise UsageError(f"--recipe {_name(chain[0])}: its bases extend each other in a circle ({names})")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{label}: not a readable TOML file ({exc})") from None
    base = data.get("base")
    if base is not None and not (isinstance(base, str) and base.strip()):
        raise UsageError(f"{label}: base must be a recipe's name or path, not {base!r}")
    own = data.get("settings")
    if not isinstance(own, dict) or not (own or base):  # with a base, an empty [settings] is an alias
        raise UsageError(f"{label}: no [settings] table of options")
    values = _load(base, path.parent, (*chain, path)).values if base else {}
    return Recipe(_name(path), str(data.get("description", "")), str(data.get("evidence", "")), {**values, **own})


def _name(path: Path) -> str:
    """A shipped recipe by its name, another by its path as given."""
    return path.stem if path.resolve().parent == HERE else str(path)
