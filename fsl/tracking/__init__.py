"""MLflow tracking: this package holds every import of mlflow in fsl.

- `protocol`: the `Runs` and `Tracker` protocols every command runs through (no mlflow).
- `runs`: open, log and end runs; stale-run cleanup; finding a run to resume; the SQLite store
  lock; the tracking server's reachability.
- `model_registry`: log a model, register it under the champion rule (`fsl.champion`), load a
  model by MLflow URI.
- `serving`: the pyfunc that serves a registered model over HTTP.
- `null`: the same protocol as `runs`, recording nothing and importing no mlflow (studies on a
  machine without MLflow, DDP ranks other than 0).
"""


def __getattr__(name: str):
    # Serving models registered by fsl 0.1.0 pickled their class as `fsl.tracking.FewShotServe`.
    if name == "FewShotServe":
        from fsl.tracking.serving import FewShotServe

        return FewShotServe
    raise AttributeError(f"module 'fsl.tracking' has no attribute {name!r}")
