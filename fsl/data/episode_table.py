"""An episode file compiled to arrays, for evaluations of any size.

`fsl evaluate --episodes FILE` reads the CSV once, row by row, into compact arrays: each distinct
image reference and class name once, each row as three integers. No image is decoded while
reading. The episodes are then grouped by shape (ways, support rows, query rows), so that each
group is scored as a batch on features gathered per episode, and the distinct images are decoded
in bounded batches, each encoded once (`fsl.evaluate.evaluate_table`). Memory is about 12 bytes a
row plus one feature per distinct image: a file of 10^5 episodes of 80 images is ~100 MB of
arrays, where decoding every episode's images first needed ~170 GB at 84 px.

An episode's classes are numbered in the order its support rows first name them, and episodes in
the order the file first names them, as `read_episode_file` always did: the hallucination noise
(keyed by episode index and class name) and so the numbers do not change.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fsl.errors import DataError

EPISODE_HEADER = ["episode", "role", "label", "path"]


@dataclass
class ShapeGroup:
    """The episodes of one shape, as arrays: index [E] (their order in the file), support and query
    references [E, S] / [E, Q] (into `EpisodeTable.refs`), labels [E, S] / [E, Q] in 0..ways-1,
    classes [E, ways] (into `EpisodeTable.labels`, in episode-label order)."""

    ways: int
    index: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    classes: np.ndarray


@dataclass
class EpisodeTable:
    """An episode file as arrays: `refs` (distinct image references), `labels` (distinct class
    names), `count` episodes in `groups` of one shape each."""

    path: Path
    refs: list[str]
    labels: list[str]
    count: int
    groups: list[ShapeGroup] = field(default_factory=list)
    rows: int = 0


def compile_episode_file(path: Path, progress: Callable[[str], None] | None = None,
                         every: float = 2.0) -> EpisodeTable:
    """Read an episode CSV (`episode,role,label,path`) into an `EpisodeTable`, checking every row;
    `progress` gets a line every `every` seconds while it reads. DataError naming the file and the
    line or episode for a bad row, an episode without queries, or a query of a class its support
    lacks."""
    path = Path(path)
    ref_ids: dict[str, int] = {}
    label_ids: dict[str, int] = {}
    episode_ids: dict[str, int] = {}
    columns: dict[str, list] = {name: [] for name in ("episode", "query", "label", "ref")}
    started = last = time.monotonic()
    if progress:
        progress(f"reading {path.name} ({path.stat().st_size / 2**20:,.1f} MB)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if [h.strip() for h in (header or [])] != EPISODE_HEADER:
                raise DataError(f"{path}: expected the header {','.join(EPISODE_HEADER)}, got {','.join(header or [])}")
            for line, row in enumerate(reader, start=2):
                if not row:  # a blank line (csv.DictReader, which read these files before, skips them)
                    continue
                if len(row) != 4:
                    raise DataError(f"{path}:{line}: expected 4 fields ({','.join(EPISODE_HEADER)})")
                episode, role, label, ref = row
                if role not in ("support", "query"):
                    raise DataError(f"{path}:{line}: role must be support or query, got {role!r}")
                columns["episode"].append(episode_ids.setdefault(episode, len(episode_ids)))
                columns["query"].append(role == "query")
                columns["label"].append(label_ids.setdefault(label, len(label_ids)))
                columns["ref"].append(ref_ids.setdefault(ref, len(ref_ids)))
                if progress and time.monotonic() - last > every:
                    last = time.monotonic()
                    progress(f"reading {path.name}: {len(episode_ids):,} episodes, {line - 1:,} rows "
                             f"({last - started:.0f} s)")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a text CSV file ({exc})") from None
    if not episode_ids:
        raise DataError(f"{path}: has a header but no episodes")
    arrays = {k: np.asarray(v, dtype=np.bool_ if k == "query" else np.int64) for k, v in columns.items()}
    del columns
    table = EpisodeTable(path, list(ref_ids), list(label_ids), len(episode_ids), rows=len(arrays["ref"]))
    table.groups = _group(table, arrays, list(episode_ids))
    return table


def _group(table: EpisodeTable, arrays: dict[str, np.ndarray], names: list[str]) -> list[ShapeGroup]:
    """The episodes by shape (ways, support rows, query rows), each episode's rows in file order."""
    order = np.argsort(arrays["episode"], kind="stable")
    bounds = np.searchsorted(arrays["episode"][order], np.arange(table.count + 1))
    pending: dict[tuple[int, int, int], list[tuple]] = {}
    for e in range(table.count):
        rows = order[bounds[e]:bounds[e + 1]]
        is_query = arrays["query"][rows]
        support, query = rows[~is_query], rows[is_query]
        support_labels, query_labels = arrays["label"][support], arrays["label"][query]
        if not len(support):
            raise DataError(f"{table.path}: episode {names[e]}: has no support rows")
        first = np.unique(support_labels, return_index=True)[1]
        classes = support_labels[np.sort(first)]  # first-appearance order of the support
        by_id = np.argsort(classes)
        local_support = by_id[np.searchsorted(classes[by_id], support_labels)]
        position = np.searchsorted(classes[by_id], query_labels).clip(0, len(classes) - 1)
        known = classes[by_id][position] == query_labels
        if not len(query) or not known.all():
            unknown = sorted({table.labels[c] for c in query_labels[~known].tolist()})
            raise DataError(f"{table.path}: episode {names[e]}: " + (
                f"queries use classes missing from its support: {unknown}" if unknown else "has no query rows"))
        pending.setdefault((len(classes), len(support), len(query)), []).append(
            (e, arrays["ref"][support], local_support, arrays["ref"][query], by_id[position], classes))
    return [ShapeGroup(ways, *(np.stack([item[i] for item in items]) for i in range(6)))
            for (ways, _, _), items in pending.items()]


