"""Reading a data set from disk: the reader contract, format detection, decode once, the keys.

A reader is one on-disk format (the built-in six are in `fsl.data.formats`). It says whether it
recognises a path (`detects`) and reads it: a `FileReader` lists image files per split and
class, which are then decoded in parallel; an `ArrayReader` returns arrays already decoded
(pickles). A new format is one class plus one registration line:

    READERS.register("my-format", "my_package.module:MyReader")   # or the class itself

(`fsl.components.READERS`; `--format` then lists and accepts it, and detection tries it.) A
reader's own settings are keyword-only parameters of its constructor declared with
`fsl.settings.Setting` and kept under their own names (`--format my-format --format-arg
NAME=VALUE`); they enter its cache key and data fingerprint, and no other format's.

Files are decoded once into uint8 arrays at the target size and cached under `cache_dir()`,
keyed on the source files' names, sizes and mtimes and on the read options the format uses; a
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
from typing import Any, ClassVar

import numpy as np
import torch

from fsl.compat import SPLIT_OPTIONS_OF_V1
from fsl.components import READERS
from fsl.data.images import IMAGE_SUFFIXES, WIDE_GREY_MODES, decode_all, image_mode
from fsl.data.store import DataSet, ImageStore, cached
from fsl.errors import DataError, UsageError
from fsl.files import cache_dir
from fsl.settings import settings_of

READER_VERSION = 1
MINI_IMAGENET = (84, 3)
GREYSCALE_DEFAULT = (28, 1)  # Omniglot as in the paper

# The options that split classes are used by some formats only (`Reader.options`); fsl 0.1
# hashed all of them into every key (`fsl.compat.SPLIT_OPTIONS_OF_V1`).


@dataclass(frozen=True)
class ReadOptions:
    """What, besides the source files, decides the decoded arrays (and so the cache key).

    The split options (`split_ratio`, `split_file`, `val_share`) apply to the formats whose
    reader lists them in `Reader.options`; None means the format's default.
    """

    image_size: int | None = None
    channels: int | None = None
    rotations: bool = False
    split_seed: int = 0
    split_ratio: tuple[float, float, float] | None = None
    split_file: str | None = None
    val_share: float | None = None
    format_args: tuple[tuple[str, Any], ...] = ()  # the reader's own settings (`--format-arg`), as pairs


# A reference to one image: a path on disk, or "archive.zip::member".
Listing = dict[str, list[tuple[str, str]]]  # split -> [(class name, image reference)]


class Reader:
    """One on-disk format. Subclass `FileReader` or `ArrayReader`, not this."""

    # The split options this format reads, with its defaults; any other one given is refused.
    options: ClassVar[dict[str, Any]] = {}
    # Recognised only when no other format is (class-folders: any tree of images).
    catch_all: ClassVar[bool] = False
    # Hash the split options as fsl 0.1 did (the built-in formats: their keys must not move).
    keyed_like_v1: ClassVar[bool] = False

    def detects(self, root: Path) -> bool:
        """Whether `root` (a folder or a file) holds a data set of this format."""
        return False

    def option(self, opts: ReadOptions, name: str) -> Any:
        """The value of split option `name`: as given, else this format's default."""
        value = getattr(opts, name)
        return self.options[name] if value is None else value

    def key_options(self, opts: ReadOptions) -> dict[str, Any]:
        """What the cache key hashes besides the files: the common options, this format's split
        options at their effective values, and its own settings where it declares any (a reader
        without settings keeps the key it had before settings existed)."""
        common = {k: v for k, v in asdict(opts).items() if k not in SPLIT_OPTIONS_OF_V1 and k != "format_args"}
        own = {name: self.option(opts, name) for name in self.options}
        if "split_ratio" in own:
            own["split_ratio"] = tuple(own["split_ratio"])
        settings = settings_of(self)
        return common | (SPLIT_OPTIONS_OF_V1 if self.keyed_like_v1 else {}) | own | (
            {"settings": settings} if settings else {})

    def notes(self, opts: ReadOptions) -> list[str]:
        """Lines for `fsl data inspect` about how this format was read."""
        return []

    def decode(self, root: Path, opts: ReadOptions) -> tuple[dict[str, ImageStore], dict[str, list[str]] | None]:
        """The stores per split, and the image reference of every row (None where there are no files)."""
        raise NotImplementedError


