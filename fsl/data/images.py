"""The one image decoder: every path into fsl (data sets, episode files, `fsl predict`, the
serving model) turns image files or bytes into uint8 [C, S, S] here, the same way."""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from fsl.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# Open archives, per process: a zip's index is read once, not once per image. Keyed on the pid
# because a forked worker must not share the parent's file position.
_ARCHIVES: dict[tuple[int, str], zipfile.ZipFile] = {}


def open_image(ref: str):
    from PIL import Image

    if "::" in ref:
        archive, member = ref.split("::", 1)
        key = (os.getpid(), archive)
        if key not in _ARCHIVES:
            _ARCHIVES[key] = zipfile.ZipFile(archive)
        return Image.open(io.BytesIO(_ARCHIVES[key].read(member)))
    return Image.open(ref)


def decode_image(ref: str, image_size: int, channels: int) -> np.ndarray:
    """One image file -> uint8 [C, S, S], resized with antialiasing (the same for every path
    into fsl: data sets, episode files, `fsl predict` and the serving model)."""
    with _reading(ref):
        with open_image(ref) as img:
            return _to_array(img, image_size, channels)


def image_mode(ref: str) -> str:
    """The PIL mode of an image file ("1", "L", "RGB", "I;16", ...), read from its header."""
    with _reading(ref):
        with open_image(ref) as img:
            return img.mode


@contextlib.contextmanager
def _reading(ref: str):
    """Any failure to read an image -> one DataError naming it. PIL raises many types: broken
    files, decompression bombs (images over PIL's pixel limit), and zip members that fail."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
            zipfile.BadZipFile, KeyError, EOFError) as exc:
        raise DataError(f"cannot decode image {ref}: {exc}") from None


def decode_bytes(data: bytes, image_size: int, channels: int, name: str = "an image") -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) -> uint8 [C, S, S], exactly as `decode_image`."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return _to_array(img, image_size, channels)
    except UnsupportedPixels as exc:
        raise DataError(f"cannot decode {name}: {exc}") from None
    except Exception as exc:  # PIL raises many types for bad bytes, bombs included
        raise DataError(f"cannot decode {name}: {type(exc).__name__}") from None


def _to_array(img, image_size: int, channels: int) -> np.ndarray:
    from PIL import Image

    img = _eight_bit(img).convert("L" if channels == 1 else "RGB")
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


# Integer greyscale modes: 16-bit PNGs and TIFFs open as one of these. PIL's convert("L") clips
# them at 255 instead of scaling, which turns almost every pixel white.
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class UnsupportedPixels(ValueError):
    """Pixel values fsl cannot map to 0..255 without guessing (the message says which)."""


def _eight_bit(img):
    """A wide greyscale image as 8 bits; other modes unchanged.

    - 16-bit integers: 0..65535 -> 0..255;
    - 32-bit integers (mode I, a container that says nothing of the depth), judged by their values:
      all within 0..255 are read as 8-bit (an int32 TIFF of 0..255 is not near black), else
      within 0..65535 as 16-bit;
    - 32-bit floats (mode F): values in [0, 1] -> 0..255, values in [0, 255] kept;
    - anything else (negative or larger integers, other float ranges, NaN or inf) is refused:
      PIL's convert("L") would saturate or black it out, and a wrong image with exit code 0 is
      worse than an error.
    """
    from PIL import Image

    if img.mode not in WIDE_GREY_MODES and img.mode != "F":
        return img
    wide = np.asarray(img, dtype=np.float64)
    low, high = (float(wide.min()), float(wide.max())) if wide.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UnsupportedPixels(f"{img.mode} image with NaN or infinite values")
    if img.mode == "F":
        if low >= 0 and high <= 1:
            scaled = wide * 255.0
        elif low >= 0 and high <= 255:
            scaled = wide
        else:
            raise UnsupportedPixels(f"float image with values {low:g}..{high:g}: fsl reads float pixels in "
                                    f"[0, 1] or [0, 255]; convert it to 8 or 16 bits")
    elif img.mode == "I" and low >= 0 and high <= 255:
        scaled = wide
    elif low >= 0 and high <= 65535:
        scaled = wide / 257.0
    else:
        raise UnsupportedPixels(f"32-bit integer image with values {low:g}..{high:g}: fsl reads integer pixels "
                                f"in 0..65535; convert it to 8 or 16 bits")
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))  # mode L


def _decode_chunk(args: tuple[list[str], int, int]) -> np.ndarray:
    refs, size, channels = args
    out = np.empty((len(refs), channels, size, size), dtype=np.uint8)
    for i, ref in enumerate(refs):
        out[i] = decode_image(ref, size, channels)
    return out


def decode_all(refs: list[str], size: int, channels: int, workers: int | None = None) -> np.ndarray:
    """Decode many files into one uint8 [N, C, S, S] array, in chunks across processes."""
    if not refs:
        return np.empty((0, channels, size, size), dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    chunk = max(64, len(refs) // (workers * 8) + 1)
    jobs = [(refs[i:i + chunk], size, channels) for i in range(0, len(refs), chunk)]
    if workers == 1 or len(jobs) == 1:
        return np.concatenate([_decode_chunk(job) for job in jobs])
    with ProcessPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(_decode_chunk, jobs)))


