"""`--data` by name: the built-in `synthetic` set or a path, above the readers. Nothing below
this module imports it."""

from __future__ import annotations

from fsl.data import readers, synthetic
from fsl.data.store import DataSet
from fsl.errors import UsageError


def load_dataset(spec: str = "synthetic", image_size: int | None = None, fmt: str | None = None,
                 channels: int | None = None, rotations: bool = False) -> DataSet:
    """Resolve a `--data` value to a `DataSet`, decoding once and caching under `cache_dir()`."""
    if spec == "synthetic":
        if channels not in (None, 3):
            raise UsageError("--channels: the synthetic data set is RGB (3 channels)")
        data = synthetic.load(image_size=image_size or synthetic.DEFAULT_IMAGE_SIZE)
        return data.with_rotations() if rotations else data
    opts = readers.ReadOptions(image_size=image_size, channels=channels, rotations=rotations)
    return readers.read(spec, fmt, opts)
