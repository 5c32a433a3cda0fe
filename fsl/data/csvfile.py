"""CSV files that people write by hand or in a spreadsheet: a fixed header, checked rows."""

from __future__ import annotations

import csv
from pathlib import Path

from fsl.errors import DataError


def read_rows(path: Path, header: list[str]) -> list[dict[str, str]]:
    """The rows of a CSV with exactly `header` (a UTF-8 byte-order mark, as Excel writes, is fine)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if [h.strip() for h in (reader.fieldnames or [])] != header:
                raise DataError(f"{path}: expected the header {','.join(header)}, "
                                f"got {','.join(reader.fieldnames or [])}")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a text CSV file ({exc})") from None
    for line, row in enumerate(rows, start=2):
        if None in row.values() or None in row:
            raise DataError(f"{path}:{line}: expected {len(header)} fields ({','.join(header)})")
    return rows
