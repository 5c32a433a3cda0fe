"""The serving model: `mlflow models serve` answers JSON requests with `FewShotServe`."""

from __future__ import annotations

import contextlib
import io

import mlflow.pyfunc


# MLflow warns, when the class is defined, that `predict` has no type hints: its input is
# validated against the explicit signature logged with the model instead (registry.py). MLflow
# forces that warning through its own filter, so it is kept off stderr here.
with contextlib.redirect_stderr(io.StringIO()):

    class FewShotServe(mlflow.pyfunc.PythonModel):
        """The serving model: a JSON-able table in, predictions out, through `classify`.

        Input rows: `role` ("support" or "query"), `label` (support rows), `image` (base64 PNG/JPEG).
        Output rows, one per query in input order: `query` (its index among the queries), `label`
        (the predicted support label) and `probability`. The weights are the checkpoint artifact,
        loaded with weights_only=True.
        """

        def load_context(self, context) -> None:
            from fsl.models.classifier import load_checkpoint

            self.model = load_checkpoint(context.artifacts["checkpoint"]).eval()

        def predict(self, context, model_input, params=None):
            import base64

            import numpy as np
            import pandas as pd
            import torch

            from fsl.data.images import decode_bytes
            from fsl.errors import DataError

            size, channels = self.model.config["image_size"], self.model.config["channels"]

            def batch(rows) -> torch.Tensor:
                return torch.stack([torch.from_numpy(decode_bytes(base64.b64decode(text), size, channels, "a request image"))
                                    for text in rows["image"]])

            support = model_input[model_input["role"] == "support"]
            query = model_input[model_input["role"] == "query"]
            if support.empty or query.empty:
                raise DataError("a request needs rows with role 'support' (with labels) and role 'query'")
            prediction = self.model.classify(batch(support), list(support["label"]), batch(query))
            best = prediction.probs.max(-1).values.double().numpy()
            return pd.DataFrame({"query": np.arange(len(query)), "label": [str(x) for x in prediction.labels],
                                 "probability": best})
