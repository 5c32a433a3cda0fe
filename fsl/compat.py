"""One room for compatibility: everything an earlier fsl wrote that this one must still read.

Runs, checkpoints, registered models, serving models, data caches and episode files outlive the
code that made them. What they recorded is read through these tables, one per kind, after timm's
`register_model_deprecations`. **Nothing in them may move**: each row is how some saved thing
is spelled. Add rows; never edit one. The fixtures under tests/fixtures (saved models, config
hashes, data-set keys of earlier versions) check them.

- params and the run identity (`canonical_params`): how options were logged before;
- model configs (`current_model_config`): keys a saved model lacks or spells otherwise;
- state dicts (`current_state_dict`): weights saved under other names;
- class paths (`CLASS_ALIASES`): where pickled models (registered PyTorch models, serving twins
  of fsl 0.1.0) name their classes;
- reader keys (`SPLIT_OPTIONS_OF_V1`): what the built-in readers hash into their cache keys.

This module imports no torch; the few functions that need a component's declared defaults
import the registries when called.
"""

from __future__ import annotations

from typing import Any, Callable

# ------------------------------------------------------------------------------------------------
# Params and the run identity (`fsl.config_hash`)

# How an unset option is logged: `auto` where fsl decides (from the data, by default), `none`
# where nothing is used. Runs made before 2026-11-30 logged them as "" (a blank cell in the UI).
UNSET_PARAMS = {"format": "auto", "image_size": "auto", "channels": "auto", "split_ratio": "auto",
                "split_file": "auto", "val_share": "auto", "test_data": "auto", "init": "none"}

# Params added after fsl 0.1 with the value that reproduces a run made before them: at that
# value they are left out of the run identity, so `--resume` and sweep reuse still find the runs
# made before they existed. (Component settings need no row: at their declared default they are
# left out mechanically, `canonical_params`.)
PRE_CHANGE_PARAMS = {"encoder": "conv4", "encoder_width": 1.0, "feature_transform": "none", "split_ratio": "",
                     "split_file": "", "val_share": "", "test_data": "", "test_split": "test", "reflections": False,
                     "test_views": 0, "head": "prototype", "logit_scale": 1.0, "learn_logit_scale": False,
                     "input_norm": "data", "batch_norm": "episode"}

# `augment` was a boolean before it named a policy.
PRE_CHANGE_AUGMENT = {"none": False, "omniglot": True}

# Component settings that were flat options (and params) before settings belonged to components
# (fsl 0.2): the run identity spells them by their old names, so a run of either era is one run.
RENAMED_SETTINGS = {"encoder.width": "encoder_width", "hallucinator.diversity_weight": "diversity_weight"}

# Before fsl 0.2 every hallucination run logged `diversity_weight` (0.1 unless given), whatever
# its hallucinator; only `improved` read it. A run of another hallucinator gets that value back.
FLAT_DIVERSITY_WEIGHT = 0.1

# The old option names that stay as aliases of the new spellings (CLI, configs, sweeps, recipes).
OPTION_ALIASES = {"encoder_width": "encoder.width", "diversity_weight": "hallucinator.diversity_weight",
                  "hallucinations": "M"}


def component_default(axis: str, component: Any, setting: str) -> tuple[bool, Any]:
    """(True, the declared default) of `setting` of the registered `component` of `axis`
    (`fsl.config.COMPONENT_AXES`), or (False, None) where it is not known (an unregistered
    plug-in, an unset component)."""
    from fsl.config import COMPONENT_AXES

    registry = COMPONENT_AXES.get(axis)
    if registry is None or not isinstance(component, str) or component not in registry:
        return False, None
    specs = registry.settings(component)
    return (True, specs[setting].default) if setting in specs else (False, None)


def _same_as_default(axis: str, component: Any, setting: str, value: Any) -> bool:
    known, default = component_default(axis, component, setting)
    if not known:
        return False
    from fsl.config import COMPONENT_AXES

    try:
        return COMPONENT_AXES[axis].settings(component)[setting].cast(value) == default
    except (TypeError, ValueError):
        return False


