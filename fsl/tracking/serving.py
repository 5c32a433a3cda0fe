"""The serving model: `mlflow models serve` answers JSON requests with `FewShotServe`."""

from __future__ import annotations

import contextlib
import io

from mlflow.pyfunc.model import PythonModel

from fsl.data.requests import MAX_IMAGE_PIXELS, MAX_REQUEST_BYTES, check_request

# MLflow warns, when the class is defined, that `predict` has no type hints: its input is
# validated against the explicit signature logged with the model instead (registry.py). MLflow
# forces that warning through its own filter, so it is kept off stderr here.
with contextlib.redirect_stderr(io.StringIO()):

    class FewShotServe(PythonModel):
        """The serving model: a JSON-able table in, predictions out, through `classify`.

        Input rows: `role` ("support" or "query", any case, spaces stripped), `label` (a non-empty
        string on support rows), `image` (base64 PNG/JPEG). Output rows, one per query in input
        order: `query` (its index among the queries), `label` (the predicted support label) and
        `probability`. A bad request is a 400 (INVALID_PARAMETER_VALUE) whose message names the
        row and the field (`fsl.data.requests`); images over `max_image_pixels` each, or a request
        over `max_request_bytes` of decoded pixels, are refused from their headers before any
        decoding. The weights are the checkpoint artifact, loaded with weights_only=True.
        """

        # Budgets (settings of the logged model; models logged before them use these defaults).
        max_image_pixels = MAX_IMAGE_PIXELS
        max_request_bytes = MAX_REQUEST_BYTES

        def __init__(self, max_image_pixels: int = MAX_IMAGE_PIXELS, max_request_bytes: int = MAX_REQUEST_BYTES):
            self.max_image_pixels, self.max_request_bytes = max_image_pixels, max_request_bytes

        def load_context(self, context) -> None:
            from fsl.models.classifier import load_checkpoint

            self.model = load_checkpoint(context.artifacts["checkpoint"]).eval()
            config = getattr(context, "model_config", None) or {}  # models-from-code: the budgets live here
            self.max_image_pixels = int(config.get("max_image_pixels", self.max_image_pixels))
            self.max_request_bytes = int(config.get("max_request_bytes", self.max_request_bytes))

        def predict(self, context, model_input, params=None):
            import numpy as np
            import pandas as pd
            import torch
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            from fsl.data.images import decode_bytes
            from fsl.errors import DataError

            size, channels = self.model.config["image_size"], self.model.config["channels"]
            try:
                request = check_request(model_input, self.max_image_pixels, self.max_request_bytes)

                def batch(images: list[bytes], first_row: str) -> torch.Tensor:
                    return torch.stack([torch.from_numpy(decode_bytes(data, size, channels, f"{first_row} image {i}"))
                                        for i, data in enumerate(images)])

                prediction = self.model.classify(batch(request.support_images, "support"), request.support_labels,
                                                 batch(request.query_images, "query"))
            except DataError as exc:  # one line naming the row; no stack trace in the answer
                raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
            best = prediction.probs.max(-1).values.double().numpy()
            return pd.DataFrame({"query": np.arange(len(request.query_images)),
                                 "label": [str(x) for x in prediction.labels], "probability": best})
