"""Data: files on disk -> a decoded `DataSet` of uint8 tensors -> episodes of indices.

Modules, bottom up: `store` (DataSet, ImageStore; imports nothing else of fsl.data), `images`
(the one image decoder), `safe_pickle`, `readers` and `synthetic` (each makes a DataSet),
`loading` (`--data` by name, above both), `episodes` and `augment`.
"""

from fsl.data.loading import load_dataset
from fsl.data.store import DataSet, ImageStore

__all__ = ["DataSet", "ImageStore", "load_dataset"]
