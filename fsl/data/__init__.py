"""Data: files on disk -> a decoded `DataSet` of uint8 tensors -> episodes of indices."""

from fsl.data.store import DataSet, ImageStore, load_dataset

__all__ = ["DataSet", "ImageStore", "load_dataset"]
