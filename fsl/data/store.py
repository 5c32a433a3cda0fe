"""The decoded, in-memory form of every data set: uint8 images, labels and class names per split.

Every reader ends here, and everything downstream (episodes, training, evaluation) starts here,
so a new on-disk format only has to produce a `DataSet`. A `DataSet` is saved as plain `.npy`
files and loaded memory-mapped, which is what makes the second use of a data set cheap.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fsl.errors import DataError

CACHE_SCHEMA = 1
# Which command needs which split: said wherever one is missing.
NEEDS = ("training needs train and val (and test, to test at the end, or --test-data); fsl evaluate and fsl "
         "episodes need test (or --split all); a class-per-folder tree is split with --split-ratio or --split-file")


@dataclass
class ImageStore:
    """One split. images: uint8 [N, C, H, W]; labels: int64 [N] in 0..len(class_names)-1."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be [N] with one label per image")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def images_per_class(self) -> torch.Tensor:
        """int64 [n_classes]: how many images each class has."""
        return torch.bincount(self.labels.cpu(), minlength=self.n_classes)

    def to(self, device: torch.device | str) -> "ImageStore":
        """Move images and labels to `device` (on CUDA a whole split lives on the GPU)."""
        return ImageStore(self.images.to(device), self.labels.to(device), self.class_names)


