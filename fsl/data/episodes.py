"""N-way K-shot Q-query episodes, sampled as index tensors from a `torch.Generator`.

An episode never copies images: it is a set of row indices into a split's uint8 tensor, so on
CUDA building one is a gather on the GPU. Labels inside an episode are 0..ways-1 in support
order (class-major: the first `shots` support rows are class 0, and so on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fsl.data.episode_table import EPISODE_HEADER
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


def episode_file_images(table, dataset=None, image_size: int | None = None, channels: int | None = None):
    """The `TableImages` of a compiled episode file: its `<split>:<row>` rows checked against the
    data set recorded beside the file (`dataset`: the --data given alongside, a DataSet or a
    function returning one, called only if such a row exists)."""
    from fsl.data.episode_table import TableImages, is_row_reference
    from fsl.errors import DataError

    if any(is_row_reference(ref) for ref in table.refs):
        if dataset is None:
            raise DataError(f"{table.path}: its rows name rows of a data set (<split>:<row>); pass --data")
        dataset = dataset() if callable(dataset) else dataset
        _check_source(table.path, dataset)
    return TableImages(table, dataset, image_size, channels)


def read_episode_file(path: Path, dataset=None, image_size: int | None = None,
                      channels: int | None = None) -> list[FileEpisode]:
    """An episode CSV as a list of episodes with their images (for a small file: `fsl evaluate`
    streams large ones through `fsl.data.episode_table`). `<split>:<row>` paths need `dataset`
    (the --data given alongside; a DataSet, or a function returning one, called only if such a
    row exists); file paths are decoded at `image_size`/`channels` exactly as data sets are."""
    from fsl.data.episode_table import compile_episode_file

    table = compile_episode_file(Path(path))
    images = episode_file_images(table, dataset, image_size, channels)
    episodes: list[FileEpisode | None] = [None] * table.count
    for group in table.groups:
        for j, e in enumerate(group.index.tolist()):
            episodes[e] = FileEpisode(images(group.support[j]), torch.from_numpy(group.support_labels[j]),
                                      images(group.query[j]), torch.from_numpy(group.query_labels[j]),
                                      [table.labels[c] for c in group.classes[j].tolist()])
    return [e for e in episodes if e is not None]


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
