"""N-way K-shot Q-query episodes, sampled as index tensors from a `torch.Generator`.

An episode never copies images: it is a set of row indices into a split's uint8 tensor, so on
CUDA building one is a gather on the GPU. Labels inside an episode are 0..ways-1 in support
order (class-major: the first `shots` support rows are class 0, and so on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fsl.data.store import ImageStore
from fsl.errors import UsageError


class EpisodeError(UsageError):
    """An episode shape the split cannot provide; the message names the parameter and its range."""


@dataclass(frozen=True)
class EpisodeShape:
    ways: int
    shots: int
    queries: int

    def __str__(self) -> str:
        return f"{self.ways}-way {self.shots}-shot {self.queries}-query"


@dataclass
class EpisodeIndices:
    """E episodes at once. support: int64 [E, ways*shots]; query: int64 [E, ways*queries];
    classes: int64 [E, ways], the split's class ids in episode-label order."""

    support: torch.Tensor
    query: torch.Tensor
    classes: torch.Tensor
    shape: EpisodeShape

    def __len__(self) -> int:
        return int(self.support.shape[0])

    def slice(self, start: int, stop: int) -> "EpisodeIndices":
        return EpisodeIndices(self.support[start:stop], self.query[start:stop], self.classes[start:stop], self.shape)

    def support_labels(self) -> torch.Tensor:
        """int64 [ways*shots]: 0..ways-1 in support order (the same for every episode)."""
        return torch.arange(self.shape.ways).repeat_interleave(self.shape.shots)

    def query_labels(self) -> torch.Tensor:
        """int64 [ways*queries]: the true episode label of each query."""
        return torch.arange(self.shape.ways).repeat_interleave(self.shape.queries)


class EpisodeSampler:
    """Draws episodes from one split. The same generator state gives the same episodes.

    Sampling is vectorised: a padded [classes, max_images] table of row indices, a random key
    per slot, and one argsort pick `shots + queries` distinct images per class without a
    Python loop, so support and query never share an image.
    """

    def __init__(self, store: ImageStore, shape: EpisodeShape, split: str = "split",
                 option_prefix: str = "") -> None:
        counts = store.images_per_class()
        for name, value, low in (("ways", shape.ways, 2), ("shots", shape.shots, 1), ("queries", shape.queries, 1)):
            if value < low:
                raise EpisodeError(f"--{option_prefix}{name} must be at least {low}, got {value}")
        if shape.ways > store.n_classes:
            raise EpisodeError(f"--{option_prefix}ways must be between 2 and {store.n_classes} "
                               f"(the {split} split has {store.n_classes} classes), got {shape.ways}")
        need = shape.shots + shape.queries
        smallest = int(counts.min())
        if need > smallest:
            cls = store.class_names[int(counts.argmin())]
            raise EpisodeError(f"--{option_prefix}shots + --{option_prefix}queries must be at most {smallest} "
                               f"(class {cls!r} of the {split} split has {smallest} images), got {need}")
        self.shape = shape
        labels = store.labels.cpu()
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(labels)) - starts[labels[order]]
        self._table = torch.full((store.n_classes, int(counts.max())), -1, dtype=torch.long)
        self._table[labels[order], slot] = order

    def sample(self, rng: torch.Generator, n: int = 1) -> EpisodeIndices:
        """Draw `n` episodes (indices on the CPU; move them with `.to(device)` to gather)."""
        ways, shots, queries = self.shape.ways, self.shape.shots, self.shape.queries
        n_classes, width = self._table.shape
        classes = torch.rand(n, n_classes, generator=rng).argsort(dim=1)[:, :ways]
        rows = self._table[classes]  # [n, ways, width]
        keys = torch.rand(n, ways, width, generator=rng).masked_fill_(rows < 0, 2.0)
        picked = rows.gather(2, keys.argsort(dim=2)[:, :, : shots + queries])
        support = picked[:, :, :shots].reshape(n, ways * shots)
        query = picked[:, :, shots:].reshape(n, ways * queries)
        return EpisodeIndices(support, query, classes, self.shape)


# ------------------------------------------------------------------------------ episode files
EPISODE_HEADER = ["episode", "role", "label", "path"]


@dataclass
class FileEpisode:
    """One episode read from a CSV: images uint8 [S|Q, C, H, W]; labels 0..ways-1 in support order."""

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    class_names: list[str]

    @property
    def ways(self) -> int:
        return len(self.class_names)


def source_record_path(path: Path) -> Path:
    """The sidecar of an episode file: `episodes.csv` -> `episodes.csv.source.json`.

    A file whose rows are `<split>:<row>` references is only meaningful with the data set they
    index, so the writer records that data set's identity here; the CSV stays a plain CSV.
    """
    return Path(path).with_name(Path(path).name + ".source.json")


