"""Progress for long work: a bar on a terminal, plain periodic lines otherwise (logs, CI, MLflow)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

import click


@contextlib.contextmanager
def progress(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`. A click bar on a TTY; else a line at every 10% (and at least every 30 s)."""
    if not enabled or total <= 0:
        yield lambda n: None
        return
    if sys.stdout.isatty():
        with click.progressbar(length=total, label=label, show_eta=True) as bar:
            yield bar.update
        return
    done, next_mark, last = 0, total / 10, time.monotonic()

    def advance(n: int) -> None:
        nonlocal done, next_mark, last
        done += n
        if done >= next_mark or done == total or time.monotonic() - last > 30:
            click.echo(f"{label}: {done}/{total} ({100 * done // total}%)")
            last = time.monotonic()
            while next_mark <= done:
                next_mark += total / 10

    yield advance
