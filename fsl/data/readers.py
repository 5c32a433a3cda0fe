"""Readers: one per on-disk format, each producing the same `DataSet`; detection; decode once.

Formats (`--format` names):
- `ravi`: Ravi & Larochelle's split: images/ + train.csv, val.csv, test.csv (filename,label)
- `l2l-pickle`: learn2learn's mini-imagenet-cache-{train,validation,test}.pkl
- `metaoptnet-pickle`: miniImageNet_category_split_{train_phase_train,val,test}.pickle (Python 2)
- `course`: train.csv + val.csv (id,filename,label) next to image folders; val is the test
  split and validation takes a seeded share of the train classes
- `split-folders`: train/<class>/*, val/<class>/*, test/<class>/* (a folder or a .zip of one)
- `class-folders`: any tree whose leaf folders are classes (Omniglot's
  <alphabet>/<character>/*.png), split by class with a seeded ratio or a list file

File formats are decoded once (in parallel) into uint8 arrays at the target size and cached
under `cache_dir()`, keyed on the source files' names, sizes and mtimes and on the options; a
changed source gets a new key, and a file rewritten in place (same size and mtime, new ctime or
inode) makes the cache be decoded again. Nothing is cached from a failed load.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, cast

import numpy as np
import torch

from fsl.choices import FORMATS, SPLITS
from fsl.data.csvfile import read_rows
from fsl.data.images import IMAGE_SUFFIXES, WIDE_GREY_MODES, decode_all, image_mode
from fsl.data.safe_pickle import UnsafePickleError, load_data_pickle
from fsl.data.store import DataSet, ImageStore, cached
from fsl.errors import DataError, UsageError
from fsl.runtime import cache_dir

READER_VERSION = 1
MINI_IMAGENET = (84, 3)
GREYSCALE_DEFAULT = (28, 1)  # Omniglot as in the paper


DEFAULT_SPLIT_RATIO = (0.64, 0.16, 0.20)  # class-folders: train, val, test shares of the classes
DEFAULT_VAL_SHARE = 0.2                    # course: the share of train classes held out for validation
# Which formats read which split option (the others have their splits on disk).
SPLIT_OPTION_FORMATS = {"split_ratio": ("class-folders",), "split_file": ("class-folders",), "val_share": ("course",)}


@dataclass(frozen=True)
class ReadOptions:
    """What, besides the source files, decides the decoded arrays (and so the cache key).

    None for a split option means the format's default; the cache key, the fingerprint and the
    source id hash the effective values, so a default given explicitly or left out is one key.
    """

    image_size: int | None = None
    channels: int | None = None
    rotations: bool = False
    split_seed: int = 0
    split_ratio: tuple[float, float, float] | None = None
    split_file: str | None = None
    val_share: float | None = None

    def shares(self) -> tuple[float, float, float]:
        """The train, val and test shares of the classes: --split-ratio, or the default."""
        return cast(tuple[float, float, float], tuple(self.split_ratio or DEFAULT_SPLIT_RATIO))

    def effective(self) -> "ReadOptions":
        return replace(self, split_ratio=self.shares(),
                       val_share=DEFAULT_VAL_SHARE if self.val_share is None else self.val_share)


# A reference to one image: a path on disk, or "archive.zip::member".
Listing = dict[str, list[tuple[str, str]]]  # split -> [(class name, image reference)]


def infer_image_format(ref: str) -> tuple[int, int]:
    """Default (size, channels): 28 px greyscale for 1-bit/greyscale images (Omniglot), else 84 RGB."""
    return GREYSCALE_DEFAULT if image_mode(ref) in ("1", "L", "LA", *WIDE_GREY_MODES) else MINI_IMAGENET


# ------------------------------------------------------------------------------ file listings
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


def _list_split_folders(root: Path, opts: ReadOptions) -> Listing:
    parts = _strip_common_top(_tree_entries(root), keep=SPLITS)
    listing: Listing = {s: [] for s in SPLITS}
    for p, ref in parts:
        if len(p) >= 3 and p[0] in SPLITS:
            listing[p[0]].append(("/".join(p[1:-1]), ref))
    return listing


def _list_class_folders(root: Path, opts: ReadOptions) -> Listing:
    parts = _strip_common_top(_tree_entries(root))
    by_class: dict[str, list[str]] = {}
    for p, ref in parts:
        by_class.setdefault("/".join(p[:-1]) or ".", []).append(ref)
    return _split_classes(by_class, opts)


def _split_classes(by_class: dict[str, list[str]], opts: ReadOptions) -> Listing:
    """Assign whole classes to splits: from a list file (`split,class` lines) or a seeded ratio."""
    names = sorted(by_class)
    opts = opts.effective()
    if opts.split_file:
        assignment = read_split_file(opts.split_file)
        missing = sorted(set(assignment) - set(names))
        if missing:
            raise UsageError(f"--split-file {opts.split_file}: {len(missing)} class(es) not in the data, e.g. "
                             f"{', '.join(map(repr, missing[:5]))}")
    else:
        order = np.random.default_rng(opts.split_seed).permutation(len(names))
        ratio = np.asarray(opts.shares(), dtype=float) / sum(opts.shares())
        bounds = np.round(np.cumsum(ratio) * len(names)).astype(int)
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


def _list_ravi(root: Path, opts: ReadOptions) -> Listing:
    listing: Listing = {}
    for split in SPLITS:
        rows = read_rows(root / f"{split}.csv", ["filename", "label"])
        listing[split] = [(r["label"], _resolve(root, r["filename"], ["images", ""], root / f"{split}.csv"))
                          for r in rows]
    return listing


def _list_course(root: Path, opts: ReadOptions) -> Listing:
    """train.csv/val.csv (id,filename,label): val becomes test; val takes a share of train classes."""
    raw = {}
    for split in ("train", "val"):
        rows = read_rows(root / f"{split}.csv", ["id", "filename", "label"])
        raw[split] = [(r["label"], _resolve(root, r["filename"], ["", split, "images"], root / f"{split}.csv"))
                      for r in rows]
    by_class: dict[str, list[str]] = {}
    for name, ref in raw["train"]:
        by_class.setdefault(name, []).append(ref)
    share = DEFAULT_VAL_SHARE if opts.val_share is None else opts.val_share
    held = _split_classes(by_class, ReadOptions(split_seed=opts.split_seed, split_ratio=(1 - share, share, 0.0)))
    return {"train": held["train"], "val": held["val"], "test": raw["val"]}


FILE_FORMATS: dict[str, Callable[[Path, ReadOptions], Listing]] = {
    "ravi": _list_ravi,
    "course": _list_course,
    "split-folders": _list_split_folders,
    "class-folders": _list_class_folders,
}


# ------------------------------------------------------------------------------------ pickles
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


def _arrays_l2l(root: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    out = {}
    for split, stem in (("train", "train"), ("val", "validation"), ("test", "test")):
        path = root / f"mini-imagenet-cache-{stem}.pkl"
        data = _load_pickle(path, ("image_data", "class_dict"))
        images = _image_array(path, data["image_data"])
        names = [""] * len(images)
        if not isinstance(data["class_dict"], dict):
            raise DataError(f"{path}: class_dict must map class names to row lists, found "
                            f"{type(data['class_dict']).__name__}")
        for name, rows in data["class_dict"].items():
            for r in rows:
                if not isinstance(r, (int, np.integer)) or not 0 <= int(r) < len(images):
                    raise DataError(f"{path}: class {name!r} names row {r!r}, but the rows are 0 to {len(images) - 1}")
                names[int(r)] = str(name)
        if "" in names:
            raise DataError(f"{path}: image {names.index('')} belongs to no class of class_dict")
        out[split] = (images, names)
    return out


def _arrays_metaoptnet(root: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    out = {}
    for split, stem in (("train", "train_phase_train"), ("val", "val"), ("test", "test")):
        path = root / f"miniImageNet_category_split_{stem}.pickle"
        data = _load_pickle(path, ("data", "labels"))
        images, labels = _image_array(path, data["data"]), list(data["labels"])
        if len(labels) != len(images):
            raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
        out[split] = (images, [str(v) for v in labels])
    return out


def _image_array(path: Path, value) -> np.ndarray:
    """A pickle's images as uint8 [N, H, W, 3], or a DataError that says what was found."""
    images = np.asarray(value)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 images of shape [N, H, W, 3], "
                        f"found {images.dtype} {list(images.shape)}")
    return images