def write_episode_file(path: Path, dataset, split: str, episodes: EpisodeIndices) -> None:
    """Write episodes as CSV rows `episode,role,label,path`. Image files are named relative to
    the CSV's folder; rows of data sets without files (pickles, synthetic, zips) are
    `<split>:<row>`, and then `source_record_path(path)` records which data set they index."""
    import csv
    import json
    import os

    store = dataset.split(split)
    sources = (dataset.sources or {}).get(split)
    folder = Path(path).resolve().parent

    def where(row: int) -> str:
        if sources is None:
            return f"{split}:{row}"
        ref = sources[row]
        if "::" in ref:  # a zip member cannot be named relative to the CSV
            return f"{split}:{row}"
        return os.path.relpath(ref, folder)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    references = False
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(EPISODE_HEADER)
        for e in range(len(episodes)):
            for role, rows in (("support", episodes.support[e]), ("query", episodes.query[e])):
                for row in rows.tolist():
                    ref = where(row)
                    references |= ref.startswith(f"{split}:")
                    writer.writerow([e, role, store.class_names[int(store.labels[row])], ref])
    record = source_record_path(path)
    if references:
        record.write_text(json.dumps({"data_set": dataset.name, "source_id": dataset.source_id}, indent=1) + "\n")
    elif record.exists():
        record.unlink()  # a previous file's record would misdescribe this one


class _EpisodeImages:
    """An episode file's image references -> uint8 [C, S, S]: `<split>:<row>` rows of `dataset`,
    or image files (relative to the episode file) decoded once per read, as data sets are."""

    def __init__(self, path: Path, dataset, image_size: int | None, channels: int | None) -> None:
        self.path, self.dataset, self.image_size, self.channels = path, dataset, image_size, channels
        self.decoded: dict[str, torch.Tensor] = {}  # episodes share images

    def __call__(self, ref: str) -> torch.Tensor:
        from fsl.data.images import decode_image
        from fsl.errors import DataError

        if _is_row_reference(ref):
            split, _, index = ref.partition(":")
            images = self.dataset.split(split).images
            if not 0 <= int(index) < len(images):
                raise DataError(f"{self.path}: {ref!r}: the {split} split has rows 0 to {len(images) - 1}")
            return images[int(index)]
        if ref not in self.decoded:
            file = Path(ref) if Path(ref).is_absolute() else self.path.parent / ref
            if not file.is_file():
                raise DataError(f"{self.path}: row names a missing file {ref!r}")
            if self.image_size is None or self.channels is None:
                raise ValueError("read_episode_file: rows naming image files need image_size and channels")
            self.decoded[ref] = torch.from_numpy(decode_image(str(file), self.image_size, self.channels))
        return self.decoded[ref]


def read_episode_file(path: Path, dataset=None, image_size: int | None = None,
                      channels: int | None = None) -> list[FileEpisode]:
    """Read an episode CSV. `<split>:<row>` paths need `dataset` (the --data given alongside; a
    DataSet, or a function returning one, called only if such a row exists); file paths are
    decoded at `image_size`/`channels` exactly as data sets are."""
    from fsl.data.csvfile import read_rows
    from fsl.errors import DataError

    path = Path(path)
    rows = read_rows(path, EPISODE_HEADER)
    if not rows:
        raise DataError(f"{path}: has a header but no episodes")
    grouped: dict[str, list[dict]] = {}
    for line, row in enumerate(rows, start=2):
        if row["role"] not in ("support", "query"):
            raise DataError(f"{path}:{line}: role must be support or query, got {row['role']!r}")
        grouped.setdefault(row["episode"], []).append(row)

    if any(_is_row_reference(r["path"]) for r in rows):
        if dataset is None:
            raise DataError(f"{path}: its rows name rows of a data set (<split>:<row>); pass --data")
        dataset = dataset() if callable(dataset) else dataset
        _check_source(path, dataset)
    image = _EpisodeImages(path, dataset, image_size, channels)
    episodes = []
    for name, items in grouped.items():
        support = [r for r in items if r["role"] == "support"]
        query = [r for r in items if r["role"] == "query"]
        classes = list(dict.fromkeys(r["label"] for r in support))
        unknown = sorted({r["label"] for r in query} - set(classes))
        if unknown or not query:
            raise DataError(f"{path}: episode {name}: " + (f"queries use classes missing from its support: {unknown}"
                                                           if unknown else "has no query rows"))
        index = {c: i for i, c in enumerate(classes)}
        episodes.append(FileEpisode(
            torch.stack([image(r["path"]) for r in support]),
            torch.tensor([index[r["label"]] for r in support]),
            torch.stack([image(r["path"]) for r in query]),
            torch.tensor([index[r["label"]] for r in query]), classes))
    return episodes


def _is_row_reference(ref: str) -> bool:
    """`test:12` (and `test:-1`, which is then reported out of range, not as a missing file)."""
    split, sep, index = ref.partition(":")
    return bool(sep) and index.lstrip("-").isdigit() and split in ("train", "val", "test")


def _check_source(path: Path, dataset) -> None:
    """`<split>:<row>` rows index the data set recorded beside the file, and no other."""
    import json

    from fsl.errors import DataError

    record = source_record_path(path)
    try:
        source = json.loads(record.read_text())
        recorded, name = source["source_id"], source.get("data_set", "?")
    except FileNotFoundError:
        raise DataError(f"{path}: its rows name data-set rows (<split>:<row>) but {record.name}, which says "
                        f"which data set they index, is missing; write the file again with `fsl episodes`") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{record}: not an episode-file source record") from None
    if recorded != dataset.source_id:
        hint = ("; it was written with --split all: evaluate it with --split all too"
                if recorded.endswith("-all") and not dataset.source_id.endswith("-all") else
                "; it was written without --split all: evaluate it without it"
                if dataset.source_id.endswith("-all") and not recorded.endswith("-all") else "")
        raise UsageError(f"{path}: its rows index the data set {name!r} (source {recorded}), not --data "
                         f"{dataset.name!r} (source {dataset.source_id}); pass the --data it was written from"
                         + hint)