def canonical_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` as a run of fsl 0.1 would have logged them, the form the run identity hashes:
    unset options spelled "" (UNSET_PARAMS); component settings under their old flat names
    (RENAMED_SETTINGS) or, at their declared default, left out; the flat `diversity_weight` of a
    hallucination run restored (FLAT_DIVERSITY_WEIGHT); options added since at the value that
    reproduces older runs left out (PRE_CHANGE_PARAMS); `augment` as the boolean it was."""
    params = {k: ("" if k in UNSET_PARAMS and v in ("", UNSET_PARAMS[k]) else v) for k, v in params.items()}
    for key in [k for k in params if "." in k]:
        axis, _, setting = key.partition(".")
        value = params.pop(key)
        if key in RENAMED_SETTINGS:
            params[RENAMED_SETTINGS[key]] = value
        elif not _same_as_default(axis, params.get(axis), setting, value):
            params[key] = value
    if params.get("hallucinator") not in (None, "", "none"):
        params.setdefault("diversity_weight", FLAT_DIVERSITY_WEIGHT)
    out = {k: v for k, v in params.items() if not (k in PRE_CHANGE_PARAMS and v == PRE_CHANGE_PARAMS[k])}
    if out.get("augment") in PRE_CHANGE_AUGMENT:
        out["augment"] = PRE_CHANGE_AUGMENT[out["augment"]]
    return out


# ------------------------------------------------------------------------------------------------
# Model configs (the dict saved in every checkpoint and registered model)

# Keys added after fsl 0.1, with the value that reproduces a model saved before them.
MODEL_CONFIG_DEFAULTS: dict[str, Any] = {"feature_transform": "none", "augment": "none", "test_views": 0,
                                         "logit_scale": 1.0, "learn_logit_scale": False, "head": "prototype",
                                         "head_args": {}}

# Settings saved as flat keys before they belonged to components: key -> (axis, setting).
MODEL_CONFIG_RENAMES = {"encoder_width": ("encoder", "width")}


def current_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved model config in today's form (a new dict): defaults for the keys it predates,
    flat settings moved into `<axis>_args`. The components' other settings are filled in by the
    model that builds them (`fsl.models.classifier`)."""
    out = MODEL_CONFIG_DEFAULTS | dict(config)
    for key, (axis, setting) in MODEL_CONFIG_RENAMES.items():
        if key in out:
            value = out.pop(key)
            out[f"{axis}_args"] = {setting: value} | dict(out.get(f"{axis}_args") or {})
    return out


# ------------------------------------------------------------------------------------------------
# State dicts: checkpoint schema -> (old prefix, today's prefix) of the weights it saved.
# Schema 1 saved the hallucinator under `generator.`.
STATE_DICT_PREFIXES = {1: (("generator.", "hallucinator."),)}
SCHEMA_VERSION = 2


def current_state_dict(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's state dict under today's names; ValueError for a schema fsl never wrote."""
    version = checkpoint.get("schema_version")
    if version != SCHEMA_VERSION and version not in STATE_DICT_PREFIXES:
        raise ValueError(f"checkpoint schema {version} is not supported (expected 1 or {SCHEMA_VERSION})")
    state = checkpoint["state_dict"]
    for old, new in STATE_DICT_PREFIXES.get(version, ()):
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    return state


# ------------------------------------------------------------------------------------------------
# Class paths: module -> {old name: today's "module:attribute"}. A pickled registered model
# names its classes by the path they had when it was saved; each module listed here resolves
# the old names through `class_alias` (its module `__getattr__`).
CLASS_ALIASES = {
    "fsl.models.hallucinator": {"WangGenerator": "fsl.models.hallucinator:WangHallucinator",
                                "PrototypeResidualGenerator": "fsl.models.hallucinator:PrototypeResidualHallucinator"},
    "fsl.tracking": {"FewShotServe": "fsl.tracking.serving:FewShotServe"},  # fsl 0.1.0's serving twins
}


def class_alias(module: str, name: str) -> Any:
    """The object an old class path `module.name` stands for today; AttributeError otherwise."""
    import importlib

    target = CLASS_ALIASES.get(module, {}).get(name)
    if target is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    path, _, attribute = target.partition(":")
    return getattr(importlib.import_module(path), attribute)


def module_getattr(module: str) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that resolves the module's old class names."""
    return lambda name: class_alias(module, name)


# ------------------------------------------------------------------------------------------------
# Reader keys. fsl 0.1 hashed all three split options into every data set's cache key, each at
# its default where the format does not use it: the built-in readers (`keyed_like_v1`) keep
# hashing these values, so that their fingerprints, cache keys and episode-file source ids stay
# what they were (tests/fixtures/formats-0b8ab85.*).
SPLIT_OPTIONS_OF_V1 = {"split_ratio": (0.64, 0.16, 0.20), "split_file": None, "val_share": 0.2}