ARRAY_FORMATS = {"l2l-pickle": _arrays_l2l, "metaoptnet-pickle": _arrays_metaoptnet}


def detect_format(path: Path) -> str:
    """The format of `path`, from the files it holds (see the module docstring)."""
    if path.is_file():
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                tops = {p.split("/")[0] for p in zf.namelist()}
                heads = {"/".join(p.split("/")[:2]) for p in zf.namelist()}
            if tops & set(SPLITS) or any(h.split("/")[-1] in SPLITS for h in heads):
                return "split-folders"
            return "class-folders"
        raise DataError(f"--data {path}: a single file that is not a .zip of images")
    names = set(os.listdir(path))
    if {"mini-imagenet-cache-train.pkl"} <= names:
        return "l2l-pickle"
    if "miniImageNet_category_split_train_phase_train.pickle" in names:
        return "metaoptnet-pickle"
    if {"train.csv", "val.csv", "test.csv"} <= names:
        return "ravi"
    if {"train.csv", "val.csv"} <= names:
        return "course"
    if {"train", "val", "test"} & {n for n in names if (path / n).is_dir()}:
        return "split-folders"
    if not names:
        raise DataError(f"--data {path}: the folder is empty")
    return "class-folders"


# ------------------------------------------------------------------------------------- stores
def _store(images: np.ndarray, names: list[str]) -> ImageStore:
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[n] for n in names], dtype=torch.long)
    return ImageStore(torch.from_numpy(np.ascontiguousarray(images)), labels, classes)


