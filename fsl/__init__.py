"""fsl: few-shot image classification by meta-learning.

Prototypical Networks (Snell et al., 2017) and data hallucination (Wang et al., 2018),
trained on episodes and tracked in MLflow. Importing the package is cheap: the names below are
imported when first used (torch with the first of them, mlflow only by what tracks), so
`import fsl` and `fsl --help` stay fast.

    import fsl
    summary = fsl.run_training(fsl.TrainConfig(epochs=1, episodes_per_epoch=100), quiet=True)
    model = fsl.load_model(f"runs:/{summary.run_id}")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it (PEP 562 lazy exports). The functions are named for what they
# run, so none shadows the submodules `fsl.train` (the trainer) and `fsl.evaluate`.
_EXPORTS = {
    "TrainConfig": "fsl.config",
    "EvaluationConfig": "fsl.config",
    "DataConfig": "fsl.config",
    "run_training": "fsl.commands.cmd_train",
    "run_evaluation": "fsl.commands.cmd_evaluate",
    "run_sweep": "fsl.commands.cmd_sweep",
    "load_model": "fsl.commands.inputs",
    "load_dataset": "fsl.data",
    "NullRuns": "fsl.tracking.null",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'fsl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
