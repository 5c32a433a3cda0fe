"""A training run's identity: its name, params and config hash, and which run `--resume` continues.

The config hash decides what counts as the same run: `--resume` and a restarted sweep find an
earlier run by it, across upgrades (`fsl.compat.canonical_params`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fsl.commands.options import LATEST
from fsl.compat import canonical_params
from fsl.config import TrainConfig
from fsl.errors import UsageError
from fsl.files import cache_dir, digest
from fsl.pretrain import PREFIX as PRETRAIN
from fsl.processes import process_alive

if TYPE_CHECKING:
    from fsl.commands.training_setup import TrainingSetup


def run_name(cfg: TrainConfig) -> str:
    """A descriptive run name, e.g. `protonet-5w1s-euclidean`, `hallucinate-wang-M100-5w1s` or
    `pretrain-resnet12-e20`; a backbone other than Conv-4 and pre-training are named too."""
    shape = f"{cfg.ways}w{cfg.shots}s"
    width = cfg.settings("encoder").get("width", 1)
    encoder = "" if cfg.encoder == "conv4" and width == 1 else "-" + cfg.encoder + (f"x{width:g}" if width != 1 else "")
    if cfg.method == "pretrain":
        return f"pretrain{encoder or '-conv4'}-e{cfg.pretrain_epochs}" + ("" if cfg.head == "prototype"
                                                                          else f"-{cfg.head}")
    stages = f"{encoder}-pre{cfg.pretrain_epochs}" if cfg.pretrain_epochs else encoder
    stages += "" if cfg.head == "prototype" else f"-{cfg.head}"
    if cfg.hallucinator:
        return f"hallucinate-{cfg.hallucinator}-M{cfg.M}-{shape}{stages}"
    return f"protonet-{shape}-{cfg.distance}{stages}"


def run_params(setup: TrainingSetup, world_size: int) -> dict[str, Any]:
    """The run's params: the config, what `auto` resolved to, and what the run ran on. Data sets
    a caller handed in (not read from cfg.data) are named by their fingerprints, which so enter
    the config hash: a run on other data is never taken for this one."""
    from fsl.provenance import environment

    handed_in = {"data_fingerprint": setup.data.fingerprint} | (
        {"test_data_fingerprint": setup.test_data.fingerprint} if setup.test_data is not None else {}) \
        if setup.handed_in else {}
    return setup.cfg.to_params() | {
        "device_resolved": str(setup.device), "precision_resolved": setup.precision,
        "image_size_resolved": setup.data.image_size, "feature_dim": setup.model.feature_dim,
        "world_size": world_size} | handed_in | environment()


NOT_IDENTITY = ("experiment", "recipe")  # where a run is tracked and what its settings started from


def config_hash(params: dict[str, Any]) -> str:
    """The `fsl.config_hash` tag: a digest of the params that decide what is trained, including
    what `auto` resolved to (device, precision, image size). It leaves out the experiment, the recipe
    (its settings are in the params) and the library versions and thread count, so `--resume` and
    a restarted sweep still find a run after an upgrade or on another thread count, and options
    added since at the value that reproduces the older runs (`fsl.compat.canonical_params`);
    sorted JSON, sha256."""
    from fsl.provenance import ENVIRONMENT_KEYS

    key = {k: v for k, v in canonical_params(params).items() if k not in NOT_IDENTITY and k not in ENVIRONMENT_KEYS}
    return digest(json.dumps(key, sort_keys=True, default=str).encode())


def resume_target(runs, cfg: TrainConfig, config_hash: str, params: dict[str, Any], which: str) -> str:
    """The run `--resume` continues: the given run id, or (LATEST) the newest unfinished run of
    this configuration with a `last.pt` on this machine, whatever its status. A run whose
    process still lives on this host is never taken over."""
    def has_checkpoint(run_id: str) -> bool:
        folder = cache_dir() / "runs" / run_id
        return (folder / "last.pt").exists() or (folder / f"{PRETRAIN}last.pt").exists()

    if which != LATEST:
        record = runs.run_record(which)
        if record.status == "FINISHED":
            raise UsageError(f"--resume {which}: the run FINISHED; there is nothing to resume")
        if record.config_hash != config_hash:
            raise UsageError(f"--resume {which}: {differences(record.params, params)}")
        candidates = [record]
    else:
        # Without a run id, a RUNNING run of another host is left alone: its process cannot be checked.
        unfinished = [r for r in runs.unfinished_runs(cfg.experiment) if has_checkpoint(r.run_id)
                      and not (r.status == "RUNNING" and process_alive(r.host, r.pid) is None)]
        candidates = [r for r in unfinished if r.config_hash == config_hash]
        if not candidates and unfinished:
            raise UsageError(f"--resume: the newest interrupted run, {unfinished[0].run_id}, has another "
                             f"configuration: {differences(unfinished[0].params, params)}")
    if not candidates or not has_checkpoint(candidates[0].run_id):
        raise UsageError(f"--resume: no interrupted run of this configuration with a checkpoint "
                         f"(last.pt or {PRETRAIN}last.pt) on this machine in experiment {cfg.experiment!r}")
    target = candidates[0]
    if target.status == "RUNNING" and process_alive(target.host, target.pid):
        raise UsageError(f"--resume: run {target.run_id} is still running (pid {target.pid} on this host); "
                         f"stop it first")
    return target.run_id


def differences(logged: dict[str, str], params: dict[str, Any]) -> str:
    """Which options differ between a logged run and this one, as the user would type them."""
    def same(a: str, b: Any) -> bool:
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return a == str(b)

    from fsl.provenance import ENVIRONMENT_KEYS

    ignored = {*NOT_IDENTITY, *ENVIRONMENT_KEYS}
    # as the config hash sees them: an unset option logged "" (before) and "auto" (now) is one value
    logged, params = canonical_params(logged), canonical_params(params)
    keys = [k for k in params if k in logged and not same(logged[k], params[k]) and k not in ignored]
    if not keys:
        return "its configuration differs (options it did not record)"
    return "; ".join(f"--{k.replace('_', '-')} was {logged[k]}, now {params[k]}" for k in keys)