def _resize_array(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> uint8 [N, C, S, S], resized in batches with antialiasing."""
    out = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for start in range(0, len(images), 2048):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + 2048])).permute(0, 3, 1, 2).float()
        if channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out[start:start + 2048] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def _source_keys(root: Path, fmt: str, opts: ReadOptions) -> tuple[str, str, str]:
    """(cache key, source id, validity) from one listing of the source files.

    The cache key (also the data fingerprint) hashes the files' names, sizes and mtimes and every
    option; the source id (what episode files record) leaves out the image size and channels,
    which decide the pixels but not which image a row is. Both must be the same on every machine
    and extraction, since the champion rule and episode files compare them. The validity adds
    what only this copy has, ctimes and inodes: a file rewritten in place with the same size and
    mtime (`cp -p`, `rsync -a`, `tar x`) changes its ctime, and the cache is then decoded again.
    """
    listing, validity = _listing_digest(root)
    options = asdict(opts.effective())
    cache_key = hashlib.sha256(f"fsl-reader-v{READER_VERSION}|{fmt}|{json.dumps(options, sort_keys=True)}|{listing}"
                               .encode()).hexdigest()[:20]
    rows = {k: v for k, v in options.items() if k not in ("image_size", "channels")}
    source_id = hashlib.sha256(f"{fmt}|{json.dumps(rows, sort_keys=True)}|{listing}".encode()).hexdigest()[:20]
    return cache_key, source_id, validity


def _listing_digest(root: Path) -> tuple[str, str]:
    """Hashes of (names, sizes, mtimes) and of (names, sizes, mtimes, ctimes, inodes) of every
    source file, from one walk.

    os.scandir, not Path.rglob: 60,000 files are listed in ~0.2 s instead of ~1 s, which is most
    of a cached load.
    """
    if root.is_file():
        st = root.stat()
        line = f"{root.name}|{st.st_size}|{st.st_mtime_ns}"
        return (hashlib.sha256(line.encode()).hexdigest(),
                hashlib.sha256(f"{line}|{st.st_ctime_ns}|{st.st_ino}".encode()).hexdigest())
    lines, local, folders, prefix = [], [], [str(root)], len(str(root)) + 1
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                else:
                    st = entry.stat()
                    line = f"{entry.path[prefix:]}|{st.st_size}|{st.st_mtime_ns}"
                    lines.append(line)
                    local.append(f"{line}|{st.st_ctime_ns}|{st.st_ino}")
    return (hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest(),
            hashlib.sha256("\n".join(sorted(local)).encode()).hexdigest())


def read(path: str | Path, fmt: str | None = None, opts: ReadOptions = ReadOptions()) -> DataSet:
    """Read a data set from disk through the cache (decode on first use only)."""
    root = Path(path).resolve()
    if not root.exists():
        raise UsageError(f"--data {path}: no such file or folder (use 'synthetic' for the built-in set)")
    try:
        fmt = fmt or detect_format(root)
    except zipfile.BadZipFile:
        raise DataError(f"--data {path}: not a readable .zip file (truncated or not a zip)") from None
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    for option, formats in SPLIT_OPTION_FORMATS.items():
        if getattr(opts, option) is not None and fmt not in formats:
            raise UsageError(f"--{option.replace('_', '-')}: the {fmt} format does not use it (it applies to "
                             f"{' and '.join(formats)} data sets)")
    try:
        key, source_id, validity = _source_keys(root, fmt, opts)
        dataset = cached(cache_dir() / "datasets" / f"{fmt}-{key}", lambda: _decode(root, fmt, opts, key), validity)
    except (OSError, zipfile.BadZipFile) as exc:  # unreadable, dangling or looping files, broken zips
        where = getattr(exc, "filename", None) or root
        raise DataError(f"--data {path}: cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None
    check_leakage(dataset, path)
    dataset = replace(dataset, source_id=source_id)
    return dataset.with_rotations() if opts.rotations else dataset


def check_leakage(dataset: DataSet, path: str | Path) -> None:
    """Raise DataError where the splits share what they must not: a class name in two splits,
    an image file in two splits, one file under two labels, or one file listed twice (an episode
    could use it as support and query; checked on every read, cached or
    not, since a cache made by an older fsl was never checked). No format fsl reads needs any of
    these, so there is no option to allow them."""
    owner: dict[str, str] = {}
    for split, store in dataset.splits.items():
        for name in store.class_names:
            if owner.setdefault(name, split) != split:
                raise DataError(f"--data {path}: class {name!r} is in the {owner[name]} split and in the {split} "
                                f"split: its test accuracy would be measured on training classes")
    seen: dict[str, tuple[str, str]] = {}
    for split, refs in (dataset.sources or {}).items():
        store = dataset.splits[split]
        for ref, label in zip(refs, store.labels.tolist()):
            name = store.class_names[label]
            if ref not in seen:
                seen[ref] = (split, name)
                continue
            first = seen[ref]
            if first[0] != split:
                where = f"in the {first[0]} split (class {first[1]!r}) and in the {split} split (class {name!r})"
            elif first[1] != name:
                where = f"under two labels, {first[1]!r} and {name!r}, in the {split} split"
            else:  # one image as both support and query of an episode
                where = f"listed twice in class {name!r} of the {split} split"
            raise DataError(f"--data {path}: the image {ref} is {where}")


def _decode(root: Path, fmt: str, opts: ReadOptions, key: str) -> DataSet:
    notes = [f"format: {fmt}"]
    if fmt in ARRAY_FORMATS:
        size, channels = opts.image_size or MINI_IMAGENET[0], opts.channels or MINI_IMAGENET[1]
        splits = {s: _store(_resize_array(images, size, channels), names)
                  for s, (images, names) in ARRAY_FORMATS[fmt](root).items()}
        return DataSet(root.name, splits, key, notes)
    listing = FILE_FORMATS[fmt](root, opts)
    refs = [ref for items in listing.values() for _, ref in items]
    if not refs:
        raise DataError(f"--data {root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    size, channels = infer_image_format(refs[0])
    size, channels = opts.image_size or size, opts.channels or channels
    if fmt == "course":
        notes.append("course format: its val.csv is used as the test split; validation during training "
                     f"uses a seeded {opts.effective().val_share:.0%} of the train classes (split seed "
                     f"{opts.split_seed})")
    splits, sources = {}, {}
    for split, items in listing.items():
        if not items:
            continue
        images = decode_all([ref for _, ref in items], size, channels)
        splits[split] = _store(images, [name for name, _ in items])
        sources[split] = [ref for _, ref in items]
    return DataSet(root.name, splits, key, notes, sources)
