"""The six built-in readers (`--format` names), each one class registered in `fsl.components.READERS`.

- `ravi`: Ravi & Larochelle's split: images/ + train.csv, val.csv, test.csv (filename,label)
- `course`: train.csv + val.csv (id,filename,label) next to image folders; val is the test
  split and validation takes a seeded share of the train classes (`--val-share`)
- `split-folders`: train/<class>/*, val/<class>/*, test/<class>/* (a folder or a .zip of one)
- `class-folders`: any tree whose leaf folders are classes (Omniglot's
  <alphabet>/<character>/*.png), split by class with a seeded ratio (`--split-ratio`) or a list
  file (`--split-file`); recognised when no other format is
- `l2l-pickle`: learn2learn's mini-imagenet-cache-{train,validation,test}.pkl
- `metaoptnet-pickle`: miniImageNet_category_split_{train_phase_train,val,test}.pickle (Python 2)

The contract they implement, and how to add one, is `fsl.data.readers.Reader`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fsl.choices import SPLITS
from fsl.data.csvfile import read_rows
from fsl.data.images import IMAGE_SUFFIXES
from fsl.data.readers import ArrayReader, FileReader, Listing, ReadOptions
from fsl.data.safe_pickle import UnsafePickleError, load_data_pickle
from fsl.errors import DataError, UsageError

DEFAULT_SPLIT_RATIO = (0.64, 0.16, 0.20)  # class-folders: train, val, test shares of the classes
DEFAULT_VAL_SHARE = 0.2                    # course: the share of train classes held out for validation


# ----------------------------------------------------------------------------- image folders
def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _tree_entries(root: Path) -> list[tuple[str, str]]:
    """[(path relative to the tree's top, image reference)] for a folder or a .zip of one."""
    if root.is_file() and root.suffix.lower() == ".zip":
        with zipfile.ZipFile(root) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and _is_image(n)]
        return [(n, f"{root}::{n}") for n in sorted(names)]
    entries = []
    for folder, _, files in os.walk(root):
        for f in files:
            if _is_image(f):
                full = Path(folder) / f
                entries.append((full.relative_to(root).as_posix(), str(full)))
    return sorted(entries)


def _strip_common_top(entries: list[tuple[str, str]], keep: Iterable[str] = ()) -> list[tuple[list[str], str]]:
    """Split relative paths into parts, dropping a top folder every entry shares (zip roots),
    unless it is one of `keep` (a tree holding only `train/` is a train split, not a root)."""
    parts = [(rel.split("/"), ref) for rel, ref in entries]
    while parts and all(len(p) > 2 for p, _ in parts) and len(tops := {p[0] for p, _ in parts}) == 1 \
            and not tops & set(keep):
        parts = [(p[1:], ref) for p, ref in parts]
    return parts


def _is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip"


class SplitFolders(FileReader):
    keyed_like_v1 = True  # fsl 0.1's format: its fingerprints must not move

    def detects(self, root: Path) -> bool:
        if _is_zip(root):
            with zipfile.ZipFile(root) as zf:
                names = zf.namelist()
            tops = {p.split("/")[0] for p in names}
            heads = {"/".join(p.split("/")[:2]) for p in names}
            return bool(tops & set(SPLITS)) or any(h.split("/")[-1] in SPLITS for h in heads)
        return root.is_dir() and any((root / split).is_dir() for split in SPLITS)

    def list_images(self, root: Path, opts: ReadOptions) -> Listing:
        listing: Listing = {s: [] for s in SPLITS}
        for p, ref in _strip_common_top(_tree_entries(root), keep=SPLITS):
            if len(p) >= 3 and p[0] in SPLITS:
                listing[p[0]].append(("/".join(p[1:-1]), ref))
        return listing


class ClassFolders(FileReader):
    options = {"split_ratio": DEFAULT_SPLIT_RATIO, "split_file": None}
    keyed_like_v1 = True
    catch_all = True  # any tree of images whose leaf folders are classes

    def detects(self, root: Path) -> bool:
        return _is_zip(root) or (root.is_dir() and any(root.iterdir()))

    def list_images(self, root: Path, opts: ReadOptions) -> Listing:
        by_class: dict[str, list[str]] = {}
        for p, ref in _strip_common_top(_tree_entries(root)):
            by_class.setdefault("/".join(p[:-1]) or ".", []).append(ref)
        return split_classes(by_class, opts.split_seed, self.option(opts, "split_ratio"),
                             self.option(opts, "split_file"))


def split_classes(by_class: dict[str, list[str]], seed: int, ratio: tuple[float, ...],
                  split_file: str | None = None) -> Listing:
    """Assign whole classes to splits: from a list file (`split,class` lines), or shuffled with
    `seed` and cut in the shares `ratio` (train, val, test)."""
    names = sorted(by_class)
    if split_file:
        assignment = read_split_file(split_file)
        if not assignment:
            raise UsageError(f"--split-file {split_file}: lists no classes (expected 'split,class' lines)")
        missing = sorted(set(assignment) - set(names))
        if missing:
            raise UsageError(f"--split-file {split_file}: {len(missing)} class(es) not in the data, e.g. "
                             f"{', '.join(map(repr, missing[:5]))}")
    else:
        order = np.random.default_rng(seed).permutation(len(names))
        shares = np.asarray(ratio, dtype=float) / sum(ratio)
        bounds = np.round(np.cumsum(shares) * len(names)).astype(int)
        assignment = {}
        for rank, i in enumerate(order):
            assignment[names[i]] = SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
    listing: Listing = {s: [] for s in SPLITS}
    for name in names:
        if name in assignment:
            listing[assignment[name]].extend((name, ref) for ref in by_class[name])
    return listing


def read_split_file(path: str) -> dict[str, str]:
    """A split list (`split,class` lines; `#` comments) -> {class: split}; UsageError naming the
    line for an unknown split or a class listed twice."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--split-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    assignment: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.startswith("#"):
            split, _, name = (part.strip() for part in line.partition(","))
            if split not in SPLITS or not name:
                raise UsageError(f"--split-file {path}, line {number}: expected 'split,class' with split one of "
                                 f"{', '.join(SPLITS)}, got {line.strip()!r}")
            if name in assignment:
                raise UsageError(f"--split-file {path}, line {number}: class {name!r} is listed twice")
            assignment[name] = split
    return assignment


# --------------------------------------------------------------------------------- CSV lists
def _resolve(root: Path, name: str, folders: Iterable[str], csv_path: Path) -> str:
    """The image a CSV row names, inside the data set's folders: absolute paths and `..` are
    refused, so a hostile CSV cannot make fsl read files elsewhere."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise DataError(f"{csv_path}: row names {name!r}, outside the data set's image folders")
    for folder in folders:
        candidate = root / folder / name
        if candidate.is_file():
            return str(candidate)
    raise DataError(f"{csv_path}: row names a missing file {name!r}")


def _has_files(root: Path, *names: str) -> bool:
    """Whether the folder `root` lists all of `names` (as fsl 0.1 detected formats: by name)."""
    return root.is_dir() and set(names) <= set(os.listdir(root))


class Ravi(FileReader):
    keyed_like_v1 = True  # fsl 0.1's format: its fingerprints must not move

    def detects(self, root: Path) -> bool:
        return _has_files(root, "train.csv", "val.csv", "test.csv")

    def list_images(self, root: Path, opts: ReadOptions) -> Listing:
        listing: Listing = {}
        for split in SPLITS:
            rows = read_rows(root / f"{split}.csv", ["filename", "label"])
            listing[split] = [(r["label"], _resolve(root, r["filename"], ["images", ""], root / f"{split}.csv"))
                              for r in rows]
        return listing


class Course(FileReader):
    """train.csv/val.csv (id,filename,label): val becomes test; val takes a share of train classes."""

    options = {"val_share": DEFAULT_VAL_SHARE}
    keyed_like_v1 = True

    def detects(self, root: Path) -> bool:
        return _has_files(root, "train.csv", "val.csv") and not _has_files(root, "test.csv")  # that is ravi

    def list_images(self, root: Path, opts: ReadOptions) -> Listing:
        raw = {}
        for split in ("train", "val"):
            rows = read_rows(root / f"{split}.csv", ["id", "filename", "label"])
            raw[split] = [(r["label"], _resolve(root, r["filename"], ["", split, "images"], root / f"{split}.csv"))
                          for r in rows]
        by_class: dict[str, list[str]] = {}
        for name, ref in raw["train"]:
            by_class.setdefault(name, []).append(ref)
        share = self.option(opts, "val_share")
        held = split_classes(by_class, opts.split_seed, (1 - share, share, 0.0))
        return {"train": held["train"], "val": held["val"], "test": raw["val"]}

    def notes(self, opts: ReadOptions) -> list[str]:
        return ["course format: its val.csv is used as the test split; validation during training uses a "
                f"seeded {self.option(opts, 'val_share'):.0%} of the train classes (split seed {opts.split_seed})"]


# ----------------------------------------------------------------------------------- pickles
def _load_pickle(path: Path, keys: tuple[str, ...]) -> dict:
    try:
        data = load_data_pickle(path)
    except UnsafePickleError:
        raise
    except Exception as exc:  # a broken pickle can raise almost anything
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__})") from None
    if not isinstance(data, dict) or any(k not in data for k in keys):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected the keys {list(keys)}, found {found}")
    return data


