"""A classification request, checked row by row before any image is decoded.

The serving model (`fsl.tracking.serving`) answers tables of rows `role`, `label`, `image`
(base64 PNG or JPEG). Every way a row can be wrong is an error naming the row index and the
field, and the pixels every image would decode to are read from its header and held to a
budget, so a request of huge images is refused in milliseconds instead of holding a worker.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Any

from fsl.errors import DataError

ROLES = ("support", "query")
COLUMNS = ("role", "label", "image")
MAX_IMAGE_PIXELS = 4096 * 4096          # per image, width x height
MAX_REQUEST_BYTES = 256 * 2**20         # decoded pixel bytes of the whole request
# Bytes per band of a decoded image, by PIL mode (8-bit modes: 1).
BYTES_PER_BAND = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


class RequestError(DataError):
    """A bad request: the message names the row and the field."""


@dataclass
class Request:
    """A checked request: the encoded images and labels of the support rows, and the encoded
    query images, each in request order."""

    support_images: list[bytes]
    support_labels: list[str]
    query_images: list[bytes]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_request(frame, max_image_pixels: int = MAX_IMAGE_PIXELS,
                  max_request_bytes: int = MAX_REQUEST_BYTES) -> Request:
    """A pandas DataFrame of request rows -> Request; raises RequestError naming the row and field.

    `role` is `support` or `query` after stripping and lower-casing; a support row needs a
    non-empty string `label`, a query row has none (empty or missing); `image` is base64 of an
    image whose header PIL reads; every class
    needs a support row (by construction) and the request needs at least one support row and one
    query. Image sizes come from the headers, before any decoding.
    """
    from PIL import Image

    missing = [c for c in ("role", "image") if c not in frame.columns]
    if missing:
        raise RequestError(f"the request has no column {missing[0]!r} (columns: {', '.join(COLUMNS)})")
    unknown = [str(c) for c in frame.columns if c not in COLUMNS]
    if unknown:
        raise RequestError(f"unknown column {unknown[0]!r} (columns: {', '.join(COLUMNS)})")
    request, decoded = Request([], [], []), 0
    labels = frame["label"] if "label" in frame.columns else [None] * len(frame)
    for row, (role, label, text) in enumerate(zip(frame["role"], labels, frame["image"])):
        if _missing(role):
            raise RequestError(f"row {row}, field 'role': missing (expected 'support' or 'query')")
        if not isinstance(role, str) or role.strip().lower() not in ROLES:
            raise RequestError(f"row {row}, field 'role': {role!r} is not 'support' or 'query'")
        role = role.strip().lower()
        if role == "support" and (_missing(label) or not isinstance(label, str) or not label.strip()):
            raise RequestError(f"row {row}, field 'label': a support row needs a non-empty string label, got {label!r}")
        if role == "query" and not _missing(label) and not (isinstance(label, str) and not label.strip()):
            # W5: answered with it ignored, it would read as checked; the answer is the prediction
            raise RequestError(f"row {row}, field 'label': a query row takes no label (the answer is the predicted "
                               f"one; leave it empty), got {label!r}")
        if _missing(text) or not isinstance(text, str) or not text:
            raise RequestError(f"row {row}, field 'image': no image (a base64 PNG or JPEG)")
        try:  # line breaks and spaces (base64.encodebytes wraps lines) are not data
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"row {row}, field 'image': not base64") from None
        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                width, height = img.width, img.height
                pixel_bytes = len(img.getbands()) * BYTES_PER_BAND.get(img.mode, 1)
        except Exception as exc:  # PIL raises many types for bad bytes
            raise RequestError(f"row {row}, field 'image': not a readable image ({type(exc).__name__})") from None
        if width * height > max_image_pixels:
            raise RequestError(f"row {row}, field 'image': {width}x{height} pixels is over the budget of "
                               f"{max_image_pixels:,} pixels per image")
        decoded += width * height * pixel_bytes
        if decoded > max_request_bytes:
            raise RequestError(f"row {row}, field 'image': the request would decode to over "
                               f"{max_request_bytes:,} bytes of pixels")
        if role == "support":
            request.support_images.append(data)
            request.support_labels.append(label.strip())
        else:
            request.query_images.append(data)
    if not request.support_images or not request.query_images:
        raise RequestError("a request needs at least one row with role 'support' (with a label) and one with "
                           "role 'query'")
    return request
