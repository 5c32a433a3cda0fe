"""The serving model as code (MLflow's models-from-code): `fsl.tracking.model_registry.log_models`
logs this file instead of a pickled `FewShotServe`, so a server can run with
MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false. Its weights are a weights-only checkpoint artifact and
its budgets come from the logged model_config."""

import mlflow.models

from fsl.tracking.serving import FewShotServe

mlflow.models.set_model(FewShotServe())