def _image_array(path: Path, value) -> np.ndarray:
    """A pickle's images as uint8 [N, H, W, 3], or a DataError that says what was found."""
    images = np.asarray(value)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 images of shape [N, H, W, 3], "
                        f"found {images.dtype} {list(images.shape)}")
    return images


def _pickled_splits(root: Path, file_name: str, stems: tuple[str, str, str],
                    keys: tuple[str, ...]) -> Iterator[tuple[str, Path, dict, np.ndarray]]:
    """(split, path, the pickled dict, its images) for the train, val and test files, named
    `file_name` with each split's stem in it."""
    for split, stem in zip(SPLITS, stems):
        path = root / file_name.format(stem)
        data = _load_pickle(path, keys)
        yield split, path, data, _image_array(path, data[keys[0]])


class Learn2LearnPickle(ArrayReader):
    keyed_like_v1 = True  # fsl 0.1's format: its fingerprints must not move

    def detects(self, root: Path) -> bool:
        return _has_files(root, "mini-imagenet-cache-train.pkl")

    def arrays(self, root: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
        out = {}
        for split, path, data, images in _pickled_splits(root, "mini-imagenet-cache-{}.pkl",
                                                         ("train", "validation", "test"), ("image_data", "class_dict")):
            if not isinstance(data["class_dict"], dict):
                raise DataError(f"{path}: class_dict must map class names to row lists, found "
                                f"{type(data['class_dict']).__name__}")
            out[split] = (images, _row_classes(path, data["class_dict"], len(images)))
        return out


def _row_classes(path: Path, class_dict: dict, rows: int) -> list[str]:
    """learn2learn's {class: [row, ...]} -> the class of every row, checked."""
    names = [""] * rows
    for name, indices in class_dict.items():
        for r in indices:
            if not isinstance(r, (int, np.integer)) or not 0 <= int(r) < rows:
                raise DataError(f"{path}: class {name!r} names row {r!r}, but the rows are 0 to {rows - 1}")
            names[int(r)] = str(name)
    if "" in names:
        raise DataError(f"{path}: image {names.index('')} belongs to no class of class_dict")
    return names


class MetaOptNetPickle(ArrayReader):
    keyed_like_v1 = True  # fsl 0.1's format: its fingerprints must not move

    def detects(self, root: Path) -> bool:
        return _has_files(root, "miniImageNet_category_split_train_phase_train.pickle")

    def arrays(self, root: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
        out = {}
        for split, path, data, images in _pickled_splits(root, "miniImageNet_category_split_{}.pickle",
                                                         ("train_phase_train", "val", "test"), ("data", "labels")):
            labels = list(data["labels"])
            if len(labels) != len(images):
                raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
            out[split] = (images, [str(v) for v in labels])
        return out