class FileReader(Reader):
    """A format of image files: `list_images` names them, fsl decodes them."""

    def list_images(self, root: Path, opts: ReadOptions) -> Listing:
        """{split: [(class name, image reference)]}: a path, or "archive.zip::member"."""
        raise NotImplementedError

    def decode(self, root: Path, opts: ReadOptions) -> tuple[dict[str, ImageStore], dict[str, list[str]] | None]:
        listing = self.list_images(root, opts)
        refs = [ref for items in listing.values() for _, ref in items]
        if not refs:
            raise DataError(f"--data {root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        size, channels = infer_image_format(refs[0])
        size, channels = opts.image_size or size, opts.channels or channels
        splits, sources = {}, {}
        for split, items in listing.items():
            if items:
                splits[split] = _store(decode_all([ref for _, ref in items], size, channels),
                                       [name for name, _ in items])
                sources[split] = [ref for _, ref in items]
        return splits, sources


class ArrayReader(Reader):
    """A format of images already decoded: `arrays` returns them, fsl resizes them."""

    def arrays(self, root: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
        """{split: (uint8 images [N, H, W, 3], the class name of every image)}."""
        raise NotImplementedError

    def decode(self, root: Path, opts: ReadOptions) -> tuple[dict[str, ImageStore], dict[str, list[str]] | None]:
        size, channels = opts.image_size or MINI_IMAGENET[0], opts.channels or MINI_IMAGENET[1]
        return {s: _store(_resize_array(images, size, channels), names)
                for s, (images, names) in self.arrays(root).items()}, None


def infer_image_format(ref: str) -> tuple[int, int]:
    """Default (size, channels): 28 px greyscale for 1-bit/greyscale images (Omniglot), else 84 RGB."""
    return GREYSCALE_DEFAULT if image_mode(ref) in ("1", "L", "LA", *WIDE_GREY_MODES) else MINI_IMAGENET


def reader(fmt: str, settings: dict[str, Any] | None = None) -> Reader:
    """The registered reader of `fmt` with its settings (checked); UsageError listing the formats."""
    if fmt not in READERS:
        raise UsageError(f"--format must be one of {', '.join(READERS)}, got {fmt!r}")
    return READERS.create(fmt, **(settings or {}))


def detect_format(path: Path) -> str:
    """The format of `path`: the first registered reader that recognises it, else a catch-all one."""
    readers = {name: reader(name) for name in READERS}
    for catch_all in (False, True):
        for name, candidate in readers.items():
            if candidate.catch_all == catch_all and candidate.detects(path):
                return name
    if path.is_file():
        raise DataError(f"--data {path}: a single file that is not a .zip of images")
    raise DataError(f"--data {path}: the folder is empty")


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


def _source_keys(root: Path, fmt: str, fmt_reader: Reader, opts: ReadOptions) -> tuple[str, str, str]:
    """(cache key, source id, validity) from one listing of the source files.

    The cache key (also the data fingerprint) hashes the files' names, sizes and mtimes and the
    options the format uses; the source id (what episode files record) leaves out the image size
    and channels, which decide the pixels but not which image a row is. Both must be the same on
    every machine and extraction, since the champion rule and episode files compare them. The
    validity adds what only this copy has, ctimes and inodes: a file rewritten in place with the
    same size and mtime (`cp -p`, `rsync -a`, `tar x`) changes its ctime, and the cache is then
    decoded again.
    """
    listing, validity = _listing_digest(root)
    options = fmt_reader.key_options(opts)
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
    fmt_reader = reader(fmt, dict(opts.format_args))
    refuse_foreign_options(fmt, fmt_reader, opts)
    try:
        key, source_id, validity = _source_keys(root, fmt, fmt_reader, opts)
        dataset = cached(cache_dir() / "datasets" / f"{fmt}-{key}", lambda: _decode(root, fmt, fmt_reader, opts, key),
                         validity)
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


def refuse_foreign_options(fmt: str, fmt_reader: Reader, opts: ReadOptions) -> None:
    """UsageError for a split option given to a format that does not read it, naming those that do."""
    for option in SPLIT_OPTIONS_OF_V1:
        if getattr(opts, option) is not None and option not in fmt_reader.options:
            users = [name for name in READERS if option in READERS[name].options]
            raise UsageError(f"--{option.replace('_', '-')}: the {fmt} format does not use it (it applies to "
                             f"{' and '.join(users)} data sets)")


def _decode(root: Path, fmt: str, fmt_reader: Reader, opts: ReadOptions, key: str) -> DataSet:
    splits, sources = fmt_reader.decode(root, opts)
    return DataSet(root.name, splits, key, [f"format: {fmt}", *fmt_reader.notes(opts)], sources)
