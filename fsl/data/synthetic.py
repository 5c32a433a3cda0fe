"""The built-in data set: 100 procedurally drawn visual concepts, made from a seed, no download.

A class is a concept: a random composition of 3-4 coloured primitives (discs, rings, bars,
strokes, boxes), some of them striped, at fixed places relative to each other. An image is an
instance of it: the whole composition rotated, scaled and shifted, each part jittered in place
and colour, a part sometimes missing, on a random background with clutter shapes and pixel
noise. Classes therefore share primitives and colours, so telling them apart from one example
is learnable but not trivial, the regime Mini-ImageNet puts a Conv-4 in.

Splits follow Mini-ImageNet: 64 / 16 / 20 disjoint classes. The images are rendered straight
at the requested size (32x32 by default, 84x84 for Mini-ImageNet's shape), vectorised over
the images of a class, so the set builds in seconds; it is then cached on disk.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import torch

from fsl.data.store import DataSet, ImageStore, cached
from fsl.files import cache_dir

VERSION = 1  # bump when the drawing changes: it is part of the cache key and the fingerprint
DEFAULT_IMAGE_SIZE = 32
N_CLASSES = 100
SPLIT_SIZES = {"train": 64, "val": 16, "test": 20}
IMAGES_PER_CLASS = 60
SEED = 0

_PALETTE = np.array(
    [[0.90, 0.10, 0.10], [0.10, 0.60, 0.20], [0.15, 0.30, 0.90], [0.95, 0.80, 0.10],
     [0.60, 0.15, 0.70], [0.10, 0.75, 0.80], [0.95, 0.50, 0.10], [0.95, 0.95, 0.95],
     [0.15, 0.15, 0.15], [0.55, 0.35, 0.20]]
)
_KINDS = ("disc", "ring", "bar", "stroke", "box")


def _draw_concept(rng: np.random.Generator) -> list[dict]:
    """The parts of one class: kind, centre, size, angle, colour and stripes of each primitive."""
    parts = []
    for _ in range(rng.integers(3, 5)):
        parts.append({
            "kind": _KINDS[rng.integers(len(_KINDS))],
            "centre": rng.uniform(-0.5, 0.5, size=2),
            "size": rng.uniform(0.18, 0.42),
            "aspect": rng.uniform(0.3, 1.0),
            "angle": rng.uniform(0, np.pi),
            "colour": _PALETTE[rng.integers(len(_PALETTE))],
            "stripes": rng.uniform(8, 20) if rng.random() < 0.35 else 0.0,
        })
    return parts


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray, size: float, aspect: float) -> np.ndarray:
    """Soft mask in [0, 1] of one primitive in its own frame; u, v: [n, H, W]."""
    if kind == "disc":
        d = np.sqrt((u / size) ** 2 + (v / (size * aspect)) ** 2) - 1.0
    elif kind == "ring":
        d = np.abs(np.sqrt(u**2 + v**2) / size - 0.8) - 0.22
    elif kind == "bar":
        d = np.maximum(np.abs(u) / size, np.abs(v) / (0.25 * size)) - 1.0
    elif kind == "stroke":  # a bent stroke: a thin band along a parabola
        d = np.abs(v - 0.9 * aspect * u**2 / size) / (0.12 * size)
        d = np.maximum(d, np.abs(u) / size) - 1.0
    else:  # box outline
        inner = np.maximum(np.abs(u), np.abs(v * aspect)) / size
        d = np.abs(inner - 0.85) / 0.15 - 1.0
    return 1.0 / (1.0 + np.exp(np.clip(d * 12.0, -30, 30)))


def _render_class(parts: list[dict], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n instances of one concept: float32 [n, 3, size, size] in [0, 1]."""
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    # One similarity transform per instance: the concept's pose.
    theta = rng.uniform(-0.6, 0.6, size=(n, 1, 1))
    scale = rng.uniform(0.75, 1.25, size=(n, 1, 1))
    shift = rng.uniform(-0.2, 0.2, size=(n, 2, 1, 1))
    xs, ys = x[None] - shift[:, 0], y[None] - shift[:, 1]
    cu = (np.cos(theta) * xs + np.sin(theta) * ys) / scale
    cv = (-np.sin(theta) * xs + np.cos(theta) * ys) / scale

    background = rng.uniform(0.1, 0.9, size=(n, 3, 1, 1))
    gradient = rng.uniform(-0.25, 0.25, size=(n, 3, 1, 1)) * x[None, None]
    img = np.broadcast_to(background + gradient, (n, 3, size, size)).copy()
    img = _add_clutter(img, x, y, rng)

    for part in parts:
        centre = part["centre"][:, None, None, None] + rng.normal(0, 0.05, size=(2, n, 1, 1))
        angle = part["angle"] + rng.normal(0, 0.15, size=(n, 1, 1))
        du, dv = cu - centre[0], cv - centre[1]
        u = np.cos(angle) * du + np.sin(angle) * dv
        v = -np.sin(angle) * du + np.cos(angle) * dv
        mask = _shape_mask(part["kind"], u, v, part["size"] * rng.uniform(0.85, 1.15, (n, 1, 1)), part["aspect"])
        mask *= (rng.random((n, 1, 1)) > 0.15)  # a part is sometimes occluded or missing
        colour = np.clip(part["colour"][None, :] + rng.normal(0, 0.12, size=(n, 3)), 0, 1)[:, :, None, None]
        if part["stripes"]:
            stripe = 0.5 + 0.5 * np.sign(np.sin(part["stripes"] * u))
            colour = colour * (0.45 + 0.55 * stripe[:, None])
        img = img * (1 - mask[:, None]) + colour * mask[:, None]

    contrast = rng.uniform(0.7, 1.2, size=(n, 1, 1, 1))
    img = (img - 0.5) * contrast + 0.5 + rng.normal(0, 0.06, size=img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _add_clutter(img: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two random blobs per image that belong to no class: distractors a model must ignore."""
    n = img.shape[0]
    for _ in range(2):
        cx, cy = rng.uniform(-1, 1, size=(2, n, 1, 1))
        radius = rng.uniform(0.08, 0.25, size=(n, 1, 1))
        mask = 1.0 / (1.0 + np.exp(np.clip((np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / radius - 1) * 10, -30, 30)))
        colour = rng.uniform(0, 1, size=(n, 3, 1, 1))
        img = img * (1 - mask[:, None]) + colour * mask[:, None]
    return img


def generate(image_size: int = DEFAULT_IMAGE_SIZE, images_per_class: int = IMAGES_PER_CLASS,
             seed: int = SEED) -> DataSet:
    """Draw the whole data set from `seed`: 64/16/20 classes, `images_per_class` each."""
    rng = np.random.default_rng(seed)
    concepts = [_draw_concept(rng) for _ in range(N_CLASSES)]
    splits, start = {}, 0
    for split, count in SPLIT_SIZES.items():
        images = np.empty((count * images_per_class, 3, image_size, image_size), dtype=np.uint8)
        for k in range(count):
            # One generator per class: a class looks the same whatever the other classes are.
            class_rng = np.random.default_rng([seed, start + k])
            rendered = _render_class(concepts[start + k], images_per_class, image_size, class_rng)
            images[k * images_per_class:(k + 1) * images_per_class] = np.round(rendered * 255)
        labels = np.repeat(np.arange(count), images_per_class)
        names = [f"concept{start + k:03d}" for k in range(count)]
        splits[split] = ImageStore(torch.from_numpy(images), torch.from_numpy(labels), names)
        start += count
    return DataSet("synthetic", splits, fingerprint(image_size, images_per_class, seed),
                   source_id=source_id(images_per_class, seed))


def source_id(images_per_class: int, seed: int) -> str:
    """What episode files record: the same rows at every image size."""
    return f"synthetic-v{VERSION}-n{images_per_class}-seed{seed}"


def fingerprint(image_size: int, images_per_class: int, seed: int) -> str:
    key = f"synthetic-v{VERSION}-size{image_size}-n{images_per_class}-seed{seed}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def load(image_size: int = DEFAULT_IMAGE_SIZE, images_per_class: int = IMAGES_PER_CLASS,
         seed: int = SEED) -> DataSet:
    """The cached data set, generated and written atomically on first use."""
    folder = cache_dir() / "datasets" / f"synthetic-{fingerprint(image_size, images_per_class, seed)}"
    data = cached(folder, lambda: generate(image_size, images_per_class, seed))
    return replace(data, source_id=source_id(images_per_class, seed))  # caches written before it existed
