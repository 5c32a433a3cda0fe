"""`fsl register` and the registration step of a training run: log both model flavours and
register them under the champion rule."""

from __future__ import annotations

import json
import tempfile

from fsl.commands.options import Reporter
from fsl.commands.records import mlflow_runs
from fsl.errors import UsageError
from fsl.tracking.protocol import Runs


def register_run(run_id: str, name: str | None = None, allow_failed: bool = False,
                 reporter: Reporter = Reporter(), runs: Runs | None = None):
    """`fsl register --run-id`: register a finished run's best checkpoint under the champion
    rule. The run's status is left as it is; a run that did not finish is refused unless
    `allow_failed` (its best checkpoint may predate a crash). `runs`: the store, checked first
    (default: MLflow's; the model registry itself is MLflow's)."""
    from fsl.models.classifier import load_checkpoint
    from fsl.tracking.model_registry import log_run_models, register_logged, validate_model_name
    from fsl.tracking.runs import Tracker, download, get_run, locked_client

    if name:
        validate_model_name(name)
    (runs or mlflow_runs()).check_store()
    run = get_run(run_id)
    if "fsl.protocol" not in run.data.tags or "best_val_acc" not in run.data.metrics:
        raise UsageError(f"--run-id {run_id}: not a finished fsl training run (no protocol or best_val_acc)")
    if run.info.status != "FINISHED" and not allow_failed:
        raise UsageError(f"--run-id {run_id}: the run is {run.info.status}, not FINISHED; "
                         f"pass --allow-failed to register its best checkpoint anyway")
    name = name or f"fsl-{run.data.tags.get('fsl.method', 'protonet')}"
    with tempfile.TemporaryDirectory(prefix="fsl-register-") as folder:  # removed, error or not
        checkpoint = download(f"runs:/{run_id}/checkpoints/best.pt", folder)
        params, protocol = run.data.params, json.loads(run.data.tags["fsl.protocol"])
        shape = (int(params["ways"]), int(params["shots"])) if "ways" in params and "shots" in params else \
            (protocol["ways"], protocol["shots"])  # `fsl pretrain`: the shape it is tested at
        tracker = Tracker(run_id, locked_client())
        logged = log_run_models(tracker, load_checkpoint(checkpoint), checkpoint, name, shape)
        reg = register_logged(tracker, logged, name, run.data.metrics["best_val_acc"], protocol)
    reporter.echo(f"registered {reg.name} version {reg.version}: {reg.decision}")
    return reg
