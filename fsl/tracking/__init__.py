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


from fsl import compat

# `fsl.tracking.FewShotServe`: the class path of fsl 0.1.0's pickled serving twins (fsl.compat).
__getattr__ = compat.module_getattr(__name__)