class TableImages:
    """The images of a table's references, decoded in batches: uint8 [B, C, S, S] for reference
    ids [B]. A `<split>:<row>` reference is a row of `dataset`; any other is an image file
    (relative to the episode file's folder, or absolute) decoded at `image_size` and `channels`
    exactly as data sets are. Every reference is checked when this is made (a row out of range, a
    missing file), before any image is decoded."""

    def __init__(self, table: EpisodeTable, dataset=None, image_size: int | None = None,
                 channels: int | None = None) -> None:
        self.table, self.image_size, self.channels = table, image_size, channels
        self.files: dict[int, str] = {}
        self.rows: dict[int, tuple[str, int]] = {}
        for i, ref in enumerate(table.refs):
            if is_row_reference(ref):
                name, _, number = ref.partition(":")
                self.rows[i] = (name, int(number))
            else:
                file = Path(ref) if Path(ref).is_absolute() else table.path.parent / ref
                self.files[i] = str(file)
        if self.rows:
            if dataset is None:
                raise DataError(f"{table.path}: its rows name rows of a data set (<split>:<row>); pass --data")
            self.dataset = dataset() if callable(dataset) else dataset
            for i, (split_name, row) in self.rows.items():
                size = len(self.dataset.split(split_name).images)
                if not 0 <= row < size:
                    raise DataError(f"{table.path}: {table.refs[i]!r}: the {split_name} split has rows 0 to "
                                    f"{size - 1}")
        if self.files:
            missing = next((table.refs[i] for i, f in self.files.items() if not Path(f).is_file()), None)
            if missing is not None:
                raise DataError(f"{table.path}: row names a missing file {missing!r}")
        self.size_and_channels = (image_size, channels) if image_size and channels else None
        if self.files and self.size_and_channels is None:
            raise ValueError("TableImages: rows naming image files need image_size and channels")

    def __call__(self, ids) -> torch.Tensor:
        from fsl.data.images import decode_all

        ids = [int(i) for i in ids]
        files = [i for i in ids if i in self.files]
        decoded: dict[int, torch.Tensor] = {}
        if files and self.size_and_channels:
            pixels = decode_all([self.files[i] for i in files], *self.size_and_channels)
            decoded = dict(zip(files, torch.from_numpy(pixels)))
        return torch.stack([decoded[i] if i in decoded else self.dataset.split(self.rows[i][0]).images[self.rows[i][1]]
                            for i in ids])

    def outside(self, root: Path) -> list[str]:
        """The image files of the table that are not under `root` (a data set's folder)."""
        root = Path(root).resolve()
        return [self.table.refs[i] for i, f in self.files.items() if not Path(f).resolve().is_relative_to(root)]


def is_row_reference(ref: str) -> bool:
    """`test:12` (and `test:-1`, which is then reported out of range, not as a missing file)."""
    split, sep, index = ref.partition(":")
    return bool(sep) and index.lstrip("-").isdigit() and split in ("train", "val", "test")
