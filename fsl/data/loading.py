"""`--data` by name: the built-in `synthetic` set or a path, above the readers. Nothing below
this module imports it."""

from __future__ import annotations

from typing import Any

from fsl.data import readers, synthetic
from fsl.data.store import DataSet
from fsl.errors import UsageError


def load_dataset(spec: str = "synthetic", image_size: int | None = None, fmt: str | None = None,
                 channels: int | None = None, rotations: bool = False, *, reflections: bool = False,
                 split_ratio: tuple[float, float, float] | None = None, split_file: str | None = None,
                 val_share: float | None = None, split: str = "splits",
                 format_args: dict[str, Any] | None = None) -> DataSet:
    """Resolve a `--data` value to a `DataSet`, decoding once and caching under `cache_dir()`.

    The split options (None: the format's default) choose how a class-per-folder tree is split
    by class (`split_ratio` train,val,test shares or a `split_file` of `split,class` lines) and
    the course format's validation share; `split="all"` makes every class of the data set a test
    class (`DataSet.all_as_test`). `format_args`: the reader's own settings (`--format-arg`)."""
    if spec == "synthetic":
        if channels not in (None, 3):
            raise UsageError("--channels: the synthetic data set is RGB (3 channels)")
        for option, value in (("split-ratio", split_ratio), ("split-file", split_file), ("val-share", val_share),
                              ("format-arg", format_args or None)):
            if value is not None:
                raise UsageError(f"--{option}: the built-in synthetic set has fixed splits (64/16/20 classes)")
        data = synthetic.load(image_size=image_size or synthetic.DEFAULT_IMAGE_SIZE)
        data = data.with_rotations() if rotations else data
    else:
        opts = readers.ReadOptions(image_size=image_size, channels=channels, rotations=rotations,
                                   split_ratio=split_ratio, split_file=split_file, val_share=val_share,
                                   format_args=tuple(sorted((format_args or {}).items())))
        data = readers.read(spec, fmt, opts)
    data = data.with_reflections() if reflections else data
    return data.all_as_test() if split == "all" else data
