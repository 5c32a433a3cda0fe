"""fsl: few-shot image classification by meta-learning.

Prototypical Networks (Snell et al., 2017) and data hallucination (Wang et al., 2018),
trained on episodes and tracked in MLflow. Importing the package is cheap: torch is loaded by
the modules that need it, and mlflow, scikit-learn and matplotlib only where they are used.
"""

__version__ = "0.1.0"