@dataclass
class DataSet:
    """The splits of one data set plus what identifies it (fingerprint) and how it was read."""

    name: str
    splits: dict[str, ImageStore]
    fingerprint: str
    notes: list[str] = field(default_factory=list)
    # For file-based data sets: the image file of every row, per split (episode files name them).
    sources: dict[str, list[str]] | None = None
    # What `<split>:<row>` references in an episode file point into: the source files, format,
    # split options and rotations, but not the image size or channels, which change no row.
    source_id: str = ""

    def split(self, name: str) -> ImageStore:
        if name not in self.splits:
            raise DataError(f"data set {self.name!r} has no {name!r} split (it has "
                            f"{', '.join(sorted(self.splits)) or 'none'}); {NEEDS}")
        return self.splits[name]

    @property
    def channels(self) -> int:
        return next(iter(self.splits.values())).channels  # every split has the same

    @property
    def image_size(self) -> int:
        return next(iter(self.splits.values())).image_size

    def content_digest(self) -> str:
        """A digest of what the data set holds: every split's decoded pixels, labels and class names
        (`fingerprint` hashes the source files' names, sizes and mtimes and the read options, so a
        file rewritten with its size and mtime kept leaves it alone; this does not). Read in full
        once per process and kept (about 1 s per GB of decoded pixels)."""
        if not hasattr(self, "_content"):
            import hashlib

            h = hashlib.sha256()
            for name in sorted(self.splits):
                store = self.splits[name]
                h.update(f"{name}|{store.class_names}|".encode())
                h.update(store.labels.numpy().tobytes())
                h.update(store.images.contiguous().numpy().tobytes())
            object.__setattr__(self, "_content", h.hexdigest()[:20])
        return self._content  # type: ignore[attr-defined]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the train split in [0, 1]: the normalisation a model keeps."""
        images = self.split("train").images
        # Strided subsample: exact enough for normalisation, cheap on a memory-mapped 0.8 GB split.
        sample = images[:: max(1, images.shape[0] // 2000)].float().div_(255)
        mean = sample.mean(dim=(0, 2, 3))
        std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]

    def describe(self) -> str:
        """A human summary: format notes, then per split the classes, images per class and size."""
        lines = [f"data set: {self.name} (fingerprint {self.fingerprint})"] + list(self.notes)
        missing = [s for s in ("train", "val", "test") if s not in self.splits]
        lines.append(f"splits: {', '.join(s for s in ('train', 'val', 'test') if s in self.splits) or 'none'}"
                     + (f"; missing: {', '.join(missing)} ({NEEDS})" if missing else ""))
        for split, store in self.splits.items():
            counts = store.images_per_class().numpy()
            lines.append(f"{split:>5}: {store.n_classes} classes, {store.images.shape[0]} images; images per class "
                         f"min {counts.min()} / median {int(np.median(counts))} / max {counts.max()}; "
                         f"{store.channels}x{store.image_size}x{store.image_size}")
        return "\n".join(lines)

    def with_rotations(self) -> "DataSet":
        """Add the 90, 180 and 270 degree rotations of every class as new classes (the Omniglot
        protocol); a rotated class is named `<class>@rot<degrees>`."""
        turns = [(f"@rot{90 * k}" if k else "", lambda images, k=k: torch.rot90(images, k, dims=(2, 3)))
                 for k in range(4)]
        return self._with_class_variants(turns, "-rot", "rotations: x4 classes")

    def with_reflections(self) -> "DataSet":
        """Add the left-right mirror image of every class as a new class, named `<class>@mirror`:
        a mirrored character is another character, as a rotated one is (class augmentation for
        Omniglot; not for photographs, whose mirror image is the same class)."""
        mirror = [("", lambda images: images), ("@mirror", lambda images: torch.flip(images, dims=(3,)))]
        return self._with_class_variants(mirror, "-mirror", "reflections: x2 classes")

    def _with_class_variants(self, variants: list[tuple[str, Callable[..., torch.Tensor]]],
                             suffix: str, note: str) -> "DataSet":
        """Every class once per variant (class-name suffix, image transform), each a class of its
        own in the same split, variant-major; the fingerprint and source id get `suffix`."""
        splits = {}
        for name, store in self.splits.items():
            images = torch.cat([transform(store.images) for _, transform in variants])
            labels = torch.cat([store.labels + k * store.n_classes for k in range(len(variants))])
            names = [c + tag for tag, _ in variants for c in store.class_names]
            splits[name] = ImageStore(images, labels, names)
        return DataSet(self.name, splits, self.fingerprint + suffix, self.notes + [note],
                       source_id=self.source_id + suffix)

    def all_as_test(self) -> "DataSet":
        """Every class of every split as one `test` split (`--split all`): for testing a model on
        a data set none of whose classes it was trained on. Its fingerprint and source id say so."""
        stores = list(self.splits.values())
        names = [name for store in stores for name in store.class_names]
        offsets = torch.tensor([0, *np.cumsum([store.n_classes for store in stores])[:-1].tolist()])
        test = ImageStore(torch.cat([store.images for store in stores]),
                          torch.cat([store.labels + offsets[i] for i, store in enumerate(stores)]), names)
        sources = {"test": [ref for split in self.splits for ref in self.sources[split]]} if self.sources else None
        return DataSet(self.name, {"test": test}, self.fingerprint + "-all", self.notes + ["--split all: every "
                       "class is a test class"], sources, self.source_id + "-all")

    def save(self, folder: Path) -> None:
        """Write `.npy` arrays and a `meta.json` into `folder` (callers make it atomic)."""
        meta: dict[str, Any] = {"schema": CACHE_SCHEMA, "name": self.name, "fingerprint": self.fingerprint,
                "notes": self.notes, "classes": {}, "sources": self.sources,
                "source_id": self.source_id}
        for split, store in self.splits.items():
            np.save(folder / f"{split}_images.npy", store.images.numpy())
            np.save(folder / f"{split}_labels.npy", store.labels.numpy())
            meta["classes"][split] = store.class_names
        # meta.json is written last: its presence marks a complete cache.
        (folder / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path) -> "DataSet":
        """Load a saved data set; images are memory-mapped (copy-on-write), so this takes ms."""
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("schema") != CACHE_SCHEMA:
            raise ValueError(f"cache {folder} has schema {meta.get('schema')}, expected {CACHE_SCHEMA}")
        splits = {}
        for split, names in meta["classes"].items():
            images = torch.from_numpy(np.load(folder / f"{split}_images.npy", mmap_mode="c"))
            labels = torch.from_numpy(np.load(folder / f"{split}_labels.npy"))
            splits[split] = ImageStore(images, labels, list(names))
        return cls(meta["name"], splits, meta["fingerprint"], list(meta.get("notes", [])), meta.get("sources"),
                   meta.get("source_id", ""))


def validity_file(folder: Path) -> Path:
    """Where this host records what the source files looked like when it last used the cache.
    One file per host: a cache folder on a shared disk serves hosts whose copies of the data
    have their own ctimes and inodes."""
    import socket

    return folder / f"validity-{socket.gethostname()}"


def cached(folder: Path, build: Callable[[], "DataSet"], validity: str | None = None) -> "DataSet":
    """The data set saved in `folder`, built by `build()` and saved atomically on first use.

    A cache that no longer loads (a truncated `.npy`, a schema from another version), or whose
    `validity` recorded by this host (a digest of the sources as this host sees them, ctimes and
    inodes included) differs from the given one, is removed and built again, instead of serving
    stale pixels or failing every run until someone clears it. A host that finds a cache built
    by another records its own validity and uses it (the fingerprint already matched).
    """
    from fsl.files import atomic_directory

    if (folder / "meta.json").exists():
        record = validity_file(folder)
        recorded = record.read_text() if record.exists() else None
        if validity is None or recorded in (None, validity):
            try:
                dataset = DataSet.load(folder)
                if validity is not None and recorded is None:
                    _write_quietly(record, validity)
                return dataset
            except (OSError, ValueError, EOFError, KeyError):
                pass
        shutil.rmtree(folder, ignore_errors=True)
    dataset = build()
    with atomic_directory(folder) as tmp:
        dataset.save(tmp)
        if validity is not None:
            validity_file(tmp).write_text(validity)
    return DataSet.load(folder)


def _write_quietly(path: Path, text: str) -> None:
    """Best effort: a read-only shared cache still serves, it only cannot remember this host."""
    try:
        path.write_text(text)
    except OSError:
        pass
